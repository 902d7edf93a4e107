"""A job's spec as JSON, and back: how the job store keeps requests (never pickle).

:func:`encode_spec` writes a :class:`GenerationRequest` (or an :class:`ExtrasJob`) as a JSON object
tagged with its type; :func:`decode_spec` reads it back into an equal, frozen request, checking
every field's type against the dataclass, so a damaged or hand-edited row is refused with a
ValueError naming the field rather than run.
"""

from __future__ import annotations

from modules.services.job_types import JobSpec


def encode_spec(spec: JobSpec) -> str:
    """``spec`` as compact JSON (bytes fields base64); ValueError for a spec that is not stored."""
    raise NotImplementedError


def decode_spec(text: str) -> JobSpec:
    """The spec :func:`encode_spec` wrote; ValueError naming what is wrong with a bad one."""
    raise NotImplementedError
