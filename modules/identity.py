"""Who is asking: a signed-in account's name and role, and the limits an admin set for it.

No torch, no web framework: the request guard, the services and both faces share these. The
guard puts the identity it checked on the request (``scope["state"]`` for API routes, and the
:data:`USER_HEADER`/:data:`ROLE_HEADER` headers, which it strips from what clients send, for
Gradio events); without sign-in there is no identity and the caller has today's full access.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

USER_HEADER = "x-atelier-user"  # set by the request guard only; a client's own copy is dropped
ROLE_HEADER = "x-atelier-role"
LIMIT_NAMES = ("max_batch", "max_size", "max_steps", "jobs_per_hour", "remote_images_per_day", "checkpoints")


class Role(enum.Enum):
    """What an account may do (SECURITY.md has the table)."""

    ADMIN = "admin"  # settings, extensions, models, users, everyone's jobs
    USER = "user"  # generate; their own jobs, outputs and tokens


@dataclass(frozen=True)
class Identity:
    """A signed-in account (or an ``--api-auth`` login, an admin of the API)."""

    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


def is_admin(identity: Identity | None) -> bool:
    """Whether the caller may administer: an admin, or anyone on a server without sign-in (whose
    changes from the network the request guard already refuses)."""
    return identity is None or identity.is_admin


def identity_from(name: object, role: object) -> Identity | None:
    """The identity the guard recorded (None when it recorded none, or a role it does not know)."""
    if not isinstance(name, str) or not name or not isinstance(role, str):
        return None
    try:
        return Identity(name, Role(role))
    except ValueError:
        return None


@dataclass(frozen=True)
class UserLimits:
    """Per-account limits; None (or no globs) is no limit beyond the server's own.

    ``max_batch``: images per job (batch size x batch count); ``max_size``: the larger side in
    pixels, hires fix's target included; ``max_steps``: sampling steps of any pass;
    ``jobs_per_hour``: jobs accepted in the last hour; ``remote_images_per_day``: images asked of
    remote engines in the last 24 hours (the paid ones); ``checkpoints``: globs of the checkpoint
    titles or file names the account may use (``["sd15*", "*.safetensors"]``).
    """

    max_batch: int | None = None
    max_size: int | None = None
    max_steps: int | None = None
    jobs_per_hour: int | None = None
    remote_images_per_day: int | None = None  # images from remote engines (openai/..., google/...) in 24 hours
    checkpoints: tuple[str, ...] = ()

    def allows_checkpoint(self, *names: str) -> bool:
        """Whether any of a checkpoint's names (title, file name, stem) matches an allowed glob."""
        if not self.checkpoints:
            return True
        return any(fnmatch.fnmatchcase(n.lower(), glob.lower()) for n in names if n for glob in self.checkpoints)

    @property
    def any(self) -> bool:
        return any(getattr(self, name) for name in LIMIT_NAMES)

    def as_dict(self) -> dict[str, Any]:
        return {"max_batch": self.max_batch, "max_size": self.max_size, "max_steps": self.max_steps,
                "jobs_per_hour": self.jobs_per_hour, "remote_images_per_day": self.remote_images_per_day,
                "checkpoints": list(self.checkpoints)}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> UserLimits:
        """Limits from JSON (the API, the database); raises ValueError naming the bad key."""
        unknown = sorted(set(data) - set(LIMIT_NAMES))
        if unknown:
            raise ValueError(f"unknown limit {unknown[0]!r}; limits are {', '.join(LIMIT_NAMES)}")
        values: dict[str, Any] = {}
        for name in LIMIT_NAMES[:-1]:
            value = data.get(name)
            if value is None or value == "":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
                raise ValueError(f"{name} must be a whole number from 1 to 1000000, or empty for no limit")
            values[name] = value
        globs = data.get("checkpoints") or ()
        if isinstance(globs, str):
            globs = [g for g in (part.strip() for part in globs.replace("\n", ",").split(",")) if g]
        if not isinstance(globs, (list, tuple)) or not all(isinstance(g, str) and g.strip() for g in globs):
            raise ValueError("checkpoints must be a list of file-name globs (sd15*, *.safetensors)")
        return UserLimits(**values, checkpoints=tuple(g.strip() for g in globs))
