"""The JSON reply of every service error: one table of HTTP statuses by error kind, FastAPI's 422
shape for bad fields (named as the body names them), and the extra keys clients read (``limit``,
a missing component's download, a provider's reason)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from modules.api.convert import body_field
from modules.errors import (
    AccountError,
    AccountNotFoundError,
    AtelierError,
    ConfigError,
    DownloadError,
    ForbiddenError,
    JobNotFoundError,
    MissingComponentError,
    ModelLoadError,
    ModelNotFoundError,
    NoModelLoadedError,
    NotEnoughMemoryError,
    ProviderError,
    ProviderFailure,
    QueueFullError,
    RateLimitError,
    StoreError,
    ValidationError,
)
from modules.services.missing_components import missing_component_body

_STATUS: tuple[tuple[type[AtelierError], int], ...] = (
    (ValidationError, 422), (ConfigError, 422), (ModelNotFoundError, 404), (QueueFullError, 503),
    (NoModelLoadedError, 503),
    # 409, not 422: the request is valid; the server lacks a file the checkpoint needs, and the same
    # request succeeds unchanged once the client downloads it (the body says how) or puts it in place.
    (MissingComponentError, 409),
    (ModelLoadError, 500),
    (NotEnoughMemoryError, 507),  # refused before it started: the job does not fit the GPU's memory
    (DownloadError, 502),  # the place a model comes from did not give it (or gave a file with the wrong hash)
    # The studio's: another user's job is "not found" (never revealed); a role or limit refuses (403),
    # a quota says when to come back (429); a job the store could not record was not accepted (503).
    (JobNotFoundError, 404), (AccountNotFoundError, 404), (AccountError, 400), (ForbiddenError, 403),
    (RateLimitError, 429), (StoreError, 503),
    (ProviderError, 502),  # a remote engine's provider failed (see _PROVIDER_STATUS)
)
# A provider's refusal of the prompt is the request's problem; its rate limit is a busy server.
_PROVIDER_STATUS = {ProviderFailure.CONTENT_POLICY: 422, ProviderFailure.RATE_LIMIT: 503, ProviderFailure.TIMEOUT: 504}


def error_response(exc: AtelierError) -> JSONResponse:
    """The JSON reply for a service error: FastAPI's 422 shape for bad fields, ``detail`` otherwise."""
    status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
    if isinstance(exc, ProviderError):
        status = _PROVIDER_STATUS.get(exc.failure, status)
        return JSONResponse({"detail": str(exc), "error": "ProviderError", "provider": exc.provider,
                             "reason": exc.failure.name.lower()}, status_code=status)
    if isinstance(exc, ValidationError):
        # Fields as the body names them ("n_iter", not the request's "batch_count"); a whole-body
        # error is FastAPI's ["body"], not a field called "body".
        detail: Any = [{"loc": ["body", *body_field(e.field).split(".")] if e.field != "body" else ["body"],
                        "msg": e.message, "type": "value_error"} for e in exc.errors]
        errors = "; ".join(f"{body_field(e.field)}: {e.message}" for e in exc.errors)
        return JSONResponse({"detail": detail, "error": "ValidationError", "errors": errors}, status_code=status)
    headers = {"Retry-After": "5"} if isinstance(exc, QueueFullError) else \
        {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimitError) else None
    extra = missing_component_body(exc) if isinstance(exc, MissingComponentError) else \
        {"limit": exc.limit} if isinstance(exc, (ForbiddenError, RateLimitError)) else {}
    return JSONResponse({"detail": str(exc), "error": type(exc).__name__, **extra}, status_code=status,
                        headers=headers)
