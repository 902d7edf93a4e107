"""A1111's send_seed and send_size: a result sent from one tab to another carries its seed and its
size only when they are on; both are options GET/POST /options read and write (A1111's own API
test flips send_seed and reads it back)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from modules.config import Settings
from modules.errors import ValidationError
from modules.options_table import BY_NAME
from modules.ui.send_to import SendWiring

VALUES = {"prompt": "a cat", "seed": 42, "width": 96, "height": 64, "steps": 3}


@pytest.mark.parametrize(("send_seed", "send_size", "kept"), [
    (True, True, set(VALUES)),
    (False, True, set(VALUES) - {"seed"}),
    (True, False, set(VALUES) - {"width", "height"}),
    (False, False, {"prompt", "steps"}),
])
def test_sends_between_tabs_keep_what_the_options_say(send_seed: bool, send_size: bool, kept: set[str]) -> None:
    settings = Settings(send_seed=send_seed, send_size=send_size)
    services = SimpleNamespace(options=SimpleNamespace(get=lambda: settings))
    wiring = SendWiring(services, None, None)  # type: ignore[arg-type]
    assert set(wiring._kept_by_settings(dict(VALUES))) == kept


def test_send_seed_and_send_size_are_a1111_options_of_the_server_only() -> None:
    for name in ("send_seed", "send_size"):
        option = BY_NAME[name]
        assert option.setting == name and option.field is None  # not a job's field
        assert option.parse(False) is False
        with pytest.raises(ValueError):
            option.parse("yes please")
    with pytest.raises(ValidationError):
        from modules.api.convert import to_generation_request
        from modules.api.schemas import Txt2ImgBody

        to_generation_request(Txt2ImgBody.model_validate({"prompt": "x", "override_settings": {"send_seed": False}}))
