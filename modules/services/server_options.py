"""The server's options as A1111 names them, read and changed in one place, and the server
defaults a job gets for what it leaves unset.

``GET /sdapi/v1/options`` is :meth:`ServerOptions.snapshot`; ``POST`` (and an API request's
``override_settings`` with ``override_settings_restore_afterwards: false``) is
:meth:`ServerOptions.apply`. :func:`with_server_defaults` is the one merge of server settings into a
job, done by the front when it prepares the job, for every face alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from modules.a1111_extra import extra_value_problem, key_problem
from modules.config import SECRET_SETTINGS, Settings
from modules.errors import FieldError, ValidationError
from modules.options_table import BY_NAME, BY_SETTING, CHECKPOINT_OPTION, OPTIONS
from modules.params import GenerationRequest, PreviewMethod
from modules.sampler_params import NAMES as SAMPLER_PARAM_NAMES
from modules.samplers import RngSource
from modules.services.addon_library import AddonLibrary
from modules.services.models import ModelManager
from modules.services.settings_store import SettingsStore


def with_server_defaults(request: GenerationRequest, settings: Settings) -> GenerationRequest:
    """``request`` with every field it leaves to the server (None) taken from ``settings``. The
    checkpoint stays None here: the worker then runs the server's selected checkpoint."""
    hires = request.hires
    if hires is not None and hires.save_first_pass is None:
        hires = replace(hires, save_first_pass=settings.save_images_before_highres_fix)
    family_bound = frozenset(name for name in ("clip_skip", "vae") if getattr(request, name) is None)
    return replace(
        request,
        server_defaults=request.server_defaults | family_bound,
        clip_skip=settings.clip_skip if request.clip_skip is None else request.clip_skip,
        eta_noise_seed_delta=(settings.eta_noise_seed_delta if request.eta_noise_seed_delta is None
                              else request.eta_noise_seed_delta),
        rng=RngSource(settings.randn_source) if request.rng is None else request.rng,
        vae=settings.sd_vae if request.vae is None else request.vae,
        preview_method=(PreviewMethod(settings.show_progress_type) if request.preview_method is None
                        else request.preview_method),
        preview_every=settings.show_progress_every_n_steps if request.preview_every is None else request.preview_every,
        face_restoration_model=(settings.face_restoration_model if request.face_restoration_model is None
                                else request.face_restoration_model),
        code_former_weight=(float(settings.code_former_weight) if request.code_former_weight is None
                            else request.code_former_weight),
        img2img_upscaler=settings.upscaler_for_img2img if request.img2img_upscaler is None else request.img2img_upscaler,
        emphasis=settings.emphasis if request.emphasis is None else request.emphasis,
        **{name: float(getattr(settings, name)) if getattr(request, name) is None else getattr(request, name)
           for name in SAMPLER_PARAM_NAMES},
        img2img_fix_steps=(settings.img2img_fix_steps if request.img2img_fix_steps is None
                           else request.img2img_fix_steps),
        live_previews=settings.live_previews_enable if request.live_previews is None else request.live_previews,
        hires=hires)


@dataclass(frozen=True)
class ServerOptions:
    """A1111's options over the settings store and the checkpoint selection."""

    store: SettingsStore
    models: ModelManager
    addons: AddonLibrary
    switch_model: Callable[[str], Any]  # queues a checkpoint switch; returns its job
    remote_selected: Callable[[], str | None] = lambda: None  # the selected remote model's title, if one is

    def snapshot(self) -> dict[str, object]:
        """``GET /options``: the selected checkpoint (a remote model's title, when one is selected)
        and every option in the table."""
        current = self.models.current()
        settings = self.store.get()
        values: dict[str, object] = dict(settings.a1111_extra)  # kept A1111 options, no effect
        values.update({CHECKPOINT_OPTION: current.title if current else None,
                       "sd_checkpoint_hash": current.sha256 if current else None})
        remote = self.remote_selected()
        if remote is not None:
            values.update({CHECKPOINT_OPTION: remote, "sd_checkpoint_hash": None})
        values.update({o.name: o.shown(getattr(settings, o.setting)) for o in OPTIONS if o.setting is not None})
        return values

    def apply(self, data: Mapping[str, Any]) -> None:
        """``POST /options``: the whole GET result sent back with one key changed is fine. Every
        option sent is checked (type, range) before anything changes; a bad one is a 422 naming it,
        its allowed range and Atelier's setting; clip skip against the model then loaded."""
        sent = {o.setting: o.stored(data[o.name]) for o in OPTIONS if o.setting is not None and o.name in data}
        wanted = data.get(CHECKPOINT_OPTION)
        try:
            if wanted is not None and not isinstance(wanted, str):
                raise ValidationError([FieldError(CHECKPOINT_OPTION, f"must be a title, got {wanted!r}")])
            kept = self._kept(data)  # unknown A1111 keys, kept with no effect
            if kept is not None:
                sent["a1111_extra"] = kept
            self.store.check(sent)  # 1. every option sent, before the model or a setting changes
            current = self.snapshot()
            if "sd_vae" in sent and sent["sd_vae"] != current["sd_vae"]:  # 2. an unknown VAE, before a switch
                self.addons.check(GenerationRequest(vae=sent["sd_vae"]))
            if wanted and wanted != current[CHECKPOINT_OPTION]:
                self.switch_model(wanted).future.result()
            changes = {s: v for s, v in sent.items()
                       if s in BY_SETTING and v != BY_SETTING[s].stored(current[BY_SETTING[s].name])}
            if kept is not None and kept != self.store.get().a1111_extra:
                changes["a1111_extra"] = kept
            if changes:  # 3. saved all or none; clip skip within the loaded model's text encoder layers
                self.store.update(changes, model=self.models.loaded_model())
        except ValidationError as exc:
            raise _as_options(exc) from exc

    def _kept(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        """The stored no-effect options with the unknown keys of ``data`` merged in (None: none sent);
        a key or value that cannot be kept is a ValidationError naming it."""
        unknown = {k: v for k, v in data.items() if k not in BY_NAME and k not in READ_ONLY}
        if not unknown:
            return None
        secret = sorted(k for k in unknown if k in SECRET_SETTINGS)
        if secret:  # kept, it would be echoed by GET /options; it would configure nothing either
            raise ValidationError([FieldError(k, "a provider's key is set in config.yaml, the environment or by an "
                                                 "admin in Settings > Remote engines, never through options")
                                   for k in secret])
        errors = [FieldError(str(k)[:100], problem) for k, v in unknown.items()
                  if (problem := key_problem(k) or extra_value_problem(v)) is not None]
        if errors:
            raise ValidationError(errors[:20])
        return {**self.store.get().a1111_extra, **unknown}

    def unhonoured_overrides(self, overrides: Mapping[str, Any]) -> list[str]:
        """The ``override_settings`` keys of one job that Atelier neither knows nor keeps as no-effect options."""
        kept = self.store.get().a1111_extra
        return [k for k in overrides if k not in BY_NAME and k not in READ_ONLY and k not in kept]


READ_ONLY = frozenset({"sd_checkpoint_hash"})  # in GET's answer; sent back, it changes nothing


def _as_options(exc: ValidationError) -> ValidationError:
    """Errors named by the A1111 option, then Atelier's setting."""
    return ValidationError([FieldError(BY_SETTING[e.field].name, f"{e.message} (setting {e.field})")
                            if e.field in BY_SETTING and BY_SETTING[e.field].name != e.field else e
                            for e in exc.errors])
