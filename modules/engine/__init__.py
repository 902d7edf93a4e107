"""The engine: torch and diffusers only. Never imports gradio, fastapi, yaml, the UI or the API."""
