"""Category 11, the route inventory: every route and every UI event the server exposes, each with
its expected rules, tried as an attacker would.

- host: a foreign ``Host`` (DNS rebinding) is 421 on every route, open ones included;
- auth: with a password, every route but the login page and its assets is 401 without credentials;
- origin: every state-changing route and UI event is 403 from another site's page;
- network: with ``--listen`` and no password, what changes the server for everyone is 403 from
  another machine, and nothing else is.

A route or event missing from the tables below fails the test: a new one must be classified here
(and marked with :func:`modules.server_effects.changes_server` where it changes the server).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.web.credentials import load_auth
from tests.conftest import make_services
from tests.gradio_events import event_name, routes_of

CATEGORY = "11 request guard"
PASSWORD = "inventory-password-1"
LOCAL, LAN = ("127.0.0.1", 41000), ("192.168.1.30", 41000)
FOREIGN = "http://evil.example"

# Open before a login: Gradio's login page and what it needs to show.
OPEN = {"/", "/login", "/login/", "/logout", "/favicon.ico", "/manifest.json", "/robots.txt", "/theme.css",
        "/gradio_api/app_id", "/gradio_api/app_id/", "/pwa_icon", "/gradio_api/login_check",
        "/gradio_api/login_check/"}  # /config passes the guard too, and Gradio itself says 401 before a login
OPEN_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon/")

# API routes that change the server for everyone; every other API route reads or runs own jobs.
SERVER_ROUTES = {
    ("POST", "/sdapi/v1/options"), ("POST", "/sdapi/v1/refresh-checkpoints"), ("POST", "/sdapi/v1/refresh-vae"),
    ("POST", "/sdapi/v1/refresh-loras"), ("POST", "/sdapi/v1/refresh-embeddings"),
    ("POST", "/sdapi/v1/unload-checkpoint"), ("POST", "/sdapi/v1/reload-checkpoint"),
    ("POST", "/sdapi/v1/download-model"), ("POST", "/sdapi/v1/download-component"),
    # The studio's admin routes: reordering the queue, managing users (agent-scheduler's run/move too).
    ("POST", "/sdapi/v1/queue/{job_id}/move"), ("GET", "/sdapi/v1/users"), ("POST", "/sdapi/v1/users"),
    ("POST", "/sdapi/v1/users/{name}"), ("DELETE", "/sdapi/v1/users/{name}"),
    ("POST", "/agent-scheduler/v1/task/{task_id}/run"), ("POST", "/agent-scheduler/v1/task/{task_id}/move/{over_id}"),
    ("POST", "/sdapi/v1/remote-engines"),  # a provider's key or base URL, for every user's jobs
    # Gradio's own routes that write outside an event.
    ("POST", "/gradio_api/run-history/connect"), ("POST", "/gradio_api/vibe-edit"), ("POST", "/gradio_api/vibe-edit/"),
    ("POST", "/gradio_api/undo-vibe-edit"), ("POST", "/gradio_api/undo-vibe-edit/"), ("POST", "/gradio_api/vibe-code"),
    ("POST", "/gradio_api/vibe-code/"), ("POST", "/gradio_api/vibe-starter-queries"),
    ("POST", "/gradio_api/vibe-starter-queries/"),
}
# Event routes asked to run a function they cannot name: refused rather than guessed.
UNNAMED_EVENT_ROUTES = {("POST", "/gradio_api/queue/join")} | {
    ("POST", f"/gradio_api/{kind}/{{api_name}}{slash}") for kind in ("run", "api", "call", "call/v2")
    for slash in ("", "/")}
# Gradio's own routes under gradio_api/ read, or run events (classified one by one in UI_EVENTS).
OWN_API_ROUTES = {
    ("GET", p) for p in (
        "/sdapi/v1/cmd-flags", "/sdapi/v1/embeddings", "/sdapi/v1/extensions", "/sdapi/v1/face-restorers",
        "/sdapi/v1/hypernetworks", "/sdapi/v1/latent-upscale-modes", "/sdapi/v1/loras", "/sdapi/v1/memory",
        "/sdapi/v1/options", "/sdapi/v1/progress", "/sdapi/v1/prompt-styles", "/sdapi/v1/realesrgan-models",
        "/sdapi/v1/samplers", "/sdapi/v1/schedulers", "/sdapi/v1/scripts", "/sdapi/v1/script-info",
        "/sdapi/v1/sd-models", "/sdapi/v1/sd-modules", "/sdapi/v1/sd-vae", "/sdapi/v1/upscalers", "/sdapi/v1/workers",
        "/sdapi/v1/downloadable-models", "/sdapi/v1/remote-models", "/sdapi/v1/remote-engines", "/docs",
        "/docs/oauth2-redirect",
        "/openapi.json")
} | {("GET", p) for p in ("/config", "/config/", "/monitoring", "/monitoring/summary", "/monitoring/{key}")
     } | {("POST", p) for p in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/interrupt", "/sdapi/v1/skip",
                         "/sdapi/v1/png-info", "/sdapi/v1/extra-single-image", "/sdapi/v1/extra-batch-images")}
# Built-in extensions' routes (modules/api/extension_routes.py): a GET reads; a POST changes the
# server only when its handler is marked (then it belongs in SERVER_ROUTES). ControlNet's, as A1111's:
# the lists read, and detect runs a preprocessor for the caller, as an extras job does.
# The studio's queue, history and own account (each acts only on the caller's own jobs and tokens),
# and agent-scheduler's routes over the same queue.
OWN_API_ROUTES |= {("GET", p) for p in (
    "/sdapi/v1/queue", "/sdapi/v1/queue/history", "/sdapi/v1/queue/{job_id}", "/sdapi/v1/account",
    "/sdapi/v1/account/tokens", "/agent-scheduler/v1/samplers", "/agent-scheduler/v1/sd-models",
    "/agent-scheduler/v1/queue", "/agent-scheduler/v1/history", "/agent-scheduler/v1/task/{task_id}",
    "/agent-scheduler/v1/task/{task_id}/position", "/agent-scheduler/v1/task/{task_id}/results")} | {
    ("POST", p) for p in (
        "/sdapi/v1/queue/txt2img", "/sdapi/v1/queue/img2img", "/sdapi/v1/queue/{job_id}/cancel",
        "/sdapi/v1/queue/history/{job_id}/run-again", "/sdapi/v1/account/password", "/sdapi/v1/account/tokens",
        "/agent-scheduler/v1/queue/txt2img", "/agent-scheduler/v1/queue/img2img",
        "/agent-scheduler/v1/task/{task_id}/requeue")} | {
    ("DELETE", p) for p in ("/sdapi/v1/account/tokens/{token_id}",)}
# Deleting one's own jobs and their files: a signed-in user may; without sign-in, not from the network.
SERVER_ROUTES |= {("DELETE", p) for p in ("/sdapi/v1/queue/history/{job_id}", "/agent-scheduler/v1/task/{task_id}")}
OWN_API_ROUTES |= {("GET", f"/controlnet/{p}") for p in ("version", "model_list", "module_list", "control_types",
                                                          "settings")} | {("POST", "/controlnet/detect")}

# UI events, by handler: True where it changes the server for everyone.
UI_EVENTS = {
    "modules.ui.app_ui:_footer.<locals>.text": False,
    "modules.ui.checkpoints:build_bar.<locals>.on_download": True,
    "modules.ui.checkpoints:build_bar.<locals>.on_refresh": True,
    "modules.ui.checkpoints:build_bar.<locals>.on_select": True,
    "modules.ui.checkpoints:build_bar.<locals>.on_tick": False,
    "modules.ui.checkpoints:build_bar.<locals>.on_page": False,
    "modules.ui.checkpoints:share_job_checkpoint.<locals>.<lambda>": False,
    "modules.ui.checkpoints:build_component_offer.<locals>.on_fetch": True,  # downloads a tokenizer, switches the model
    "modules.ui.extension_panels:_scripts.<locals>.<lambda>": False,
    "modules.ui.extensions_tab:_build_install.<locals>.ask": True,
    "modules.ui.extensions_tab:_build_requirements.<locals>.<lambda>": False,
    "modules.ui.extensions_tab:_build_requirements.<locals>.ask": True,
    "modules.ui.extensions_tab:_build_update.<locals>.ask": True,
    "modules.ui.extensions_tab:_build_update.<locals>.check_for_updates": True,  # git fetch writes .git
    "modules.ui.extensions_tab:_confirm_handler.<locals>.confirm": True,
    "modules.ui.extensions_tab:_forget.<locals>.<lambda>": False,
    "modules.ui.extensions_tab:build_tab.<locals>.<lambda>": False,
    "modules.ui.extensions_tab:build_tab.<locals>.save": True,
    "modules.ui.extra_networks_ui:_wire.<locals>.filtered": False,
    "modules.ui.extra_networks_ui:_wire.<locals>.on_embedding": False,
    "modules.ui.extra_networks_ui:_wire.<locals>.on_lora": False,
    "modules.ui.extra_networks_ui:_wire.<locals>.on_refresh": True,
    "modules.ui.gallery:_Pages.first": False,
    "modules.ui.gallery:_Pages.following": False,
    "modules.ui.gallery:_Pages.on_refresh": False,
    "modules.ui.gallery:_Pages.previous": False,
    "modules.ui.gallery:_wire_selection.<locals>.<lambda>": False,
    "modules.ui.gallery:_wire_selection.<locals>.on_delete": True,
    "modules.ui.gallery:_wire_selection.<locals>.on_select": False,
    "modules.ui.generation_form:_memory_estimate_event.<locals>.estimate": False,  # reads: a prediction
    "modules.ui.family_fields:wire_family_fields.<locals>.on_checkpoint": False,  # shows the family's controls
    "modules.ui.remote_fields:wire_remote_fields.<locals>.on_choice": False,  # shows a remote model's controls
    "modules.ui.remote_keys_panel:build_panel.<locals>.on_open": True,  # the providers' state, for admins
    "modules.ui.remote_keys_panel:_wire_provider.<locals>.on_save": True,  # a provider's key for every user's jobs
    "modules.ui.remote_keys_panel:_wire_provider.<locals>.on_remove": True,
    "modules.ui.generation_form:_wire_seed_buttons.<locals>.<lambda>": False,
    "modules.ui.generation_form:_wire_seed_buttons.<locals>.on_select": False,
    "modules.ui.generation_form:_wire_token_counters.<locals>.<lambda>": False,
    "modules.ui.generation_form:build_form.<locals>.<lambda>": False,
    "modules.ui.generation_form:_wire_stop_buttons.<locals>.on_interrupt": False,
    "modules.ui.generation_form:_wire_stop_buttons.<locals>.on_skip": False,
    "modules.ui.generation_form:wire_generation.<locals>.run": False,
    "modules.ui.generation_form:wire_generation.<locals>.run_confirmed": False,  # the asked-for job, as run
    "modules.ui.form_checks:build_confirm.<locals>.<lambda>": False,  # hides the question
    "modules.ui.job_queue_panel:wire_cancel.<locals>.on_cancel": False,  # the user's own waiting job
    "modules.ui.job_queue_panel:wire_follow.<locals>.follow": False,  # reads the user's own jobs
    "modules.ui.hires_refiner:build_refiner.<locals>.<lambda>": False,
    "modules.ui.override_settings:build_box.<locals>.<lambda>": False,  # shows or hides the box
    "modules.ui.img2img:_controls.<locals>.<lambda>": False,
    "modules.ui.inpaint:_image_sources.<locals>.<lambda>": False,
    "modules.ui.png_info:read": False,
    "modules.ui.extras_tab:_inputs.<locals>.<lambda>": False,  # which input tab is shown
    "modules.ui.extras_tab:_resize.<locals>.<lambda>": False,
    "modules.ui.extras_tab:_controls.<locals>.refreshed": False,  # re-lists the upscaler models
    "modules.ui.extras_tab:build_tab.<locals>.process": False,  # a job, as Generate is
    "modules.ui.extras_tab:build_tab.<locals>.on_select": False,
    "modules.ui.send_to:SendWiring.to_extras.<locals>.send": False,
    "modules.ui.model_downloads_ui:build_panel.<locals>.described": False,
    "modules.ui.model_downloads_ui:build_panel.<locals>.download": True,  # a model file for everyone
    "modules.ui.send_to:SendWiring.wire.<locals>.send": False,
    "modules.ui.settings_tab:build_tab.<locals>.load_values": False,
    "modules.ui.settings_tab:build_tab.<locals>.filtered": False,
    "modules.ui.settings_tab:build_tab.<locals>.apply_settings": True,  # as POST /sdapi/v1/options
    "modules.ui.quicksettings:build_quicksettings.<locals>.shown": False,
    "modules.ui.quicksettings:_wire.<locals>.apply_quick": True,  # as POST /sdapi/v1/options
    "modules.ui.styles_ui:build_styles.<locals>.<lambda>": False,
    "modules.ui.styles_ui:build_styles.<locals>.on_apply": False,
    "modules.ui.styles_ui:build_styles.<locals>.on_delete": True,
    "modules.ui.styles_ui:build_styles.<locals>.on_pick": False,
    "modules.ui.styles_ui:build_styles.<locals>.on_save": True,
    "modules.ui.vae_bar:build_vae_choice.<locals>.<lambda>": False,
    "modules.ui.vae_bar:build_vae_choice.<locals>.on_refresh": True,
    "modules.ui.vae_bar:build_vae_choice.<locals>.on_select": True,
    "modules.ui.workers_panel:build_panel.<locals>.refresh": False,
    "modules.ui.queue_tab:_wire_line.<locals>.refresh": False,  # the Queue tab: the viewer's view of the line
    "modules.ui.queue_tab:_wire_line.<locals>.on_show": False,
    "modules.ui.queue_tab:_wire_line.<locals>.on_tab": False,  # starts or stops the refresh timer
    "modules.ui.queue_tab:_wire_line.<locals>.on_cancel": False,  # own jobs (admins: any)
    "modules.ui.queue_tab:_wire_line.<locals>.on_move": True,  # reorders everyone's jobs: admins only
    "modules.ui.queue_history:wire_section.<locals>.first": False,  # the viewer's history
    "modules.ui.queue_history:wire_section.<locals>.previous": False,
    "modules.ui.queue_history:wire_section.<locals>.following": False,
    "modules.ui.queue_history:wire_section.<locals>.on_pick": False,
    "modules.ui.queue_history:wire_section.<locals>.on_run_again": False,  # a job of the viewer's, limits apply
    "modules.ui.queue_history:wire_section.<locals>.on_delete": True,  # own files; from the network: only signed in
    "modules.ui.queue_history:wire_section.<locals>.<lambda>": False,  # shows or hides the delete question
    "modules.ui.account_tab:build_tab.<locals>.on_load": False,  # the Account tab, as the viewer's role shows it
    "modules.ui.account_tab:_wire_own.<locals>.on_change_password": False,  # the viewer's own account
    "modules.ui.account_tab:_wire_own.<locals>.on_create": False,  # the viewer's own API token
    "modules.ui.account_tab:_wire_own.<locals>.on_revoke": False,
    "modules.ui.users_panel:wire_panel.<locals>.on_add": True,  # users admin: admins only
    "modules.ui.users_panel:wire_panel.<locals>.on_pick": True,
    "modules.ui.users_panel:wire_panel.<locals>.on_save": True,
    "modules.ui.users_panel:wire_panel.<locals>.on_set_password": True,
    "modules.ui.users_panel:wire_panel.<locals>.on_remove": True,
    # Built-in extensions' panels (their helper modules' own names). ControlNet's: follow the chosen
    # preprocessor, re-list the model files for this page, a unit's own image, a preprocessing preview.
    "cn_ui:_wire_unit.<locals>.on_module_picked": False,
    "cn_ui:_wire_unit.<locals>.on_module_changed": False,
    "cn_ui:_wire_unit.<locals>.on_refresh": False,
    "cn_ui:_wire_unit.<locals>.on_upload": False,
    "cn_ui:_wire_unit.<locals>.on_preview": False,  # a preprocessor run for the caller, as detect is
}


def basic() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()}


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path) or "/"


def is_open(path: str) -> bool:
    return path in OPEN or path.startswith(OPEN_PREFIXES)


def build(tmp_path: Path, *args: str) -> tuple[object, object]:
    flags = parse_flags(["--api", *args], {})
    services = make_services(tmp_path / "data", tmp_path / "no-models")
    auth = load_auth(flags.gradio_auth, flags.gradio_auth_path, flags.api_auth)
    return app_module._build_app(flags, services, auth), services


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One app for the module (building one takes seconds): alice an admin (--gradio-auth), uma a user."""
    from modules.identity import Role

    guard, services = build(tmp_path_factory.mktemp("secured"), "--gradio-auth", f"alice:{PASSWORD}")
    services.accounts.add("uma", PASSWORD, Role.USER)
    yield guard
    services.close()


