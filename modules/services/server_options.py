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

from modules.config import Settings
from modules.errors import FieldError, ValidationError
from modules.options_table import BY_SETTING, CHECKPOINT_OPTION, OPTIONS
from modules.params import GenerationRequest, PreviewMethod
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
    return replace(
        request,
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
        hires=hires)


@dataclass(frozen=True)
class ServerOptions:
    """A1111's options over the settings store and the checkpoint selection."""

    store: SettingsStore
    models: ModelManager
    addons: AddonLibrary
    switch_model: Callable[[str], Any]  # queues a checkpoint switch; returns its job

    def snapshot(self) -> dict[str, object]:
        """``GET /options``: the selected checkpoint and every option in the table."""
        current = self.models.current()
        settings = self.store.get()
        values: dict[str, object] = {CHECKPOINT_OPTION: current.title if current else None,
                                     "sd_checkpoint_hash": current.sha256 if current else None, "samples_format": "png"}
        values.update({o.name: getattr(settings, o.setting) for o in OPTIONS if o.setting is not None})
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
            self.store.check(sent)  # 1. every option sent, before the model or a setting changes
            current = self.snapshot()
            if "sd_vae" in sent and sent["sd_vae"] != current["sd_vae"]:  # 2. an unknown VAE, before a switch
                self.addons.check(GenerationRequest(vae=sent["sd_vae"]))
            if wanted and wanted != current[CHECKPOINT_OPTION]:
                self.switch_model(wanted).future.result()
            changes = {s: v for s, v in sent.items() if v != current[BY_SETTING[s].name]}
            if changes:  # 3. saved all or none; clip skip within the loaded model's text encoder layers
                self.store.update(changes, model=self.models.loaded_model())
        except ValidationError as exc:
            raise _as_options(exc) from exc


def _as_options(exc: ValidationError) -> ValidationError:
    """Errors named by the A1111 option, then Atelier's setting."""
    return ValidationError([FieldError(BY_SETTING[e.field].name, f"{e.message} (setting {e.field})")
                            if e.field in BY_SETTING and BY_SETTING[e.field].name != e.field else e
                            for e in exc.errors])
