"""A team studio in the browser: an admin signs in and creates a user in the Account tab, signs
out; that user signs in, queues two jobs, sees both in the Queue tab and cancels the waiting one,
which leaves the line and shows as cancelled in the history while the other runs on (until she
interrupts it). In headless
Chromium, on one server whose database holds the admin before it starts."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from modules.identity import Role
from modules.services.accounts import AccountStore
from modules.services.studio_db import db_path, open_studio_db
from tests.server_process import Server, start_server, stop_server

pytestmark = pytest.mark.browser
ADMIN, ADMIN_PASSWORD = "ada", "ada-admin-pass-1"
USER, USER_PASSWORD = "bea", "bea-user-pass-2"
# A minute of work or more (60 images: under the 64 that would ask first): the next job surely
# waits behind it, and the test interrupts it once its part is played.
LONG = {"txt2img_steps": 150, "txt2img_batch_count": 60}


@pytest.fixture(scope="module")
def studio(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("studio-data")
    db = open_studio_db(db_path(data_dir))
    try:
        AccountStore(db).add(ADMIN, ADMIN_PASSWORD, Role.ADMIN)
    finally:
        db.close()
    proc, server = start_server(data_dir, tiny_models.folder, "--ckpt", "tiny-sd15.safetensors")
    yield server
    stop_server(proc)


def sign_in(page, name: str, password: str) -> None:
    page.locator("input[type=password]").wait_for()
    page.locator("input[type=text]").first.fill(name)
    page.locator("input[type=password]").fill(password)
    page.get_by_role("button", name=re.compile("login", re.I)).click()
    page.locator("#txt2img_generate").wait_for()


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def fill_job(page, prompt: str, **numbers: int) -> None:
    page.locator("#txt2img_prompt textarea").fill(prompt)
    for elem_id, value in {"txt2img_width": 64, "txt2img_height": 64, "txt2img_steps": 2,
                           "txt2img_batch_count": 1, "txt2img_batch_size": 1, **numbers}.items():
        set_number(page, elem_id, value)


def open_page(context, studio: Server):
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(studio.url + "/")
    page.locator("#txt2img_generate").wait_for()
    return page


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def test_an_admin_adds_a_user_who_queues_two_jobs_and_cancels_the_waiting_one(browser, studio: Server) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(studio.url + "/")
        sign_in(page, ADMIN, ADMIN_PASSWORD)
        open_tab(page, "Account")
        page.locator("#account_who").get_by_text(f"Signed in as {ADMIN} (admin)").wait_for()
        page.locator("#account_add_name input").fill(USER)
        page.locator("#account_add_password input").fill(USER_PASSWORD)
        page.locator("#account_add").click()
        page.locator("#account_users_result").get_by_text(f"Added {USER}.").wait_for()
        assert re.search(rf"{USER}\s+user\s+none", page.locator("#account_users_table").inner_text())
        page.locator("#account_sign_out").click()

        sign_in(page, USER, USER_PASSWORD)
        open_tab(page, "Account")
        page.locator("#account_who").get_by_text(f"Signed in as {USER} (user)").wait_for()
        assert not page.locator("#account_users").is_visible()  # the users section is admins' only
        # Two more pages of bea's, each with its job filled in, so that the second job is queued and
        # cancelled within moments of the first one starting (this page watches the Queue tab).
        first, second = open_page(context, studio), open_page(context, studio)
        fill_job(first, "a long first job", **LONG)
        fill_job(second, "a job that never runs")
        open_tab(page, "Queue")
        first.locator("#txt2img_generate").click()
        first.get_by_text(re.compile(r"step \d+/150")).first.wait_for()
        second.locator("#txt2img_generate").click()  # queued behind the first
        second.locator("#txt2img_queue").get_by_text("a job that never runs").wait_for()
        page.locator("#queue_refresh").click()
        page.wait_for_function("() => document.querySelector('#queue_table').innerText.includes('never runs')")
        assert "a long first job" in page.locator("#queue_table").inner_text()
        page.locator("#queue_pick input").click()
        page.get_by_role("option", name=re.compile("a job that never runs")).click()
        page.wait_for_function("() => document.querySelector('#queue_pick input').value.includes('never runs')")
        page.locator("#queue_cancel").click()
        page.wait_for_function("() => !document.querySelector('#queue_table').innerText.includes('never runs')")
        first.locator("#txt2img_interrupt").click()  # the long one has shown what it needed to; stop it
        page.locator("#queue_summary").get_by_text("The queue is empty.").wait_for(timeout=180_000)
        page.locator("#queue_history_refresh").click()
        page.wait_for_function("() => document.querySelector('#queue_history_table').innerText.includes('never runs')")
        rows = page.locator("#queue_history_table").inner_text()  # cells in order: when, owner, state, kind, ...
        assert re.search(rf"{USER}\s+cancelled\s+txt2img\s+a job that never runs\s+0", rows), rows
        assert re.search(rf"{USER}\s+interrupted\s+txt2img\s+a long first job\s+\d", rows), rows
    finally:
        context.close()