@pytest.fixture
def exposed(tmp_path: Path) -> Iterator[object]:
    guard, services = build(tmp_path, "--listen")
    yield guard
    services.close()


def blocks_of(guard: object) -> object:
    return next(e.blocks for e in guard.faces.effects if hasattr(e, "blocks"))


def test_every_route_is_in_the_inventory(secured) -> None:
    walked = set(routes_of(secured.app.routes))
    api = {r for r in walked if not r[1].startswith("/gradio_api/") and not is_open(r[1])}
    classified = SERVER_ROUTES | OWN_API_ROUTES
    unlisted = sorted(r for r in api if r not in classified)
    assert unlisted == [], f"classify these routes in the inventory: {unlisted}"
    assert len(walked) > 100  # the walk really covered Gradio's and the API's routes


def test_every_ui_event_is_in_the_inventory(secured) -> None:
    names = {event_name(f) for f in blocks_of(secured).fns.values()}
    assert names - set(UI_EVENTS) == set(), "classify these UI events in UI_EVENTS"
    assert set(UI_EVENTS) - names == set(), "these UI events are gone: drop them from UI_EVENTS"


def test_every_route_refuses_a_foreign_host_and_a_stranger(secured) -> None:
    with TestClient(secured, base_url="http://127.0.0.1:7860", client=LOCAL) as client:
        for method, path in sorted(set(routes_of(secured.app.routes))):
            url = concrete(path)
            rebound = client.request(method, url, headers={"Host": "evil.example:7860"})
            assert rebound.status_code == 421, (method, path, rebound.status_code)
            stranger = client.request(method, url)
            if is_open(url):
                assert stranger.status_code != 401 or url.startswith("/gradio_api/login_check"), (method, path)
            else:
                assert stranger.status_code == 401, (method, path, stranger.status_code)


