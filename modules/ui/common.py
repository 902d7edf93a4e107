"""Small pieces every tab shares: turning service errors into UI errors, and progress display."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import gradio as gr

from modules.errors import AtelierError, ValidationError
from modules.services.job_types import Job, ProgressSnapshot
from modules.services.queue_contract import JobQueueContract
from modules.ui import escape

POLL_SECONDS = 0.3


def ui_error(exc: AtelierError) -> gr.Error:
    """The one place a service error becomes something the browser shows. Messages quote names and
    values the user or a file supplied, and Gradio renders them as HTML: escaped."""
    if isinstance(exc, ValidationError):
        return gr.Error(escape.text("Please fix: " + "; ".join(str(e) for e in exc.errors)), title="Invalid settings")
    return gr.Error(escape.text(exc))


def _format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    return f"ETA {seconds // 60}:{seconds % 60:02d}"


def progress_html(snapshot: ProgressSnapshot) -> str:
    """A progress bar with step, batch and ETA, or the queue position while waiting."""
    if snapshot.queue_position > 0:
        text = f"Waiting in queue: position {snapshot.queue_position}"
        percent = 0.0
    else:
        percent = snapshot.fraction * 100
        parts = [f"{percent:.0f}%"]
        if snapshot.total_steps:
            parts.append(f"step {snapshot.step}/{snapshot.total_steps}")
        if snapshot.batch_count > 1:
            parts.append(f"batch {snapshot.batch_index + 1}/{snapshot.batch_count}")
        if eta := _format_eta(snapshot.eta_seconds):
            parts.append(eta)
        text = ", ".join(parts)
    return (f'<div class="atelier-progress"><div class="atelier-progress-bar" style="width:{percent:.1f}%"></div>'
            f'<span class="atelier-progress-text">{escape.text(text)}</span></div>')


def wait_for(job: Job, job_queue: JobQueueContract) -> Iterator[tuple[ProgressSnapshot, Any]]:
    """Yield (progress, preview) until the job ends; the caller then reads ``job.future``."""
    while True:
        try:
            job.future.result(timeout=POLL_SECONDS)
            return
        except FutureTimeout:
            yield job_queue.snapshot(job), job.context.preview()
        except Exception:  # the job failed; the caller reads the error from the future
            return


CSS = """
.atelier-progress { position: relative; height: 1.6em; border-radius: 6px; overflow: hidden;
  background: var(--block-background-fill); border: 1px solid var(--border-color-primary); }
.atelier-progress-bar { position: absolute; inset: 0 auto 0 0; background: var(--color-accent); opacity: .45; }
.atelier-progress-text { position: relative; padding-left: .6em; font-size: .9em; line-height: 1.6em; }
.generate-button { min-height: 4.5em; }
.tool-button { max-width: 3em; min-width: 3em !important; }
.token-counter { font-size: .8em; opacity: .75; text-align: right; min-height: 0 !important; }
.atelier-params { width: 100%; border-collapse: collapse; font-size: .9em; }
.atelier-params th { text-align: left; padding: .2em .6em .2em 0; white-space: nowrap; vertical-align: top; }
.atelier-params td { padding: .2em 0; word-break: break-word; }
"""


# Ctrl+Enter (Cmd+Enter) in a prompt box presses that tab's Generate, as in A1111; plain Enter
# keeps adding lines.
HEAD = """<script>
document.addEventListener("keydown", (event) => {
  if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey) || !event.target.closest) return;
  for (const tab of ["txt2img", "img2img", "inpaint"]) {
    if (event.target.closest(`#${tab}_prompt, #${tab}_neg_prompt`)) {
      event.preventDefault();
      document.querySelector(`#${tab}_generate`)?.click();
      return;
    }
  }
});
</script>"""
