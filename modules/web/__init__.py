"""The HTTP edge: one guard in front of everything the server answers (UI, API, docs, files).

It knows nothing of Gradio or FastAPI: the composition root hands it the few facts about the
faces it needs (which paths are the UI's, which are open before a login, which requests change
the server for everyone). See :mod:`modules.web.guard`.
"""