def test_every_state_changing_route_refuses_another_sites_page(secured) -> None:
    with TestClient(secured, base_url="http://127.0.0.1:7860", client=LOCAL) as client:
        for method, path in sorted(set(routes_of(secured.app.routes))):
            if method in ("GET", "HEAD", "OPTIONS"):
                continue
            reply = client.request(method, concrete(path), headers={"Origin": FOREIGN, **basic()})
            assert reply.status_code == 403, (method, path, reply.status_code)


def test_every_ui_event_refuses_another_sites_page_a_foreign_host_and_a_stranger(secured) -> None:
    with TestClient(secured, base_url="http://127.0.0.1:7860", client=LOCAL) as client:
        assert client.post("/login", data={"username": "alice", "password": PASSWORD}).status_code == 200
        for index, block_fn in blocks_of(secured).fns.items():
            body = {"data": [], "fn_index": index, "session_hash": None}
            assert client.post("/gradio_api/queue/join", json=body, headers={"Origin": FOREIGN}).status_code == 403
            assert client.post("/gradio_api/queue/join", json=body,
                               headers={"Host": "evil.example:7860"}).status_code == 421
            # A page of this site (its own Origin) gets through; with no session hash Gradio says 400.
            signed_in = client.post("/gradio_api/queue/join", json=body, headers={"Origin": "http://127.0.0.1:7860"})
            assert signed_in.status_code == 400, (event_name(block_fn), signed_in.status_code)
        # A request that only a session cookie signs in must say it comes from this site (CSRF).
        assert client.post("/gradio_api/queue/join", json={"data": [], "fn_index": 0}).status_code == 403
        client.cookies.clear()
        assert client.post("/gradio_api/queue/join", json={"data": [], "fn_index": 0}).status_code == 401


