"""Extensions: finding them, loading each in isolation, and running their hooks.

Built-in extensions live in the project's ``extensions/``, users' in ``extensions/`` under the data
dir (the same folder when the data dir is the project). Each is read from its manifest first; only
an enabled one whose ``api_version`` matches is imported. Anything an extension does wrong (an
import error, a wrong version, a hook that raises) marks that extension failed with the reason,
logs the traceback, and leaves everything else running. Enabled/disabled is kept in
``extensions.yaml`` in the data dir and applies at the next start.
"""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import yaml
from PIL import Image

from modules.atomic import write_text_atomic
from modules.errors import ExtensionError, FieldError, ValidationError
from modules.extension_api import (
    API_VERSION,
    AfterImage,
    AppStarted,
    BeforeGenerate,
    ExtensionSetup,
    Handler,
    Hook,
    Host,
    ImageSaved,
    ModelLoaded,
    Script,
    StepEnd,
    frozen_params,
)
from modules.params import GenerationRequest
from modules.services.extension_manifest import MANIFEST, Manifest, read_manifest
from modules.services.extension_params import checked_values
from modules.services.queue_contract import running_on_worker

log = logging.getLogger(__name__)


class UserHost(Host, Protocol):
    """A host that can act for a user: the jobs it submits belong to ``owner``."""

    def for_owner(self, owner: str | None) -> Host: ...


class ExtensionState(enum.Enum):
    ENABLED = "enabled"
    DISABLED = "disabled"  # by the user (applies at the next start)
    FAILED = "failed"  # see ``error``


@dataclass(frozen=True)
class ExtensionRecord:
    """One extension as the Extensions tab and the API list it."""

    name: str
    folder: Path
    manifest: Manifest | None  # None when the manifest itself is unreadable
    state: ExtensionState
    error: str | None = None
    setup: ExtensionSetup | None = None  # what its code registered, when loaded

    @property
    def version(self) -> str:
        return self.manifest.version if self.manifest else ""

    @property
    def builtin(self) -> bool:
        return bool(self.manifest and self.manifest.builtin)


def _forget_helpers(folder: Path, names: set[str]) -> None:
    """Drop an extension's own helper modules from the import cache once it has imported them, so
    that another extension's ``helpers.py`` is not mistaken for this one's (the importing module
    keeps its references; helpers must be imported at the top of the entry file)."""
    root = folder.resolve()
    for name in names:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file and Path(file).resolve().is_relative_to(root):
            del sys.modules[name]


def _folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))),
                  key=lambda p: p.name.lower())


class _Replaceable:
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


