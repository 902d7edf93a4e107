"""Extensions through the one service path, on a tiny model: hooks, params, order, isolation.

The extensions live where users put theirs (``<data dir>/extensions/``) and are started with the
fixtures of :mod:`modules.devtools.extension_testing`, as an extension author's own tests would.
Throwaway extensions note what their hooks saw in a JSON-lines file, since their module is
imported by Atelier and not reachable from the test.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

# Imported here before pytest loads it from pytest_plugins below: registered first so pytest can
# still rewrite its asserts (and does not warn that it cannot).
pytest.register_assert_rewrite("modules.devtools.extension_testing")

from modules.devtools.extension_testing import TINY_CHECKPOINT, tiny_request, write_extension  # noqa: E402
from modules.errors import ValidationError  # noqa: E402
from modules.extension_api import Hook  # noqa: E402
from modules.infotext import parse_infotext  # noqa: E402
from modules.services.extensions import ExtensionRecord, ExtensionState  # noqa: E402
from modules.services.images import read_infotext  # noqa: E402

# The plugin's fixtures, by name. pytest honours pytest_plugins in a test module (only a non-root
# conftest.py may not declare it); it stays registered for the rest of the session.
pytest_plugins = ["modules.devtools.extension_testing"]

STAMP_PREFIX = Path(__file__).resolve().parents[1] / "fixtures" / "extensions" / "stamp_prefix"
MAGENTA = (255, 0, 255)

# The head of every probe extension: a note() that appends what a hook saw to a JSON-lines file.
_PROBE_HEAD = """
import json
from pathlib import Path

from PIL import Image

from modules.extension_api import Hook, Param, with_prompt

EVENTS = Path({events!r})


def note(**event):
    with EVENTS.open("a", encoding="utf-8") as out:
        out.write(json.dumps(event) + "\\n")