def test_the_network_rule_covers_exactly_the_server_changing_routes_and_events(exposed) -> None:
    with TestClient(exposed, base_url="http://127.0.0.1:7860", client=LAN) as lan:
        for method, path in sorted(set(routes_of(exposed.app.routes))):
            if method in ("GET", "HEAD", "OPTIONS"):
                continue
            reply = lan.request(method, concrete(path), json={"data": []})
            expected_refused = (method, path) in SERVER_ROUTES | UNNAMED_EVENT_ROUTES
            assert (reply.status_code == 403) == expected_refused, (method, path, reply.status_code)
        # Every event by its index; by its API name too for one event of each handler (the other
        # events of a handler, such as each quicksetting's apply, carry the same mark).
        first_of: dict[str, int] = {}
        for index, block_fn in blocks_of(exposed).fns.items():
            name = event_name(block_fn)
            routes = ["/gradio_api/queue/join"]
            if first_of.setdefault(name, index) == index:
                routes += [f"/gradio_api/run/{block_fn.api_name}", f"/gradio_api/call/{block_fn.api_name}"]
            for route in routes:
                body = {"data": [], "fn_index": index, "session_hash": None}
                reply = lan.post(route, json=body)
                assert (reply.status_code == 403) == UI_EVENTS[name], (name, route, reply.status_code)
    with TestClient(exposed, base_url="http://127.0.0.1:7860", client=LOCAL) as local:
        for name, index in first_of.items():
            body = {"data": [], "fn_index": index, "session_hash": None}
            assert local.post("/gradio_api/queue/join", json=body).status_code == 400, name


