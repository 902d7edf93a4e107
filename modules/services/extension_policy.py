"""How a hook handler's result and failure count: a returned value that replaces the previous one
(:class:`Replaceable`), and which failure rule applies (:func:`runs_v1`: API 1's "switched off until
the next start", or API 2's per-job policy for the hooks that run for a job)."""

from __future__ import annotations

from typing import Any

from modules.extension_api import Hook
from modules.services.extension_loading import ExtensionRecord


class Replaceable:
    """A value each handler of a hook may replace by returning another of ``kind`` (None keeps it)."""

    def __init__(self, value: Any, kind: type, accepted: str) -> None:
        self.value, self._kind, self._accepted = value, kind, accepted

    def take(self, returned: Any) -> Exception | None:
        """Keep ``returned`` if it is a replacement; the error to record if it is something else."""
        if returned is None:
            return None
        if not isinstance(returned, self._kind):
            return TypeError(f"returned {type(returned).__name__}, not {self._accepted}")
        self.value = returned
        return None


# Hooks that run for a job: an API 2 handler's failure there is the job's (its on_error). Elsewhere (the
# app starting, a model loading, the UI being built) there is no job to fail: the extension is marked
# failed, as API 1 does everywhere.
JOB_HOOKS = frozenset({Hook.BEFORE_GENERATE, Hook.PLAN_IMAGES, Hook.JOB_START, Hook.MODEL_CALL, Hook.DENOISED,
                       Hook.AFTER_CFG, Hook.STEP_END, Hook.INFOTEXT, Hook.AFTER_IMAGE, Hook.IMAGE_SAVED})


def runs_v1(record: ExtensionRecord, hook: Hook | None = None) -> bool:
    """Whether a failure of the extension at ``hook`` follows API 1's rule (switched off until restart)."""
    return record.setup is None or record.setup.api_version < 2 or (hook is not None and hook not in JOB_HOOKS)
