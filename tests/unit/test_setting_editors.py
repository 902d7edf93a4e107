"""The Settings tab's editors: each option of GET /sdapi/v1/options gets the editor its value's type
needs, and the tab's Apply goes through the options' apply path (refusing, never clamping)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.options_table import BY_NAME, OPTIONS, Option, Section, Takes
from modules.ui.setting_editors import (
    EditorKind,
    apply_options,
    changed_values,
    choices_of,
    describe,
    editor_kind,
    from_editor,
)
from modules.ui.settings_tab import matches
from modules.web.credentials import load_auth
from tests.conftest import TinyModels, make_services

# What each editor edits, as a JSON value of GET /options.
EDITS = {
    EditorKind.CHECKBOX: lambda v: isinstance(v, bool),
    EditorKind.INTEGER: lambda v: isinstance(v, int) and not isinstance(v, bool),
    EditorKind.NUMBER: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    EditorKind.DROPDOWN: lambda v: isinstance(v, str),
    EditorKind.MULTISELECT: lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    EditorKind.TEXTBOX: lambda v: isinstance(v, str),
}


@pytest.fixture(scope="module")
def served(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, object]]:
    services = make_services(tmp_path_factory.mktemp("data"), tiny_models.folder)
    services.generation.switch_model("tiny-sd15.safetensors").future.result()
    yield app_module._build_app(parse_flags(["--api"], {}), services, load_auth(None, None, None)), services
    services.close()


def test_every_option_the_api_lists_has_the_editor_its_value_needs(served) -> None:
    app, services = served
    with TestClient(app, base_url="http://127.0.0.1") as client:
        listed = client.get("/sdapi/v1/options").json()
    for option in OPTIONS:
        assert option.name in listed, option.name
        value, kind = listed[option.name], editor_kind(option)
        assert EDITS[kind](value), (option.name, kind, value)
        if kind is EditorKind.DROPDOWN:  # what the server holds is one of the list the tab offers
            assert value in choices_of(option, services), (option.name, value)
        if kind is EditorKind.MULTISELECT:
            assert set(value) <= set(choices_of(option, services)), (option.name, value)
    assert editor_kind(BY_NAME["send_seed"]) is EditorKind.CHECKBOX
    assert editor_kind(BY_NAME["CLIP_stop_at_last_layers"]) is EditorKind.INTEGER
    assert editor_kind(BY_NAME["code_former_weight"]) is EditorKind.NUMBER
    assert editor_kind(BY_NAME["randn_source"]) is EditorKind.DROPDOWN
    assert listed["quicksettings_list"] == ["sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers"]


def test_every_option_says_its_default_range_and_when_it_takes_effect() -> None:
    assert "default: 1" in describe(BY_NAME["CLIP_stop_at_last_layers"])
    assert "allowed: 1 to 12" in describe(BY_NAME["CLIP_stop_at_last_layers"])
    assert "allowed: 0.0 to 1.0" in describe(BY_NAME["code_former_weight"])
    assert "needs a page reload" in describe(BY_NAME["quicksettings_list"])
    assert all(o.section in Section and o.label for o in OPTIONS)
    assert all(o.takes.value in describe(o) for o in OPTIONS if o.takes is not Takes.NEXT_JOB)


def test_a_number_is_neither_rounded_nor_clamped() -> None:
    clip = BY_NAME["CLIP_stop_at_last_layers"]
    assert from_editor(clip, 3.0) == 3 and isinstance(from_editor(clip, 3.0), int)
    assert from_editor(clip, 2.5) == 2.5
    assert from_editor(clip, 50.0) == 50
    current = {"CLIP_stop_at_last_layers": 1, "send_seed": True}
    options = [clip, BY_NAME["send_seed"]]
    assert changed_values(options, [1.0, True], current) == {}
    assert changed_values(options, [2.0, False], current) == {"CLIP_stop_at_last_layers": 2, "send_seed": False}


def test_apply_refuses_an_out_of_range_value_with_its_range_and_saves_nothing(served) -> None:
    _app, services = served
    errors = apply_options(services, {"send_seed": False, "CLIP_stop_at_last_layers": 50})
    assert [e.field for e in errors] == ["CLIP_stop_at_last_layers"]
    assert "1 to" in errors[0].message and "50" in errors[0].message
    assert services.options.get().send_seed is True and services.options.get().clip_skip == 1
    assert not Path(services.paths.config_file).exists()
    assert apply_options(services, {"send_seed": False, "CLIP_stop_at_last_layers": 2}) == []
    assert (services.options.get().send_seed, services.options.get().clip_skip) == (False, 2)
    assert "send_seed: false" in Path(services.paths.config_file).read_text()
    assert apply_options(services, {"send_seed": True, "CLIP_stop_at_last_layers": 1}) == []


def test_the_search_finds_options_by_label_or_name_in_any_case() -> None:
    option = Option("send_seed", "send_seed", None, bool, label="Send seed when sending prompt")
    assert matches(option, "SEND SEED") and matches(option, "send_s") and matches(option, "")
    assert not matches(option, "vae")


def test_the_quicksettings_list_is_kept_in_config_yaml_and_refuses_unknown_names(tmp_path: Path) -> None:
    from modules.config import Settings, load_settings, save_settings, setting_problem

    path = tmp_path / "config.yaml"
    save_settings(path, Settings(quicksettings_list=("sd_vae", "emphasis")))
    assert load_settings(path).quicksettings_list == ("sd_vae", "emphasis")
    assert "unknown: 'no_such_option'" in setting_problem("quicksettings_list", ["sd_vae", "no_such_option"])
    assert setting_problem("quicksettings_list", "sd_vae") is not None
