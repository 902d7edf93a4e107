"""Remote engines: hosted image models (OpenAI's images API and OpenAI-compatible servers, Google's
Imagen) behind Atelier's own queue. A remote model is chosen like a checkpoint (``openai/dall-e-3``);
its jobs are queued, owned, saved and shown like any other, and rendered by a provider's call.
"""
