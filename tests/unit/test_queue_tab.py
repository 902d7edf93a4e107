"""The Queue and Account tabs' pure parts: the queue's rows and the jobs a viewer may pick (others'
prompts hidden), the history's rows and choices, what "Send to" takes from a job, and the tables
of tokens and users."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from modules.identity import Identity, Role, UserLimits
from modules.params import GenerationRequest
from modules.services.accounts import Account, TokenInfo
from modules.services.job_store import StoredFile, StoredJob, StoredState
from modules.services.queue_view import HistoryEntry, QueueEntry
from modules.ui.account_tab import token_choices, token_rows, ui_root, who_html
from modules.ui.queue_history import history_choices, history_rows, page_text, picked_of, send_pick
from modules.ui.queue_tab import HIDDEN, action_choices, default_pick, eta_text, queue_rows, summary_text
from modules.ui.users_panel import account_rows, limits_text

ADMIN = Identity("ada", Role.ADMIN)
BEA = Identity("bea", Role.USER)


def entry(**changes: object) -> QueueEntry:
    base = QueueEntry(id="job-1", owner="bea", state="queued", position=1, kind="txt2img", prompt="a red fox",
                      negative_prompt="", submitted_at=0.0, started_at=None, eta_seconds=75.0, progress=0.0, step=0,
                      total_steps=0, width=64, height=96, steps=4, images=2, checkpoint=None, mine=True, pinned=False)
    return dataclasses.replace(base, **changes)


def stored(job_id: str = "j1", prompt: str = "a quiet lake", files: tuple[StoredFile, ...] = (),
           infotext: str | None = None, state: StoredState = StoredState.FINISHED) -> StoredJob:
    return StoredJob(id=job_id, seq=1, owner="bea", kind="txt2img", state=state,
                     request=GenerationRequest(prompt=prompt), submitted_at=1_700_000_000.0, started_at=None,
                     finished_at=1_700_000_060.0, attempts=1, pin=None, error=None, infotext=infotext, files=files)


def test_the_running_job_comes_first_with_its_progress_and_others_prompts_read_hidden() -> None:
    running = entry(id=None, owner="carl", state="running", position=0, prompt=None, negative_prompt=None,
                    progress=0.5, step=2, total_steps=4, eta_seconds=5.0, mine=False)
    rows = queue_rows([running, entry()])
    assert rows[0] == ["▶", "carl", "running", "txt2img", HIDDEN, "64x96", 4, 2, "0:05", "50% (2/4)"]
    assert rows[1] == [1, "bea", "queued", "txt2img", "a red fox", "64x96", 4, 2, "1:15", ""]
    assert "a red fox" not in str(rows[0])


def test_a_user_picks_only_their_own_jobs_and_an_admin_any_visible_one() -> None:
    others = entry(id=None, owner="carl", prompt=None, mine=False, position=1)
    mine = entry(id="job-2", position=2)
    assert action_choices([others, mine], BEA) == [("#2 · bea · a red fox", "job-2")]
    admin_view = [entry(id="job-9", owner="carl", mine=False, prompt="carl's secret"), mine]
    assert [value for _, value in action_choices(admin_view, ADMIN)] == ["job-9", "job-2"]
    assert [value for _, value in action_choices(admin_view, BEA)] == ["job-2"]  # an id alone is not enough
    running = entry(id="job-1", state="running", position=0)
    assert default_pick([running, mine], ["job-1", "job-2"]) == "job-2"  # the waiting one, not the running one
    assert default_pick([running], ["job-1"]) == "job-1" and default_pick([], []) is None


def test_the_summary_counts_running_and_waiting_jobs() -> None:
    assert summary_text([]) == "The queue is empty."
    assert summary_text([entry(state="running", position=0), entry(), entry()]) == "1 running, 2 waiting."
    assert eta_text(None) == "" and eta_text(3599.6) == "60:00"


def test_history_rows_count_images_not_the_grid_and_shorten_long_prompts(tmp_path: Path) -> None:
    files = (StoredFile("txt2img-grids", -1, tmp_path / "g.png", None),
             StoredFile("txt2img-images", 0, tmp_path / "a.png", 5),
             StoredFile("txt2img-images", 1, tmp_path / "b.png", 6))
    long_prompt = "word " * 40
    items = [HistoryEntry(stored("j2", long_prompt, files, state=StoredState.CANCELLED)), HistoryEntry(stored("j1"))]
    rows = history_rows(items)
    assert [r[2] for r in rows] == ["cancelled", "finished"]
    assert rows[0][5] == 2 and rows[1][5] == 0
    assert rows[0][4].endswith("…") and len(rows[0][4]) <= 81
    assert [value for _, value in history_choices(items)] == ["j2", "j1"]
    assert page_text(1, 0) == "Page 1 of 1 · 0 job(s)" and page_text(2, 41) == "Page 2 of 3 · 41 job(s)"


def test_send_takes_the_first_image_and_its_parameters_when_none_were_stored(tmp_path: Path) -> None:
    grid, image = tmp_path / "grid.png", tmp_path / "00001.png"
    Image.new("RGB", (8, 8)).save(grid)
    info = PngInfo()
    info.add_text("parameters", "a quiet lake\nSteps: 4, Seed: 5")
    Image.new("RGB", (8, 8)).save(image, pnginfo=info)
    job = stored(files=(StoredFile("txt2img-grids", -1, grid, None), StoredFile("txt2img-images", 0, image, 5)))
    picked = picked_of(job)
    assert picked == {"id": "j1", "path": str(image), "infotext": "a quiet lake\nSteps: 4, Seed: 5"}
    assert picked_of(dataclasses.replace(job, infotext="stored text"))["infotext"] == "stored text"
    assert send_pick(picked) == (str(image), "a quiet lake\nSteps: 4, Seed: 5")
    image.unlink()  # deleted since: the text still goes, the image not
    assert send_pick(picked) == (None, "a quiet lake\nSteps: 4, Seed: 5")
    assert send_pick(None) == (None, "")


def test_tokens_and_users_tables() -> None:
    tokens = [TokenInfo("t1", "bea", "laptop", 1_700_000_000.0, None, False),
              TokenInfo("t2", "bea", "", 1_700_000_000.0, 1_700_000_100.0, True)]
    rows = token_rows(tokens)
    assert rows[0][0] == "laptop" and rows[0][3] == "never" and rows[0][4] == "active" and rows[1][4] == "revoked"
    assert token_choices(tokens) == [("laptop · t1", "t1")]  # a revoked token cannot be revoked again
    limits = UserLimits(max_batch=4, max_steps=30, jobs_per_hour=10, checkpoints=("sd15*",))
    users = account_rows([Account("bea", Role.USER, limits, 1_700_000_000.0),
                          Account("ada", Role.ADMIN, UserLimits(), 0.0)])
    assert users[0][:3] == ["bea", "user", "batch ≤ 4; steps ≤ 30; 10 jobs/hour; checkpoints: sd15*"]
    assert users[1][:3] == ["ada", "admin", "none"]
    assert limits_text(UserLimits(max_size=768)) == "size ≤ 768"


class _Url:
    def __init__(self, path: str) -> None:
        self.path = path


class _Request:
    def __init__(self, path: str) -> None:
        self.url = _Url(path)


def test_sign_out_goes_to_the_uis_logout_under_its_subpath_and_names_are_escaped() -> None:
    assert ui_root(_Request("/studio/gradio_api/queue/join")) == "/studio"
    assert ui_root(_Request("/gradio_api/run/predict")) == ""
    assert ui_root(object()) == ""
    html = who_html(Identity("<b>x</b>", Role.USER), "/studio")
    assert 'href="/studio/logout"' in html and "&lt;b&gt;x&lt;/b&gt;" in html and "(user)" in html