"""


def probe(parent: Path, name: str, body: str, events: Path, **manifest: Any) -> Path:
    """An extension whose ``body`` (with ``note``, ``Hook``, ``Param``, ``with_prompt`` at hand) defines setup(ext)."""
    code = textwrap.dedent(_PROBE_HEAD).format(events=str(events)) + "\n" + textwrap.dedent(body)
    return write_extension(parent, name, code, **manifest)


def seen(events: Path) -> list[dict[str, Any]]:
    if not events.exists():
        return []
    return [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines()]


def record(services: Any, name: str) -> ExtensionRecord:
    found = services.extensions.get(name)
    assert found is not None, [r.name for r in services.extensions.records()]
    return found


def rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def stamped(path: Path) -> bool:
    return bool((rgb(path)[:4, :4] == MAGENTA).all())


def saved_prompt(path: Path) -> str:
    text = read_infotext(path)
    assert text, f"{path} has no parameters text"
    return parse_infotext(text).prompt


# --- the example extension ------------------------------------------------------------------------


def test_prefix_and_stamp_reach_the_saved_png(atelier_with_extension) -> None:
    services = atelier_with_extension(STAMP_PREFIX)
    assert record(services, "stamp_prefix").state is ExtensionState.ENABLED

    result = services.generation.generate(tiny_request(prompt="a red cube"))

    path = result.images[0].path
    assert saved_prompt(path) == "masterpiece, a red cube"  # the param's default
    assert stamped(path)
    assert not (rgb(path)[4:8, 4:8] == MAGENTA).all()  # only the 4x4 corner is stamped
    with Image.open(path) as image:
        assert image.size == (64, 64)


def test_values_by_name_change_the_prefix_and_turn_the_stamp_off(atelier_with_extension) -> None:
    services = atelier_with_extension(STAMP_PREFIX)

    no_stamp = services.generation.generate(tiny_request(extension_params={"stamp_prefix": {"stamp": False}}))
    own_prefix = services.generation.generate(tiny_request(prompt="a cat",
                                                           extension_params={"stamp_prefix": {"prefix": "best quality"}}))

    assert saved_prompt(no_stamp.images[0].path).startswith("masterpiece, ")
    assert not stamped(no_stamp.images[0].path)
    assert saved_prompt(own_prefix.images[0].path) == "best quality, a cat"
    assert stamped(own_prefix.images[0].path)


def test_positional_values_are_taken_in_declared_order(atelier_with_extension) -> None:
    services = atelier_with_extension(STAMP_PREFIX)
    prepared = services.generation.prepare(tiny_request(extension_params={"stamp_prefix": ["hq", "false"]}))
    assert dict(prepared.extension_params["stamp_prefix"]) == {"prefix": "hq", "stamp": False}
    assert prepared.prompt == "hq, a red cube"


# --- failures stay inside the extension that caused them -------------------------------------------


def test_broken_extensions_are_reported_failed_and_generation_works(atelier_with_extension, tmp_path: Path) -> None:
    syntax = write_extension(tmp_path, "syntax_error", "def setup(ext:\n    pass\n")
    future = write_extension(tmp_path, "from_the_future", "def setup(ext):\n    raise AssertionError('never run')\n",
                             api_version=99)
    setup_raises = write_extension(tmp_path, "setup_raises",
                                   "def setup(ext):\n    raise RuntimeError('no GPU found')\n")
    services = atelier_with_extension(STAMP_PREFIX, syntax, future, setup_raises)

    states = {r.name: (r.state, r.error or "") for r in services.extensions.records()}
    assert states["stamp_prefix"] == (ExtensionState.ENABLED, "")
    state, error = states["syntax_error"]
    assert state is ExtensionState.FAILED and "SyntaxError" in error
    state, error = states["from_the_future"]
    assert state is ExtensionState.FAILED
    assert "extension API 99" in error and "API 1" in error  # says which versions disagree
    assert states["setup_raises"] == (ExtensionState.FAILED, "RuntimeError: no GPU found")

    result = services.generation.generate(tiny_request())
    assert saved_prompt(result.images[0].path) == "masterpiece, a red cube" and stamped(result.images[0].path)


def test_hook_that_raises_switches_its_extension_off_and_the_job_succeeds(atelier_with_extension,
                                                                          tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    explodes = probe(tmp_path, "explodes", """
        def setup(ext):
            def before(ctx):
                note(hook="BEFORE_GENERATE")
                raise RuntimeError("boom")
            ext.on(Hook.BEFORE_GENERATE, before, order=-1)
    """, events)
    wrong_type = probe(tmp_path, "wrong_type", """
        def setup(ext):
            ext.on(Hook.BEFORE_GENERATE, lambda ctx: ctx.request.prompt + " (a text, not a request)")
    """, events)
    services = atelier_with_extension(STAMP_PREFIX, explodes, wrong_type)

    result = services.generation.generate(tiny_request())

    assert not result.interrupted and len(result.images) == 1
    assert saved_prompt(result.images[0].path) == "masterpiece, a red cube"  # stamp_prefix still ran
    failed = record(services, "explodes")
    assert failed.state is ExtensionState.FAILED and failed.error == "BEFORE_GENERATE: RuntimeError: boom"
    failed = record(services, "wrong_type")
    assert failed.state is ExtensionState.FAILED and "not a GenerationRequest" in (failed.error or "")
    # Switched off for the rest of the run: its hook is not called again.
    services.generation.generate(tiny_request(seed=2))
    assert seen(events) == [{"hook": "BEFORE_GENERATE"}]


def test_an_entry_module_may_define_dataclasses(atelier_with_extension, tmp_path: Path) -> None:
    folder = write_extension(tmp_path, "with_dataclass", """
        from __future__ import annotations

        from dataclasses import dataclass


        @dataclass(frozen=True)
        class Stamp:
            size: int = 4


        def setup(ext):
            assert Stamp().size == 4
    """)
    services = atelier_with_extension(folder)
    assert record(services, "with_dataclass").error is None


def test_two_extensions_may_have_helper_modules_of_the_same_name(atelier_with_extension, tmp_path: Path) -> None:
    folders = []
    for name, who in (("helper_one", "one"), ("helper_two", "two")):
        folder = write_extension(tmp_path, name, f"""
            import helpers


            def setup(ext):
                assert helpers.WHO == {who!r}, f"got the helpers of {{helpers.WHO}}"
        """)
        (folder / "helpers.py").write_text(f"WHO = {who!r}\n", encoding="utf-8")
        folders.append(folder)
    services = atelier_with_extension(*folders)
    assert [record(services, n).error for n in ("helper_one", "helper_two")] == [None, None]


# --- hook order --------------------------------------------------------------------------------------


def _appender(parent: Path, name: str, letter: str, order: int, events: Path) -> Path:
    return probe(parent, name, f"""
        def setup(ext):
            ext.on(Hook.BEFORE_GENERATE, lambda ctx: with_prompt(ctx.request, ctx.request.prompt + " {letter}"),
                   order={order})
    """, events)


def test_hooks_run_by_order_then_builtins_first_then_by_name(atelier_with_extension, tmp_path: Path) -> None:
    events = tmp_path / "unused.jsonl"
    # The letters spell the expected run order; the folder names are chosen against it.
    user = [_appender(tmp_path / "user", "ext_a", "A", 10, events),  # last: highest order value
            _appender(tmp_path / "user", "ext_b", "B", -10, events),  # first: lowest order value, whatever its name
            _appender(tmp_path / "user", "aa_user", "D", 0, events),  # order 0, after the built-in one
            _appender(tmp_path / "user", "ab_user", "E", 0, events)]  # order 0, user, after aa_user by name
    builtin = [_appender(tmp_path / "builtin", "zz_builtin", "C", 0, events)]
    services = atelier_with_extension(*user, builtin=builtin)
    assert record(services, "zz_builtin").builtin and not record(services, "aa_user").builtin

    result = services.generation.generate(tiny_request(prompt="p"))

    assert saved_prompt(result.images[0].path) == "p B C D E A"
    names = [r.name for r, _h in services.extensions.handlers(Hook.BEFORE_GENERATE)]
    assert names == ["ext_b", "zz_builtin", "aa_user", "ab_user", "ext_a"]


# --- the other hooks ---------------------------------------------------------------------------------


def test_step_end_sees_every_step_and_can_interrupt(atelier_with_extension, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    stopper = probe(tmp_path, "stopper", """
        def setup(ext):
            ext.add_params(Param.int("stop_at", default=2, minimum=1, maximum=1000))

            def step(ctx):
                note(job=ctx.job_id, step=ctx.step, total=ctx.total)
                if ctx.step >= ctx.params["stop_at"]:
                    ctx.request_interrupt()
            ext.on(Hook.STEP_END, step)
    """, events)
    services = atelier_with_extension(stopper)

    stopped = services.generation.generate(tiny_request(steps=6))

    assert stopped.interrupted and stopped.images == ()
    assert [(e["step"], e["total"]) for e in seen(events)] == [(1, 6), (2, 6)]  # none after the stop
    assert record(services, "stopper").state is ExtensionState.ENABLED  # asking to stop is no failure

    events.unlink()
    finished = services.generation.generate(tiny_request(steps=6, extension_params={"stopper": {"stop_at": 100}}))
    assert not finished.interrupted and len(finished.images) == 1
    assert [e["step"] for e in seen(events)] == [1, 2, 3, 4, 5, 6]
    assert len({e["job"] for e in seen(events)}) == 1


def test_after_image_replaces_the_image_and_the_next_handler_sees_the_replacement(atelier_with_extension,
                                                                                  tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    recolour = probe(tmp_path, "recolour", """
        def setup(ext):
            def after(ctx):
                note(size=list(ctx.image.size), seed=ctx.seed, index=ctx.index, prompt=ctx.request.prompt)
                return Image.new("RGB", (32, 48), (0, 128, 0))
            ext.on(Hook.AFTER_IMAGE, after, order=-1)  # before stamp_prefix's (order 0)
    """, events)
    services = atelier_with_extension(STAMP_PREFIX, recolour)

    result = services.generation.generate(tiny_request(seed=5, batch_size=2))

    assert seen(events) == [{"size": [64, 64], "seed": 5, "index": 0, "prompt": "masterpiece, a red cube"},
                            {"size": [64, 64], "seed": 6, "index": 1, "prompt": "masterpiece, a red cube"}]
    for image in result.images:
        pixels = rgb(image.path)
        assert pixels.shape == (48, 32, 3)  # the replacement's size, not the request's
        assert stamped(image.path) and (pixels[10:, 10:] == (0, 128, 0)).all()
        assert read_infotext(image.path) == image.infotext  # the parameters text is kept


def test_the_grid_shows_the_images_after_after_image(atelier_with_extension) -> None:
    services = atelier_with_extension(STAMP_PREFIX)
    result = services.generation.generate(tiny_request(batch_size=2))
    assert all(stamped(image.path) for image in result.images)
    assert result.grid is not None
    with Image.open(result.grid.path) as grid:
        cells = np.asarray(grid.convert("RGB"))
    assert (cells[:4, :4] == MAGENTA).all() and (cells[:4, 64:68] == MAGENTA).all()


def test_image_saved_sees_the_written_file_and_model_loaded_the_title(atelier_with_extension,
                                                                      tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    watcher = probe(tmp_path, "watcher", """
        def setup(ext):
            def loaded(ctx):
                note(hook="MODEL_LOADED", title=ctx.title, architecture=ctx.architecture)

            def saved(ctx):
                path = ctx.path
                note(hook="IMAGE_SAVED", path=str(path) if path else None, exists=bool(path and path.exists()),
                     infotext=ctx.infotext, seed=ctx.seed, index=ctx.index)
            ext.on(Hook.MODEL_LOADED, loaded)
            ext.on(Hook.IMAGE_SAVED, saved)
    """, events)
    services = atelier_with_extension(watcher)

    result = services.generation.generate(tiny_request(seed=9))
    unsaved = services.generation.generate(tiny_request(seed=10, save_images=False))

    loaded, first, second = seen(events)
    assert loaded["hook"] == "MODEL_LOADED" and loaded["title"] == result.model_title
    assert loaded["title"].startswith(f"{TINY_CHECKPOINT} [")
    assert loaded["architecture"] == "SD 1.x"
    image = result.images[0]
    assert first == {"hook": "IMAGE_SAVED", "path": str(image.path), "exists": True, "infotext": image.infotext,
                     "seed": 9, "index": 0}
    assert second["path"] is None and unsaved.images[0].path is None  # the job asked not to save


# --- params are checked at the edge ----------------------------------------------------------------


@pytest.mark.parametrize(("values", "field", "message"), [
    ({"not_installed": {"prefix": "x"}}, "alwayson_scripts.not_installed", "is not installed"),
    ({"stamp_prefix": {"colour": "red"}}, "alwayson_scripts.stamp_prefix.colour", "unknown parameter"),
    ({"stamp_prefix": {"stamp": "maybe"}}, "alwayson_scripts.stamp_prefix.stamp", "true or false"),
    ({"stamp_prefix": {"prefix": 5}}, "alwayson_scripts.stamp_prefix.prefix", "must be text"),
    ({"stamp_prefix": ["x", True, "extra"]}, "alwayson_scripts.stamp_prefix", "at most 2 values"),
], ids=["unknown-extension", "unknown-param", "wrong-type-bool", "wrong-type-text", "too-many-positional"])
def test_bad_extension_values_are_refused_naming_the_field(atelier_with_extension, values: dict, field: str,
                                                           message: str) -> None:
    services = atelier_with_extension(STAMP_PREFIX)
    with pytest.raises(ValidationError) as caught:
        services.generation.submit(tiny_request(extension_params=values))
    assert [e.field for e in caught.value.errors] == [field]
    assert message in caught.value.errors[0].message
    assert services.queue.current() is None  # refused before queuing


def test_every_bad_value_is_reported_at_once(atelier_with_extension) -> None:
    services = atelier_with_extension(STAMP_PREFIX)
    with pytest.raises(ValidationError) as caught:
        services.generation.prepare(tiny_request(extension_params={"stamp_prefix": {"prefix": 1, "stamp": 2},
                                                                   "missing": {}}))
    assert sorted(e.field for e in caught.value.errors) == ["alwayson_scripts.missing",
                                                            "alwayson_scripts.stamp_prefix.prefix",
                                                            "alwayson_scripts.stamp_prefix.stamp"]


# --- --disable-all-extensions ---------------------------------------------------------------------


def test_disable_all_extensions_loads_no_code_and_runs_no_hooks(atelier_with_extension, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    everything = probe(tmp_path, "every_hook", """
        note(hook="imported")

        def setup(ext):
            note(hook="setup")
            for hook in (Hook.APP_STARTED, Hook.MODEL_LOADED, Hook.BEFORE_GENERATE, Hook.STEP_END, Hook.AFTER_IMAGE,
                         Hook.IMAGE_SAVED):
                ext.on(hook, lambda ctx, hook=hook: note(hook=hook.name))
    """, events)
    services = atelier_with_extension(STAMP_PREFIX, everything, load_extensions=False)

    states = {r.name: (r.state, r.error) for r in services.extensions.records()}
    assert states["stamp_prefix"] == states["every_hook"] == (ExtensionState.DISABLED, None)
    assert {state for state, _error in states.values()} == {ExtensionState.DISABLED}  # built-ins too
    result = services.generation.generate(tiny_request())
    assert saved_prompt(result.images[0].path) == "a red cube" and not stamped(result.images[0].path)
    assert seen(events) == []  # not even imported
    with pytest.raises(ValidationError, match="is disabled"):
        services.generation.prepare(tiny_request(extension_params={"stamp_prefix": {"prefix": "x"}}))


def test_the_same_probe_runs_every_hook_when_enabled(atelier_with_extension, tmp_path: Path) -> None:
    """The counterpart of the test above: the probe itself works, so silence there means disabled."""
    events = tmp_path / "events.jsonl"
    everything = probe(tmp_path, "every_hook", """
        def setup(ext):
            for hook in (Hook.APP_STARTED, Hook.MODEL_LOADED, Hook.BEFORE_GENERATE, Hook.STEP_END, Hook.AFTER_IMAGE,
                         Hook.IMAGE_SAVED):
                ext.on(hook, lambda ctx, hook=hook: note(hook=hook.name))
    """, events)
    services = atelier_with_extension(everything)
    services.generation.generate(tiny_request(steps=2))
    assert [e["hook"] for e in seen(events)] == ["APP_STARTED", "BEFORE_GENERATE", "MODEL_LOADED", "STEP_END", "STEP_END",
                                                 "AFTER_IMAGE", "IMAGE_SAVED"]


def test_host_generate_from_a_worker_hook_is_refused_not_a_deadlock(atelier_with_extension, tmp_path: Path) -> None:
    folder = write_extension(tmp_path, "recursive", """
        from modules.extension_api import Hook


        def setup(ext):
            state = {}

            def started(ctx):
                state["host"] = ctx.host

            def after(ctx):
                state["host"].generate(ctx.request)  # would wait for the worker it runs on

            ext.on(Hook.APP_STARTED, started)
            ext.on(Hook.AFTER_IMAGE, after)
    """)
    services = atelier_with_extension(folder)
    result = services.generation.generate(tiny_request(), timeout=120)
    assert len(result.images) == 1  # the job finished; the extension is switched off with the reason
    assert "job worker" in record(services, "recursive").error
