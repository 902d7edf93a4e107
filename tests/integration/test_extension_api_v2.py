"""Extension API 2 on the tiny model: version ranges, the model-call hooks, per-job patches with undo,
the failure policy (a raising hook fails only its job, or is skipped with a warning), the user in
every hook, and API 1 extensions still running unchanged."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

pytest.register_assert_rewrite("modules.devtools.extension_testing")

from modules.devtools.extension_testing import tiny_request, write_extension  # noqa: E402
from modules.errors import ExtensionError, ValidationError  # noqa: E402
from modules.services.extensions import ExtensionState  # noqa: E402

pytest_plugins = ["modules.devtools.extension_testing"]

V1_EXTENSION = Path(__file__).parents[1] / "fixtures" / "extensions" / "stamp_prefix"

MODEL_CALLS = '''
from modules.extension_api import Hook, JobStart, ModelCall, OnError, Param

SEEN = []


def setup(ext):
    ext.add_params(Param.float("mid", 0.0), Param.bool("explode", False), Param.bool("patch", False))
    ext.on(Hook.JOB_START, start)
    ext.on(Hook.MODEL_CALL, call, on_error=OnError.{policy})


def start(ctx: JobStart):
    SEEN.append(("start", ctx.job.user, ctx.model.family))
    if ctx.params["patch"]:
        ctx.patches.replace(ctx.model.unet, "atelier_test_marker", "patched")
        ctx.state["marker"] = ctx.model.unet


def call(ctx: ModelCall):
    if ctx.params["explode"]:
        raise RuntimeError("boom")
    if "marker" in ctx.state:
        assert ctx.state["marker"].atelier_test_marker == "patched"
    SEEN.append(("call", ctx.step, ctx.total, ctx.pass_index, ctx.width, tuple(ctx.cond_rows.tolist())))
    mid = ctx.params["mid"]
    if mid:
        import torch
        down = [torch.zeros(shape, device=ctx.x.device) for shape in skip_shapes(ctx)]
        mid_shape = down[-1].shape
        ctx.changes.add_residuals(down, torch.full(mid_shape, mid, device=ctx.x.device))


def skip_shapes(ctx):
    """The UNet's skip connections' shapes: conv_in's, then each down block's layers and downsampler."""
    config, (rows, _c, h, w) = ctx.unet.config, ctx.x.shape
    channels = config.block_out_channels
    shapes = [(rows, channels[0], h, w)]
    for i, width in enumerate(channels):
        shapes += [(rows, width, h, w)] * config.layers_per_block
        if i < len(channels) - 1:
            h, w = h // 2, w // 2
            shapes.append((rows, width, h, w))
    return shapes
'''


def _pixels(png: bytes) -> bytes:
    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB").tobytes()


def _hooks_extension(tmp_path: Path, policy: str = "FAIL_JOB") -> Path:
    return write_extension(tmp_path, "callhooks", MODEL_CALLS.replace("{policy}", policy), api_version='">=1,<3"')


def _module(services, name: str):
    record = services.extensions.get(name)
    assert record is not None and record.state is ExtensionState.ENABLED, record
    import sys
    return sys.modules[f"atelier_extensions.{name}"]


def test_version_ranges_load_and_say_why_not(atelier_with_extension, tmp_path: Path) -> None:
    ok = write_extension(tmp_path, "ranged", "def setup(ext):\n    pass\n", api_version='">=1,<3"')
    future = write_extension(tmp_path, "future", "def setup(ext):\n    pass\n", api_version='">=3"')
    services = atelier_with_extension(ok, future, V1_EXTENSION)
    assert services.extensions.get("ranged").state is ExtensionState.ENABLED
    assert services.extensions.get("ranged").setup.api_version == 2
    refused = services.extensions.get("future")
    assert refused.state is ExtensionState.FAILED and ">=3" in refused.error and "1, 2" in refused.error
    # API 1 extensions run unchanged
    result = services.generation.generate(tiny_request(prompt="a cat"))
    assert result.images[0].infotext.startswith("masterpiece, a cat")


def test_model_call_residuals_change_pixels_and_zero_changes_nothing(atelier_with_extension, tmp_path: Path) -> None:
    services = atelier_with_extension(_hooks_extension(tmp_path))
    plain = services.generation.generate(tiny_request(), owner="alice").images[0]
    module = _module(services, "callhooks")
    assert module.SEEN[0] == ("start", "alice", "sd15")
    calls = [seen for seen in module.SEEN if seen[0] == "call"]
    assert [c[1] for c in calls] == [0, 1, 2] and {c[2] for c in calls} == {3} and {c[4] for c in calls} == {64}
    assert calls[0][5] == (True, False)  # the prompt's row, then the negative prompt's
    nothing = services.generation.generate(tiny_request(extension_params={"CallHooks": {"mid": 0.0}})).images[0]
    assert _pixels(nothing.png) == _pixels(plain.png)
    pushed = services.generation.generate(tiny_request(extension_params={"callhooks": {"mid": 0.5}})).images[0]
    assert _pixels(pushed.png) != _pixels(plain.png)


def test_hires_fix_counts_its_second_pass(atelier_with_extension, tmp_path: Path) -> None:
    from modules.params import HiresFix

    services = atelier_with_extension(_hooks_extension(tmp_path))
    services.generation.generate(tiny_request(hires=HiresFix(scale=2.0, steps=2, denoising_strength=0.5)))
    calls = [seen for seen in _module(services, "callhooks").SEEN if seen[0] == "call"]
    assert [(c[3], c[4]) for c in calls] == [(0, 64)] * 3 + [(1, 128)] * 2


def test_job_patches_are_undone_after_the_job(atelier_with_extension, tmp_path: Path) -> None:
    services = atelier_with_extension(_hooks_extension(tmp_path))
    services.generation.generate(tiny_request(extension_params={"callhooks": {"patch": True}}))
    unet = services.models.loaded_model().pipeline.unet
    assert not hasattr(unet, "atelier_test_marker")
    with pytest.raises(ExtensionError):  # undone on error too
        services.generation.generate(tiny_request(extension_params={"callhooks": {"patch": True, "explode": True}}))
    assert not hasattr(unet, "atelier_test_marker")


def test_a_raising_hook_fails_only_its_job(atelier_with_extension, tmp_path: Path) -> None:
    services = atelier_with_extension(_hooks_extension(tmp_path))
    with pytest.raises(ExtensionError, match="Extension callhooks failed in MODEL_CALL: RuntimeError: boom"):
        services.generation.generate(tiny_request(extension_params={"callhooks": {"explode": True}}))
    assert services.extensions.get("callhooks").state is ExtensionState.ENABLED
    after = services.generation.generate(tiny_request(extension_params={"callhooks": {"mid": 0.5}}))
    assert len(after.images) == 1 and not after.warnings


def test_a_skipping_hook_leaves_a_warning_naming_it(atelier_with_extension, tmp_path: Path) -> None:
    services = atelier_with_extension(_hooks_extension(tmp_path, "SKIP"))
    plain = services.generation.generate(tiny_request()).images[0]
    result = services.generation.generate(tiny_request(extension_params={"callhooks": {"explode": True}}))
    assert result.warnings == ("Extension callhooks skipped in MODEL_CALL: RuntimeError: boom",)
    assert _pixels(result.images[0].png) == _pixels(plain.png)


def test_a_refusal_from_a_hook_is_the_jobs_answer(atelier_with_extension, tmp_path: Path) -> None:
    code = '''
from modules.extension_api import FieldError, Hook, ValidationError

def setup(ext):
    ext.on(Hook.JOB_START, refuse)

def refuse(ctx):
    raise ValidationError([FieldError("alwayson_scripts.refuser.model", "no such model; available: a, b")])
'''
    services = atelier_with_extension(write_extension(tmp_path, "refuser", code, api_version=2))
    with pytest.raises(ValidationError, match="no such model"):
        services.generation.generate(tiny_request())
    assert services.extensions.get("refuser").state is ExtensionState.ENABLED


def test_hooks_name_the_user_and_get_the_host(atelier_with_extension, tmp_path: Path) -> None:
    code = '''
from modules.extension_api import Hook

SEEN = []

def setup(ext):
    for hook in (Hook.BEFORE_GENERATE, Hook.PLAN_IMAGES, Hook.STEP_END, Hook.AFTER_IMAGE, Hook.IMAGE_SAVED):
        ext.on(hook, lambda ctx, hook=hook: SEEN.append((hook.name, getattr(ctx, "user", None) or ctx.job.user,
                                                         (ctx.host or None) is not None)))
'''
    services = atelier_with_extension(write_extension(tmp_path, "watcher", code, api_version=2))
    services.generation.generate(tiny_request(), owner="bob")
    seen = set(_module(services, "watcher").SEEN)
    assert seen == {(name, "bob", True) for name in ("BEFORE_GENERATE", "PLAN_IMAGES", "STEP_END", "AFTER_IMAGE",
                                                      "IMAGE_SAVED")}


def test_a_raising_app_started_switches_the_extension_off_and_atelier_starts(atelier_with_extension,
                                                                             tmp_path: Path) -> None:
    code = """
from modules.extension_api import Hook

def setup(ext):
    ext.on(Hook.APP_STARTED, lambda ctx: 1 / 0)
"""
    services = atelier_with_extension(write_extension(tmp_path, "badstart", code, api_version=2))
    record = services.extensions.get("badstart")
    assert record.state is ExtensionState.FAILED and "APP_STARTED: ZeroDivisionError" in record.error
    assert len(services.generation.generate(tiny_request()).images) == 1