class ExtensionManager:
    """The extensions of this run and their hooks, in a stated order."""

    def __init__(self, builtin_dir: Path, user_dir: Path, state_file: Path, enabled: bool = True) -> None:
        self.builtin_dir = builtin_dir
        self.user_dir = user_dir
        self._state_file = state_file
        self._enabled = enabled  # False: --disable-all-extensions
        self._lock = threading.Lock()
        self._records: dict[str, ExtensionRecord] = {}
        self._host_for: Callable[[str], UserHost] | None = None
        self._in_hook = threading.local()
        self._acting = threading.local()  # .owner: the user whose script runs on this thread

    # --- discovery and loading -----------------------------------------------------------------

    def disabled_names(self) -> set[str]:
        try:
            data = yaml.safe_load(self._state_file.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            return set()
        except (OSError, yaml.YAMLError) as exc:
            log.warning("Ignoring unreadable %s (%s)", self._state_file, exc)
            return set()
        names = data.get("disabled", []) if isinstance(data, dict) else []
        return {str(n) for n in names} if isinstance(names, list) else set()

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Persist the choice (written atomically); it applies at the next start."""
        if name not in self._records:
            raise ExtensionError(f"No extension called {name!r}")
        disabled = self.disabled_names()
        (disabled.discard if enabled else disabled.add)(name)
        write_text_atomic(self._state_file, yaml.safe_dump({"disabled": sorted(disabled)}))

    def _discover(self) -> Iterator[tuple[Path, bool]]:
        yield from ((folder, True) for folder in _folders(self.builtin_dir))
        if self.user_dir.resolve() != self.builtin_dir.resolve():
            yield from ((folder, False) for folder in _folders(self.user_dir))

    def load_all(self, host_for: Callable[[str], UserHost]) -> None:
        """Read every manifest and load the enabled extensions; failures are recorded, never raised.
        ``host_for(name)`` is the host facade an extension's hooks receive."""
        self._host_for = host_for
        disabled = self.disabled_names()
        records: dict[str, ExtensionRecord] = {}
        for folder, builtin in self._discover():
            if not (folder / MANIFEST).exists():
                continue
            record = self._load_one(folder, builtin, disabled)
            if record.name in records:
                record = replace(record, state=ExtensionState.FAILED, setup=None,
                                 error=f"another extension is already called {record.name!r} ({records[record.name].folder})")
            records[record.name] = record
        with self._lock:
            self._records = records
        loaded = [r.name for r in records.values() if r.state is ExtensionState.ENABLED]
        failed = [r.name for r in records.values() if r.state is ExtensionState.FAILED]
        log.info("Extensions: %d loaded%s%s", len(loaded), f" ({', '.join(loaded)})" if loaded else "",
                 f"; failed: {', '.join(failed)}" if failed else "")

    def _load_one(self, folder: Path, builtin: bool, disabled: set[str]) -> ExtensionRecord:
        try:
            manifest = read_manifest(folder, builtin)
        except ExtensionError as exc:
            log.error("Extension in %s: %s", folder, exc)
            return ExtensionRecord(folder.name, folder, None, ExtensionState.FAILED, str(exc))
        if not self._enabled or manifest.name in disabled:
            return ExtensionRecord(manifest.name, folder, manifest, ExtensionState.DISABLED)
        if manifest.api_version != API_VERSION:
            reason = (f"written for extension API {manifest.api_version}; this Atelier has API {API_VERSION}. "
                      "Update the extension (or Atelier).")
            log.error("Extension %s not loaded: %s", manifest.name, reason)
            return ExtensionRecord(manifest.name, folder, manifest, ExtensionState.FAILED, reason)
        try:
            setup = self._run_setup(manifest)
        except Exception as exc:  # its code: any error at all only fails this extension
            log.exception("Extension %s failed to load", manifest.name)
            return ExtensionRecord(manifest.name, folder, manifest, ExtensionState.FAILED,
                                   f"{type(exc).__name__}: {exc}")
        return ExtensionRecord(manifest.name, folder, manifest, ExtensionState.ENABLED, setup=setup)

    @staticmethod
    def _run_setup(manifest: Manifest) -> ExtensionSetup:
        module_name = f"atelier_extensions.{manifest.name.replace('-', '_').replace('.', '_')}"
        spec = importlib.util.spec_from_file_location(module_name, manifest.entry_file,
                                                      submodule_search_locations=None)
        if spec is None or spec.loader is None:
            raise ExtensionError(f"cannot import {manifest.entry_file}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
        before = set(sys.modules)
        sys.path.insert(0, str(manifest.folder))  # so the extension can import its own helper modules
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        finally:
            sys.path.remove(str(manifest.folder))
            _forget_helpers(manifest.folder, set(sys.modules) - before)
        setup_function = getattr(module, manifest.entry_function, None)
        if not callable(setup_function):
            raise ExtensionError(f"{manifest.entry_file.name} has no function {manifest.entry_function}(ext)")
        setup = ExtensionSetup(manifest.name)
        setup_function(setup)
        return setup

    def records(self) -> list[ExtensionRecord]:
        with self._lock:
            return list(self._records.values())

    def get(self, name: str) -> ExtensionRecord | None:
        with self._lock:
            return self._records.get(name)

    def fail(self, name: str, where: str, exc: BaseException) -> None:
        """Mark ``name`` failed (switched off until the next start) and log why."""
        log.error("Extension %s failed in %s; it is switched off until the next start", name, where,
                  exc_info=exc)
        with self._lock:
            record = self._records.get(name)
            if record is not None:
                self._records[name] = replace(record, state=ExtensionState.FAILED,
                                              error=f"{where}: {type(exc).__name__}: {exc}")

    # --- hooks -------------------------------------------------------------------------------

    def _active(self) -> list[ExtensionRecord]:
        with self._lock:
            return [r for r in self._records.values() if r.state is ExtensionState.ENABLED and r.setup]

    def handlers(self, hook: Hook) -> list[tuple[ExtensionRecord, Handler]]:
        """Handlers of ``hook`` in run order: their order value, built-ins first, then by name."""
        found = [(record, handler) for record in self._active() for handler in record.setup.handlers  # type: ignore[union-attr]
                 if handler.hook is hook]
        return sorted(found, key=lambda rh: (rh[1].order, not rh[0].builtin, rh[0].name.lower()))

    def has(self, hook: Hook) -> bool:
        return any(h.hook is hook for r in self._active() for h in r.setup.handlers)  # type: ignore[union-attr]

    def dispatch(self, hook: Hook, make_context: Callable[[ExtensionRecord], Any],
                 combine: Callable[[Any], Exception | None] | None = None) -> list[tuple[ExtensionRecord, Any]]:
        """Run every handler of ``hook`` in order, each isolated: one that raises (or whose returned value
        ``combine`` rejects, with the error to record) marks its extension failed, and the rest run on.
        ``make_context(extension)`` builds each handler's argument; (extension, returned value) for those that ran."""
        ran = []
        for record, handler in self.handlers(hook):
            try:
                returned = handler.call(make_context(record))
            except Exception as exc:  # the extension's bug: it is switched off, the job goes on
                self.fail(record.name, hook.name, exc)
                continue
            ran.append((record, returned))
            if combine is not None and (problem := combine(returned)) is not None:
                self.fail(record.name, hook.name, problem)
        return ran

    def params_for(self, name: str, request: GenerationRequest) -> Mapping[str, Any]:
        """An extension's values for a job: what the request sent, defaults for the rest."""
        record = self.get(name)
        sent = request.extension_params.get(name, {})
        params = record.setup.params if record and record.setup else []
        return frozen_params({p.name: sent.get(p.name, p.default) for p in params})

    def host(self, name: str, owner: str | None = None) -> Host:
        """``name``'s host, acting for ``owner`` (the user whose job or script it serves) when given."""
        if self._host_for is None:
            raise ExtensionError("extensions were not loaded")
        host = self._host_for(name)
        return host.for_owner(owner) if owner is not None else host

    @contextlib.contextmanager
    def acting_for(self, owner: str | None) -> Iterator[None]:
        """While a script runs on this thread, hosts handed out for no user (say one kept from
        APP_STARTED) submit their jobs as ``owner``, the user who started the script."""
        previous = self.acting_user()
        self._acting.owner = owner
        try:
            yield
        finally:
            self._acting.owner = previous

    def acting_user(self) -> str | None:
        """The user whose script runs on this thread (see :meth:`acting_for`), or None."""
        return getattr(self._acting, "owner", None)

    def app_started(self) -> None:
        self.dispatch(Hook.APP_STARTED, lambda r: AppStarted(self.host(r.name)))

    def model_loaded(self, title: str, architecture: str) -> None:
        self.dispatch(Hook.MODEL_LOADED, lambda _r: ModelLoaded(title, architecture))

    def refusal_for_generate(self) -> str | None:
        """Why an extension may not start a generation from where it is now, or None.

        On a queue's worker (STEP_END, AFTER_IMAGE, IMAGE_SAVED, MODEL_LOADED: see ``on_worker``) the job
        would wait for the worker that runs it; inside BEFORE_GENERATE the new job would run the hook again,
        forever."""
        if running_on_worker():
            return "host.generate() cannot be called from a hook that runs on the job worker"
        if getattr(self._in_hook, "before_generate", False):
            return "host.generate() cannot be called from a BEFORE_GENERATE hook"
        return None

    def before_generate(self, request: GenerationRequest, owner: str | None = None) -> GenerationRequest:
        """The request after every BEFORE_GENERATE handler, each seeing the previous one's result;
        their host acts for ``owner``, the user submitting the job."""
        self._in_hook.before_generate = True
        try:
            return self._before_generate(request, owner)
        finally:
            self._in_hook.before_generate = False

    def _before_generate(self, request: GenerationRequest, owner: str | None) -> GenerationRequest:
        latest = _Replaceable(request, GenerationRequest, "a GenerationRequest or None")
        self.dispatch(Hook.BEFORE_GENERATE, lambda r: BeforeGenerate(
            latest.value, self.params_for(r.name, latest.value), self.host(r.name, owner)), latest.take)
        return latest.value

    def step_end(self, job_id: str, step: int, total: int, request: GenerationRequest,
                 interrupt: Callable[[], None]) -> None:
        self.dispatch(Hook.STEP_END,
                      lambda r: StepEnd(job_id, step, total, self.params_for(r.name, request), interrupt))

    def after_image(self, request: GenerationRequest, image: Image.Image, seed: int, index: int) -> Image.Image:
        latest = _Replaceable(image, Image.Image, "an image or None")
        self.dispatch(Hook.AFTER_IMAGE,
                      lambda r: AfterImage(request, latest.value, seed, index, self.params_for(r.name, request)),
                      latest.take)
        return latest.value

    def image_saved(self, request: GenerationRequest, path: Path | None, infotext: str, seed: int, index: int) -> None:
        self.dispatch(Hook.IMAGE_SAVED,
                      lambda r: ImageSaved(request, path, infotext, seed, index, self.params_for(r.name, request)))

    # --- params and scripts ---------------------------------------------------------------------

    def check_params(self, request: GenerationRequest) -> GenerationRequest:
        """``request`` with every extension value checked and converted; ValidationError naming
        ``alwayson_scripts.<extension>.<param>`` for an unknown extension, parameter or bad value."""
        errors: list[FieldError] = []
        checked: dict[str, dict[str, Any]] = {}
        for name, values in request.extension_params.items():
            record = self.get(name)
            where = f"alwayson_scripts.{name}"
            if record is None or record.state is not ExtensionState.ENABLED or record.setup is None:
                state = "is not installed" if record is None else f"is {record.state.value}"
                errors.append(FieldError(where, f"extension {name!r} {state}"))
                continue
            checked[name] = checked_values(record.setup.params, values, where, errors)
        if errors:
            raise ValidationError(errors)
        return replace(request, extension_params=frozen_params({k: frozen_params(v) for k, v in checked.items()}))

    def scripts(self, tab: str) -> list[tuple[str, Script]]:
        """(extension name, script) for the Script dropdown of ``tab``."""
        return [(r.name, s) for r in self._active() for s in r.setup.scripts if tab in s.tabs]  # type: ignore[union-attr]

    def find_script(self, title: str, tab: str) -> tuple[str, Script]:
        for name, script in self.scripts(tab):
            if script.title.lower() == title.strip().lower():
                return name, script
        titles = ", ".join(s.title for _n, s in self.scripts(tab)) or "none"
        raise ValidationError([FieldError("script_name", f"unknown script {title!r}; available: {titles}")])

    def script_values(self, script: Script, values: Mapping[str, Any] | list[Any]) -> Mapping[str, Any]:
        errors: list[FieldError] = []
        checked = checked_values(script.params, values, "script_args", errors)
        if errors:
            raise ValidationError(errors)
        return frozen_params({p.name: checked.get(p.name, p.default) for p in script.params})
