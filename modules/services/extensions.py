"""Extensions: finding them, loading each in isolation, and running their hooks.

Built-in extensions live in the project's ``extensions/``, users' in ``extensions/`` under the data
dir (the same folder when the data dir is the project). Each is read from its manifest first; only
an enabled one whose ``api_version`` range holds a version this Atelier runs is imported. Loading
problems (an import error, a version none supported) mark that extension failed with the reason.
A hook that raises: an API 1 extension is marked failed (API 1's rule); an API 2 one fails only the
job it ran for, or is skipped for it with a warning (its handler's ``on_error``), and runs on for
other jobs. Enabled/disabled is kept in ``extensions.yaml`` in the data dir and applies at the next start.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import yaml
from PIL import Image

from modules.atomic import write_text_atomic
from modules.errors import AtelierError, ExtensionError, FieldError, ValidationError
from modules.extension_api import (
    AfterImage,
    AppStarted,
    BeforeGenerate,
    Handler,
    Hook,
    Host,
    ImageSaved,
    JobInfo,
    ModelLoaded,
    OnError,
    PlanImages,
    Script,
    StepEnd,
    frozen_params,
)
from modules.params import GenerationRequest, ImagePrompt
from modules.services.extension_loading import ExtensionRecord, ExtensionState, discover, load_one
from modules.services.extension_manifest import MANIFEST
from modules.services.extension_params import checked_values
from modules.services.extension_policy import Replaceable, runs_v1
from modules.services.queue_contract import running_on_worker

log = logging.getLogger(__name__)


class UserHost(Host, Protocol):
    """A host that can act for a user: the jobs it submits belong to ``owner``."""

    def for_owner(self, owner: str | None) -> Host: ...


class ExtensionManager:
    """The extensions of this run and their hooks, in a stated order."""

    def __init__(self, builtin_dir: Path, user_dir: Path, state_file: Path, enabled: bool = True) -> None:
        self.builtin_dir = builtin_dir
        self.user_dir = user_dir
        self._state_file = state_file
        self._enabled = enabled  # False: --disable-all-extensions
        self._lock = threading.Lock()
        self._records: dict[str, ExtensionRecord] = {}
        self._switched_off: frozenset[str] = frozenset()  # failed while running (replaced, never changed)
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

    def load_all(self, host_for: Callable[[str], UserHost]) -> None:
        """Read every manifest and load the enabled extensions; failures are recorded, never raised.
        ``host_for(name)`` is the host facade an extension's hooks receive."""
        self._host_for = host_for
        disabled = self.disabled_names()
        records: dict[str, ExtensionRecord] = {}
        for folder, builtin in discover(self.builtin_dir, self.user_dir):
            if not (folder / MANIFEST).exists():
                continue
            record = load_one(folder, builtin, disabled, self._enabled)
            if record.name in records:
                record = replace(record, state=ExtensionState.FAILED, setup=None,
                                 error=f"another extension is already called {record.name!r} ({records[record.name].folder})")
            records[record.name] = record
        with self._lock:
            self._records = records
            self._switched_off = frozenset()
        loaded = [r.name for r in records.values() if r.state is ExtensionState.ENABLED]
        failed = [r.name for r in records.values() if r.state is ExtensionState.FAILED]
        log.info("Extensions: %d loaded%s%s", len(loaded), f" ({', '.join(loaded)})" if loaded else "",
                 f"; failed: {', '.join(failed)}" if failed else "")

    def records(self) -> list[ExtensionRecord]:
        with self._lock:
            return list(self._records.values())

    def get(self, name: str) -> ExtensionRecord | None:
        with self._lock:
            return self._records.get(name)

    def find(self, name: str) -> ExtensionRecord | None:
        """The extension called ``name`` in any case (A1111 clients send "ControlNet" for "controlnet")."""
        with self._lock:
            found = self._records.get(name)
            if found is None:
                wanted = name.strip().lower()
                found = next((r for key, r in self._records.items() if key.lower() == wanted), None)
            return found

    def fail(self, name: str, where: str, exc: BaseException) -> None:
        """Mark ``name`` failed (switched off until the next start) and log why."""
        log.error("Extension %s failed in %s; it is switched off until the next start", name, where,
                  exc_info=exc)
        with self._lock:
            self._switched_off = self._switched_off | {name}
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
                 combine: Callable[[Any], Exception | None] | None = None,
                 warnings: list[str] | None = None,
                 handlers: list[tuple[ExtensionRecord, Handler]] | None = None) -> list[tuple[ExtensionRecord, Any]]:
        """Run every handler of ``hook`` in order, each isolated. ``make_context(extension)`` builds each
        handler's argument; (extension, returned value) for those that ran. A handler that raises, or
        whose returned value ``combine`` rejects (with the error to record): an API 1 extension is marked
        failed and the rest run on; an API 2 one fails the job (ExtensionError naming it) or, when its
        ``on_error`` is SKIP, is left out for this call with a line added to ``warnings`` (the job's).
        ``handlers``: the hook's handlers as :meth:`handlers` gave them earlier (a job keeps its own)."""
        ran = []
        for record, handler in self.handlers(hook) if handlers is None else handlers:
            if record.name in self._switched_off:  # failed since the list was made
                continue
            try:
                returned = handler.call(make_context(record))
                problem = combine(returned) if combine is not None else None
            except AtelierError as exc:
                if runs_v1(record, hook):
                    self.fail(record.name, hook.name, exc)
                    continue
                raise  # an API 2 extension's refusal (a ValidationError naming fields) is the job's answer
            except Exception as exc:  # the extension's bug
                self._failed_in_job(record, handler.on_error, hook, exc, warnings)
                continue
            if problem is not None:
                self._failed_in_job(record, handler.on_error, hook, problem, warnings)
                continue
            ran.append((record, returned))
        return ran

    def _failed_in_job(self, record: ExtensionRecord, on_error: OnError, hook: Hook, exc: BaseException,
                       warnings: list[str] | None) -> None:
        if runs_v1(record, hook):  # API 1's rule: switched off until the next start, the job goes on
            self.fail(record.name, hook.name, exc)
            return
        what = f"{type(exc).__name__}: {exc}"
        if on_error is OnError.SKIP:
            log.warning("Extension %s skipped in %s for this job", record.name, hook.name, exc_info=exc)
            if warnings is not None:
                warnings.append(f"Extension {record.name} skipped in {hook.name}: {what}")
            return
        log.error("Extension %s failed in %s; the job fails", record.name, hook.name, exc_info=exc)
        raise ExtensionError(f"Extension {record.name} failed in {hook.name}: {what}") from exc

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
        latest = Replaceable(request, GenerationRequest, "a GenerationRequest or None")
        self.dispatch(Hook.BEFORE_GENERATE, lambda r: BeforeGenerate(
            latest.value, self.params_for(r.name, latest.value), self.host(r.name, owner), owner), latest.take)
        return latest.value

    def plan_images(self, request: GenerationRequest, owner: str | None = None) -> GenerationRequest:
        """The request with the per-image prompts and seeds PLAN_IMAGES handlers chose (each sees the
        previous one's plan in ``request.per_image``); one entry per image of the job, or none."""
        if not self.has(Hook.PLAN_IMAGES):
            return request
        count = request.images_per_job
        latest = Replaceable(request, GenerationRequest, "a GenerationRequest")

        def take(returned: Any) -> Exception | None:
            if returned is None:
                return None
            plan = tuple(returned) if isinstance(returned, (list, tuple)) else None
            if plan is None or len(plan) != count or not all(isinstance(p, ImagePrompt) for p in plan):
                return TypeError(f"returned {type(returned).__name__}, not a list of {count} ImagePrompt "
                                 "(one per image of the job) or None")
            return latest.take(replace(latest.value, per_image=plan))

        self._in_hook.before_generate = True  # host.generate() from here would plan forever
        try:
            self.dispatch(Hook.PLAN_IMAGES, lambda r: PlanImages(
                latest.value, self.params_for(r.name, latest.value), self.host(r.name, owner), owner), take)
        finally:
            self._in_hook.before_generate = False
        return latest.value

    def step_end(self, job_id: str, step: int, total: int, request: GenerationRequest,
                 interrupt: Callable[[], None], warnings: list[str] | None = None) -> None:
        job = JobInfo(job_id, request.owner, request)
        self.dispatch(Hook.STEP_END, lambda r: StepEnd(job_id, step, total, self.params_for(r.name, request), interrupt,
                                                       job, self.host(r.name, request.owner)), warnings=warnings)

    def after_image(self, request: GenerationRequest, image: Image.Image, seed: int, index: int,
                    warnings: list[str] | None = None) -> Image.Image:
        latest = Replaceable(image, Image.Image, "an image or None")
        owner = request.owner
        self.dispatch(Hook.AFTER_IMAGE,
                      lambda r: AfterImage(request, latest.value, seed, index, self.params_for(r.name, request),
                                           owner, self.host(r.name, owner)), latest.take, warnings)
        return latest.value

    def image_saved(self, request: GenerationRequest, path: Path | None, infotext: str, seed: int, index: int,
                    warnings: list[str] | None = None) -> None:
        owner = request.owner
        self.dispatch(Hook.IMAGE_SAVED,
                      lambda r: ImageSaved(request, path, infotext, seed, index, self.params_for(r.name, request),
                                           owner, self.host(r.name, owner)), warnings=warnings)

    # --- params and scripts ---------------------------------------------------------------------

    def check_params(self, request: GenerationRequest) -> GenerationRequest:
        """``request`` with every extension value checked and converted; ValidationError naming
        ``alwayson_scripts.<extension>.<param>`` for an unknown extension, parameter or bad value."""
        errors: list[FieldError] = []
        checked: dict[str, dict[str, Any]] = {}
        for name, values in request.extension_params.items():
            record = self.find(name)  # A1111 clients spell names in any case ("ControlNet")
            where = f"alwayson_scripts.{name}"
            if record is None or record.state is not ExtensionState.ENABLED or record.setup is None:
                state = "is not installed" if record is None else f"is {record.state.value}"
                errors.append(FieldError(where, f"extension {name!r} {state}"))
                continue
            if record.name in checked:
                errors.append(FieldError(where, f"extension {record.name!r} is given twice"))
                continue
            checked[record.name] = checked_values(record.setup.params, values, where, errors)
        if errors:
            raise ValidationError(errors)
        return replace(request, extension_params=frozen_params({k: frozen_params(v) for k, v in checked.items()}))

    def acting(self, request: GenerationRequest) -> list[str]:
        """The extensions whose (checked) params in ``request`` ask them to act: a value that is not
        its default, or that its param says is active (an enabled ControlNet unit)."""
        found = []
        for name, values in request.extension_params.items():
            record = self.find(name)
            params = {p.name: p for p in record.setup.params} if record is not None and record.setup else {}
            if any(key not in params or params[key].acts(value) for key, value in values.items()):
                found.append(name)
        return found

    def read_infotext(self, fields: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        """Each enabled extension's param values a pasted or sent infotext's ``fields`` hold, by
        extension and param name, from the readers extensions registered with ``add_infotext`` (a
        reader's positional list maps onto the params in declared order; names it does not declare
        are dropped). A reader that raises is logged and left out: pasting never fails for it."""
        found: dict[str, dict[str, Any]] = {}
        for record in self._active():
            names = [p.name for p in record.setup.params]  # type: ignore[union-attr]
            for reader in record.setup.infotext_readers:  # type: ignore[union-attr]
                try:
                    values = reader(fields)
                except Exception:  # its bug: the rest of the text still pastes
                    log.exception("Extension %s could not read an infotext", record.name)
                    continue
                if values is None:
                    continue
                by_name = dict(zip(names, values, strict=False)) if isinstance(values, (list, tuple)) else dict(values)
                found.setdefault(record.name, {}).update({k: v for k, v in by_name.items() if k in names})
        return found

    def always_on(self) -> list[ExtensionRecord]:
        """Enabled extensions that take values with every job (A1111's always-on scripts)."""
        return [r for r in self._active()
                if r.setup.params or any(h.hook is Hook.UI_PANEL for h in r.setup.handlers)]  # type: ignore[union-attr]

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
