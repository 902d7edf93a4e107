"""The one error hierarchy of Atelier.

Faces translate these into what their users see: ``gr.Error`` in the UI, JSON 4xx/5xx in the API.
Everything below the faces raises these (or lets a genuine bug propagate) and never swallows.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


def _rebuild(kind: type[AtelierError], message: str, state: dict[str, object]) -> AtelierError:
    error = kind.__new__(kind)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class AtelierError(Exception):
    """Base class for every error Atelier raises on purpose."""

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled with its message and fields as they are (a remote worker's error reaches the front
        # intact); the default would call ``__init__`` again with the message as its first argument.
        return _rebuild, (type(self), str(self), dict(self.__dict__))


@dataclass(frozen=True)
class FieldError:
    """One invalid field of a request, with the reason in words a user understands."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ValidationError(AtelierError):
    """A request or setting was rejected before any model work started."""

    def __init__(self, errors: list[FieldError] | tuple[FieldError, ...]) -> None:
        self.errors: tuple[FieldError, ...] = tuple(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


class ConfigError(AtelierError):
    """The configuration file or command-line flags are invalid."""


class ModelNotFoundError(AtelierError):
    """A named checkpoint does not exist among the discovered ones."""

    def __init__(self, name: str, available: list[str] | tuple[str, ...] = ()) -> None:
        self.name = name
        hint = f" Available: {', '.join(available)}." if available else " No checkpoints were found."
        super().__init__(f"Checkpoint not found: {name!r}.{hint}")


class NoModelLoadedError(AtelierError):
    """Generation was asked for while no checkpoint is available."""


class ModelLoadError(AtelierError):
    """A checkpoint file exists but cannot be used (corrupt, truncated, foreign, unsafe)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"Cannot load checkpoint {path}: {reason}")


class UnsafeCheckpointError(ModelLoadError):
    """A pickle checkpoint asked to run code or build objects beyond plain tensors."""


class QueueFullError(AtelierError):
    """The job queue is at its limit; try again later."""


class DownloadError(AtelierError):
    """Fetching a model from the hub failed (offline, not found, disk full)."""


class GalleryPathError(AtelierError):
    """A path from a client does not name an image inside the outputs folder."""


class AddonNotFoundError(AtelierError):
    """A named LoRA, embedding or VAE does not exist among the discovered ones."""

    def __init__(self, kind: str, name: str, available: list[str] | tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.name = name
        hint = f" Available: {', '.join(available)}." if available else f" No {kind} files were found."
        super().__init__(f"{kind} not found: {name!r}.{hint}")


class AddonLoadError(AtelierError):
    """A LoRA, embedding or VAE file exists but cannot be used (corrupt, foreign, unsafe, wrong model)."""

    def __init__(self, kind: str, path: str, reason: str) -> None:
        self.kind = kind
        self.path = path
        self.reason = reason
        super().__init__(f"Cannot load {kind} {path}: {reason}")


class ExtensionError(AtelierError):
    """An extension cannot be loaded, installed or run (bad manifest, wrong API version, its code failed)."""


class WorkerLostError(AtelierError):
    """A job's remote worker died or stopped answering too many times; the job was not finished."""


class RemoteJobError(AtelierError):
    """A remote worker failed a job with an unexpected error (a bug there); its traceback is in the log."""


class OutOfMemoryError(AtelierError):
    """The device ran out of memory during a job; memory was released and the next job can run."""


class NotEnoughMemoryError(AtelierError):
    """A job was refused before it started: its predicted peak memory does not fit the device.
    The message says what to change (a smaller size or batch, hires fix off, another memory mode)."""

    def __init__(self, message: str, needed_bytes: int, available_bytes: int,
                 suggestions: tuple[str, ...] = ()) -> None:
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes
        self.suggestions = tuple(suggestions)
        super().__init__(message)


class MissingComponentError(ModelLoadError):
    """A checkpoint loads only with a part it does not bundle (a text encoder, a VAE, a tokenizer):
    names the part, the file to put where, and where it can be downloaded from (None: nowhere known)."""

    def __init__(self, path: str, component: str, file_hint: str, folder: str, url: str | None = None,
                 unusable: tuple[str, ...] = ()) -> None:
        self.component = component
        self.file_hint = file_hint
        self.folder = folder
        self.url = url
        self.unusable = unusable  # files that were there but do not fit (another family's, another size)
        where = f"; it can be downloaded from {url}" if url else ""
        found = (f" ({', '.join(unusable)} {'is' if len(unusable) == 1 else 'are'} there but made for another "
                 "model: the shapes do not fit this one)") if unusable else ""
        super().__init__(path, f"needs the {component} ({file_hint}): put it in {folder}{where}{found}")


class AccountError(AtelierError):
    """A change to the accounts was refused: a bad name or password, a name taken, the last admin."""


class AccountNotFoundError(AccountError):
    """No account (or API token) of that name or id."""


class ForbiddenError(AtelierError):
    """The caller's role or limits do not allow this (HTTP 403); ``limit`` names the limit, if one."""

    def __init__(self, message: str, limit: str | None = None) -> None:
        super().__init__(message)
        self.limit = limit


class RateLimitError(AtelierError):
    """Too many jobs in the caller's window (HTTP 429); ``retry_after`` in seconds."""

    def __init__(self, message: str, limit: str, retry_after: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after = retry_after


class JobNotFoundError(AtelierError):
    """No job of that id that the caller may see (another user's job is not found either)."""


class StoreError(AtelierError):
    """The job store could not record a job, so it was not accepted (HTTP 503)."""


class ProviderFailure(enum.Enum):
    """Why a remote engine's provider did not give images (the message says it in words)."""

    BAD_KEY = "the API key was refused"
    RATE_LIMIT = "rate limited"
    CONTENT_POLICY = "the request was refused by the provider's content policy"
    TIMEOUT = "no answer in time"
    NETWORK = "could not be reached"
    SERVER = "the provider's server failed"
    BAD_REQUEST = "the provider refused the request"


class ProviderError(AtelierError):
    """A remote engine's call failed; the message names the provider and the reason (never the key).

    ``status`` is the HTTP status the provider answered, if it answered."""

    def __init__(self, provider: str, failure: ProviderFailure, detail: str = "", status: int | None = None) -> None:
        answered = f" (HTTP {status})" if status is not None else ""
        said = f": {detail}" if detail else ""
        super().__init__(f"{provider}: {failure.value}{answered}{said}")
        self.provider = provider
        self.failure = failure
        self.status = status
