"""The remote engines' routes (docs/remote-engines.md): which hosted models are on offer with what
they support and cost (``GET /sdapi/v1/remote-models``), the providers' state
(``GET /sdapi/v1/remote-engines``: configured or not, and where the key comes from, never the key),
and an admin's change of a provider's key or base URL (``POST /sdapi/v1/remote-engines``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from modules.api import schemas
from modules.errors import FieldError, ValidationError
from modules.server_effects import changes_server
from modules.services.container import Services
from modules.services.remote.catalog import Provider, RemoteModel
from modules.services.remote.engines import RemoteEngines

PREFIX = "/sdapi/v1"
MAX_FIELD = 255


def model_item(engines: RemoteEngines, model: RemoteModel) -> schemas.RemoteModelItem:
    prices: dict[str, float | None] = {}
    for width, height in model.sizes:
        for quality in model.qualities or (None,):
            key = f"{width}x{height}" + (f" {quality}" if quality else "")
            prices[key] = engines.price(model, width, height, quality)
    return schemas.RemoteModelItem(
        title=model.title, provider=model.provider.value, model=model.model,
        sizes=[f"{w}x{h}" for w, h in model.sizes], qualities=list(model.qualities), styles=list(model.styles),
        max_images_per_call=model.max_images, negative_prompt=model.negative_prompt, edits=model.edits,
        masked_edits=model.masked_edits, known=model.known, prices=prices)


def engines_state(engines: RemoteEngines) -> dict[str, Any]:
    return {"enabled": engines.enabled,
            "providers": [{"provider": s.provider.value, "configured": s.configured,
                           "key_source": s.key_source.value if s.key_source else None, "base_url": s.base_url}
                          for s in engines.status()]}


def _access_change(data: object) -> tuple[Provider, str | None, str | None, bool]:
    """(provider, key, base URL, clear the key) from a POST body; a ValidationError naming a bad field
    (whose message never quotes the key)."""
    if not isinstance(data, dict):
        raise ValidationError([FieldError("body", 'must be {"provider": "openai", "api_key": ..., "base_url": ...}')])
    unknown = sorted(set(data) - {"provider", "api_key", "base_url", "clear_key"})
    if unknown:
        raise ValidationError([FieldError(unknown[0], "is not a field; send provider, api_key, base_url, clear_key")])
    try:
        provider = Provider(data.get("provider"))
    except ValueError:
        raise ValidationError([FieldError("provider", f"must be one of {', '.join(p.value for p in Provider)}")]) \
            from None
    key, base_url, clear = data.get("api_key"), data.get("base_url"), data.get("clear_key", False)
    if key is not None and (not isinstance(key, str) or not key.strip() or len(key) > MAX_FIELD
                            or not key.isprintable()):
        raise ValidationError([FieldError("api_key", f"must be printable text of 1 to {MAX_FIELD} characters "
                                                     "(the value is not shown)")])
    if base_url is not None and (not isinstance(base_url, str) or len(base_url) > MAX_FIELD
                                 or (base_url and not base_url.startswith(("http://", "https://")))):
        raise ValidationError([FieldError("base_url", "must be an http:// or https:// URL, or empty for the "
                                                      "provider's own")])
    if not isinstance(clear, bool):
        raise ValidationError([FieldError("clear_key", "must be true or false")])
    return provider, key.strip() if isinstance(key, str) else None, base_url, clear


def router(services: Services) -> APIRouter:
    r = APIRouter(prefix=PREFIX)
    engines = services.remote

    @r.get("/remote-models", response_model=list[schemas.RemoteModelItem])
    def remote_models() -> list[schemas.RemoteModelItem]:
        return [model_item(engines, m) for m in engines.models()]

    @r.get("/remote-engines")
    def remote_engines() -> dict[str, Any]:
        return engines_state(engines)

    @r.post("/remote-engines")
    @changes_server  # every user's jobs go to the provider this key pays for
    async def set_remote_engine(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError as exc:
            raise ValidationError([FieldError("body", "is not valid JSON")]) from exc
        provider, key, base_url, clear = _access_change(data)
        engines.saved.save(provider, api_key=key, base_url=base_url, clear_key=clear)
        return engines_state(engines)

    return r
