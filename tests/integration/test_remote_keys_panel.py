"""The Settings tab's "Remote engine keys" panel, its handlers called as Gradio calls them (no browser):
a saved key configures its provider, lands in a 0600 file and never comes back in any reply, message
or log line; removing it works; an empty key is refused; every event is an admin's, and private."""

from __future__ import annotations

import logging
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pytest

from modules.config import Settings
from modules.identity import ROLE_HEADER, USER_HEADER
from modules.server_effects import Effect, effect_of
from modules.services.remote.access_file import FILE_NAME, AccessFile
from modules.services.remote.calls import ProviderAccess
from modules.services.remote.catalog import Provider
from modules.services.remote.engines import KeySource, ProviderStatus, RemoteEngines
from modules.ui import remote_keys_panel
from modules.ui.remote_keys_panel import build_panel, remove_key, save_key, status_texts

KEY = "sk-panel-SECRET-key-9137"
ENV_KEY = "gm-env-SECRET-key-2468"


class _Client:
    """A provider client that only lists models, and records which keys it was made with."""

    def __init__(self, provider: Provider, access: ProviderAccess, made: list[tuple[Provider, str | None]]) -> None:
        self.provider = provider
        made.append((provider, access.api_key))

    def generate(self, call: object) -> object:
        raise AssertionError("the panel never generates")

    def list_models(self) -> list[str]:
        return ["dall-e-3"] if self.provider is Provider.OPENAI else ["imagen-4.0-generate-001"]


@pytest.fixture
def made() -> list[tuple[Provider, str | None]]:
    return []


@pytest.fixture
def engines(tmp_path: Path, made: list[tuple[Provider, str | None]]) -> RemoteEngines:
    settings = Settings(google_base_url="https://imagen.example/v1")
    return RemoteEngines(lambda: settings, AccessFile(tmp_path / FILE_NAME), {"GEMINI_API_KEY": ENV_KEY},
                         make_client=lambda p, access: _Client(p, access, made))


def _handlers(engines: RemoteEngines) -> dict[str, list[Any]]:
    """The panel's event functions by name (each provider's repeat in Provider order), built as the tab builds them."""
    with gr.Blocks() as demo:
        build_panel(SimpleNamespace(remote=engines))  # type: ignore[arg-type]
    found: dict[str, list[Any]] = {}
    for block_fn in demo.fns.values():
        assert block_fn.api_visibility == "private", block_fn.name
        assert effect_of(block_fn.fn) is Effect.SERVER, block_fn.fn.__qualname__
        found.setdefault(block_fn.fn.__name__, [])
        if block_fn.fn not in found[block_fn.fn.__name__]:
            found[block_fn.fn.__name__].append(block_fn.fn)
    return found


def _status(engines: RemoteEngines, provider: Provider) -> Any:
    return next(s for s in engines.status() if s.provider is provider)


def test_saving_a_key_configures_the_provider_and_never_shows_it(engines: RemoteEngines, tmp_path: Path,
                                                                 made: list, caplog: pytest.LogCaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    toasts: list[str] = []
    for name in ("Info", "Warning"):
        monkeypatch.setattr(gr, name, lambda message, *a, **k: toasts.append(str(message)))
    caplog.set_level(logging.DEBUG)
    handlers = _handlers(engines)
    assert set(handlers) == {"on_open", "on_save", "on_remove"} and len(handlers["on_save"]) == len(Provider)
    opened = handlers["on_open"][0](None)
    assert "**OpenAI**: not configured" in opened[1] and "OPENAI_API_KEY" in opened[1]
    assert "**Google**: configured — key from the environment" in opened[2] and "imagen" in opened[2]
    assert ENV_KEY not in str(opened)

    on_save = handlers["on_save"][list(Provider).index(Provider.OPENAI)]
    reply = on_save(f"  {KEY}\n", None)
    status = _status(engines, Provider.OPENAI)
    assert status.configured and status.key_source is KeySource.SAVED
    assert reply[0] == "" and "Saved the OpenAI key" in reply[1]
    assert f"**OpenAI**: configured — key {KeySource.SAVED.value}; base URL OpenAI's own" in reply[3]
    assert (Provider.OPENAI, KEY) in made  # the model lists were asked for again, with the new key
    assert "openai/dall-e-3" in engines.titles()
    saved = tmp_path / FILE_NAME
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600 and KEY in saved.read_text()
    for secret in (KEY, ENV_KEY):
        assert secret not in str(reply) and secret not in caplog.text and secret not in str(toasts)


def test_removing_the_saved_key_and_an_empty_key(engines: RemoteEngines, tmp_path: Path) -> None:
    handlers = _handlers(engines)
    on_save = handlers["on_save"][list(Provider).index(Provider.GOOGLE)]
    on_remove = handlers["on_remove"][list(Provider).index(Provider.GOOGLE)]
    with pytest.raises(gr.Error, match="nothing was saved"):
        on_save("   ", None)
    assert not (tmp_path / FILE_NAME).exists()
    on_save(KEY, None)
    assert _status(engines, Provider.GOOGLE).key_source is KeySource.SAVED
    reply = on_remove(None)
    assert "Removed the saved Google key" in reply[1] and KEY not in str(reply)
    assert _status(engines, Provider.GOOGLE).key_source is KeySource.ENVIRONMENT  # the environment's again
    assert KEY not in (tmp_path / FILE_NAME).read_text()
    assert "nothing removed" in remove_key(engines, Provider.OPENAI)


def test_a_user_is_refused_and_the_switch_is_noted(engines: RemoteEngines, tmp_path: Path) -> None:
    user = SimpleNamespace(headers={USER_HEADER: "bob", ROLE_HEADER: "user"})
    handlers = _handlers(engines)
    for calls in (lambda: handlers["on_save"][0](KEY, user), lambda: handlers["on_remove"][0](user),
                  lambda: handlers["on_open"][0](user)):
        with pytest.raises(gr.Error, match="Only admins"):
            calls()
    assert not (tmp_path / FILE_NAME).exists()
    with pytest.raises(ValueError):
        save_key(engines, Provider.OPENAI, None)
    off = RemoteEngines(lambda: Settings(remote_engines=False), engines.saved, {})
    assert "switched off" in status_texts(off)[0] and status_texts(engines)[0] == ""


def test_a_base_url_is_escaped() -> None:
    line = remote_keys_panel.status_line(ProviderStatus(Provider.OPENAI, KeySource.CONFIG,
                                                        "https://evil.example/[x](y)"))
    assert "[x](y)" not in line and "evil" in line and "key from config.yaml" in line