# --- roles: a signed-in user (not an admin) is refused exactly what changes the server --------------

OWN_FILES_ROUTES = {("DELETE", "/sdapi/v1/queue/history/{job_id}"), ("DELETE", "/agent-scheduler/v1/task/{task_id}")}
OWN_FILES_EVENTS = {"modules.ui.queue_history:wire_section.<locals>.on_delete"}


def test_a_user_is_refused_every_server_change_and_nothing_else(secured) -> None:
    """Every API route and UI event a user sends: refused by the role rule (403) where it changes the
    server for everyone (deleting one's own jobs is not that), through to the route otherwise; the
    same requests by an admin always get through."""
    user = {"Authorization": "Basic " + base64.b64encode(f"uma:{PASSWORD}".encode()).decode()}

    def by_role(reply) -> bool:  # the guard's refusal, not a route's own 403
        return reply.status_code == 403 and "Only an admin" in reply.text

    with TestClient(secured, base_url="http://127.0.0.1:7860", client=LOCAL) as client:
        for method, path in sorted(SERVER_ROUTES | OWN_API_ROUTES):
            if method in ("GET", "HEAD", "OPTIONS") or path.startswith("/gradio_api/"):
                continue  # Gradio's event routes: by event, below
            refused = (method, path) in SERVER_ROUTES - OWN_FILES_ROUTES
            for who, expected in ((user, refused), (basic(), False)):
                reply = client.request(method, concrete(path), json={}, headers=who)
                assert by_role(reply) == expected, (method, path, reply.status_code, reply.text[:200])
        for index, block_fn in blocks_of(secured).fns.items():
            name = event_name(block_fn)
            body = {"data": [], "fn_index": index, "session_hash": None}
            reply = client.post("/gradio_api/queue/join", json=body, headers=user)
            assert by_role(reply) == (UI_EVENTS[name] and name not in OWN_FILES_EVENTS), (name, reply.status_code)
