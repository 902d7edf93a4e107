"""The job store's request codec: every field of a request comes back as it went in, and a damaged or
hostile stored row is refused with a ValueError naming the field, never run."""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from collections.abc import Mapping
from typing import Any

import pytest

from modules.params import GenerationRequest, HiresFix, ImagePrompt, MaskedContent, ResizeMode
from modules.services.extras_request import ExtrasImage, ExtrasRequest
from modules.services.extras_request import ResizeMode as ExtrasResize
from modules.services.job_types import ExtrasJob, ModelSwitch, ModelUnload
from modules.services.request_codec import decode_spec, encode_spec

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\x00"
EXTENSION_PARAMS = {"controlnet": {"units": [{"image": PNG, "weight": 0.5, "enabled": True}, None],
                                   "nested": [[1, [2, [3, "x"]]]], "b64": {"map": "not a tag"}},
                    "other": {"only": {"b64": "looks like a tag"}}}


def _other_value(hint: Any, default: Any, name: str) -> Any:  # noqa: C901 - one branch per kind of type
    """A value of type ``hint`` that differs from ``default``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _other_value(next(a for a in args if a is not type(None)), default, name)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return next(m for m in hint if m != default)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _every_field_set(hint)
    if hint is bool:
        return not default if isinstance(default, bool) else True
    if hint is int:
        return (default or 0) + 3
    if hint is float:
        return (default or 0.0) + 0.25
    if hint is str:
        return f"{name}-value"
    if hint is bytes:
        return PNG + name.encode()
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return (_other_value(args[0], None, name), _other_value(args[0], None, name + "2"))
        return tuple(_other_value(a, None, f"{name}{i}") for i, a in enumerate(args))
    if origin is frozenset:
        return frozenset({"vae", "clip_skip"})
    if origin is Mapping:
        return EXTENSION_PARAMS
    raise AssertionError(f"no value for {name}: {hint}")


def _every_field_set(cls: type) -> Any:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        values[f.name] = _other_value(hints[f.name], default, f.name)
    return cls(**values)


def test_a_request_with_every_field_set_round_trips_equal() -> None:
    request = _every_field_set(GenerationRequest)
    defaults = GenerationRequest()
    unchanged = [f.name for f in dataclasses.fields(GenerationRequest)
                 if getattr(request, f.name) == getattr(defaults, f.name)]
    assert unchanged == []  # the test covers every field, the compare=False ones included
    back = decode_spec(encode_spec(request))
    assert back == request
    assert (back.owner, back.job_id, back.server_defaults) == (request.owner, request.job_id, request.server_defaults)
    assert isinstance(back.styles, tuple) and isinstance(back.per_image[0], ImagePrompt)
    assert isinstance(back.hires, HiresFix) and back.hires.schedule == request.hires.schedule
    assert back.extension_params["controlnet"]["units"][0]["image"] == PNG


def test_img2img_and_inpaint_images_come_back_byte_for_byte() -> None:
    image, mask = bytes(range(256)) * 4, b"\xff\x00" * 300
    request = GenerationRequest(prompt="a cat", init_image=image, mask=mask, masked_content=MaskedContent.FILL,
                                resize_mode=ResizeMode.RESIZE_AND_FILL, seed=1234, owner="ann", job_id="7-abcdef12")
    text = encode_spec(request)
    assert image not in text.encode()  # stored as base64 text, not raw
    back = decode_spec(text)
    assert back.init_image == image and back.mask == mask and back == request
    assert decode_spec(encode_spec(GenerationRequest())) == GenerationRequest()


def test_extension_params_keep_nesting_bytes_and_tag_like_keys() -> None:
    back = decode_spec(encode_spec(GenerationRequest(extension_params=EXTENSION_PARAMS)))
    assert back.extension_params == EXTENSION_PARAMS
    params = {"x": {"size": (2, 3), "names": ("a", ("b",)), "lists": [1, [2]], "tag": {"tuple": []}}}
    tuples = decode_spec(encode_spec(GenerationRequest(extension_params=params)))
    assert tuples.extension_params == params  # tuples stay tuples, lists lists
    assert isinstance(tuples.extension_params["x"]["names"][1], tuple)
    with pytest.raises(TypeError):
        tuples.extension_params["x"]["size"] = 1  # type: ignore[index]  # read-only, as the front makes it


def test_an_extras_job_round_trips() -> None:
    job = ExtrasJob(ExtrasRequest(images=(ExtrasImage(PNG, "a.png"), ExtrasImage(b"\x00")),
                                  resize_mode=ExtrasResize.SCALE_TO, upscaling_resize=3.0, upscaler_1="R-ESRGAN"))
    assert decode_spec(encode_spec(job)) == job


@pytest.mark.parametrize("spec", [ModelSwitch("x.safetensors"), ModelUnload()])
def test_model_jobs_are_never_stored(spec: object) -> None:
    with pytest.raises(ValueError, match="not stored"):
        encode_spec(spec)  # type: ignore[arg-type]


def test_values_that_are_not_plain_data_are_refused_when_stored() -> None:
    with pytest.raises(ValueError, match="extension_params"):
        encode_spec(GenerationRequest(extension_params={"x": {"obj": object()}}))
    with pytest.raises(ValueError, match="spec.steps"):
        encode_spec(GenerationRequest(steps="20"))  # type: ignore[arg-type]


def _stored(**changes: Any) -> str:
    data = json.loads(encode_spec(GenerationRequest(hires=HiresFix())))
    for key, value in changes.items():
        target = data["spec"]
        *parents, last = key.split("__")
        for parent in parents:
            target = target[parent]
        target[last] = value
    return json.dumps(data)


@pytest.mark.parametrize(("text", "named"), [
    (_stored(steps="20"), "spec.steps"),
    (_stored(steps=True), "spec.steps"),
    (_stored(cfg_scale=None), "spec.cfg_scale"),
    (_stored(prompt=5), "spec.prompt"),
    (_stored(schedule="Sideways"), "spec.schedule"),
    (_stored(schedule=["Karras"]), "spec.schedule"),
    (_stored(styles="abc"), "spec.styles"),
    (_stored(part_of=[1, 2, 3]), "spec.part_of"),
    (_stored(hires__scale="big"), "spec.hires.scale"),
    (_stored(hires__evil=1), "evil"),
    (_stored(evil=1), "unknown field 'evil'"),
    (_stored(init_image={"b64": "!!not base64!!"}), "spec.init_image"),
    (_stored(init_image="AAE="), "spec.init_image"),
    (_stored(server_defaults="vae"), "spec.server_defaults"),
    (_stored(extension_params={"x": 1}), "spec.extension_params"),
    (_stored(extension_params={"x": {"a": {"b64": "%%%"}}}), "spec.extension_params"),
    (_stored(extension_params={"x": {"a": {"map": 3}}}), "spec.extension_params"),
    (_stored(extension_params={"x": {"a": {"tuple": "ab"}}}), "spec.extension_params"),
    ('{"type": "generation", "version": 1, "spec": {"extension_params": {"x": {"a": '
     + "[" * 200 + "]" * 200 + "}}}}", "nested too deeply"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("not json", "not JSON"),
    ("[]", "type, version and spec"),
    ('{"type": "pickle", "version": 1, "spec": {}}', "unknown type"),
    ('{"type": "generation", "version": 99, "spec": {}}', "format version 99"),
    ('{"type": "generation", "version": 1, "spec": []}', "expected an object"),
    ('{"type": "extras", "version": 1, "spec": {"request": {}}}', "spec.request.images"),
])
def test_damaged_or_hostile_rows_are_refused_naming_the_field(text: str, named: str) -> None:
    with pytest.raises(ValueError) as caught:
        decode_spec(text)
    assert named in str(caught.value)


def test_a_row_missing_a_newer_field_takes_its_default() -> None:
    data = json.loads(encode_spec(GenerationRequest(prompt="old row", steps=9)))
    del data["spec"]["shift"], data["spec"]["per_image"]
    assert decode_spec(json.dumps(data)) == GenerationRequest(prompt="old row", steps=9)
