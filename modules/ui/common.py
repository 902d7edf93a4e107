"""Small pieces every tab shares: turning service errors into UI errors, and progress display."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import gradio as gr

from modules.errors import AtelierError, ValidationError
from modules.services.job_types import Job, ProgressSnapshot
from modules.services.queue_contract import JobQueueContract
from modules.ui import escape, icons

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
        else:  # no steps to count (a remote model's call): the time it has taken so far
            parts = [f"{snapshot.elapsed_seconds:.0f} s elapsed"]
        if snapshot.batch_count > 1:
            parts.append(f"batch {snapshot.batch_index + 1}/{snapshot.batch_count}")
        if snapshot.part_of is not None:  # a script's jobs, e.g. an X/Y/Z plot's cells
            parts.append("image {} of {}".format(*snapshot.part_of))
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


# One look for every table on the page: Gradio's Dataframes and the tables in HTML/Markdown blocks
# (workers, extensions): thin borders, bold headers, even padding, long text wrapping in its cell
# rather than widening the table (no sideways scrolling).
TABLE_CSS = """
table.atelier-table, .prose table { width: 100%; border-collapse: collapse; table-layout: auto; font-size: .9em; }
table.atelier-table th, table.atelier-table td, .prose table th, .prose table td, .atelier-dataframe th,
.atelier-dataframe td { border: 1px solid var(--border-color-primary); padding: .35em .6em; text-align: left;
  vertical-align: top; white-space: normal; overflow-wrap: anywhere; }
table.atelier-table th, .prose table th, .atelier-dataframe th { font-weight: 600;
  background: var(--table-even-background-fill); }
.atelier-dataframe, .atelier-dataframe .table-wrap { overflow-x: hidden !important; }
.atelier-dataframe table { table-layout: fixed; width: 100% !important; }
.atelier-dataframe .cell-wrap, .atelier-dataframe td span { white-space: normal !important; overflow-wrap: anywhere; }
"""

SETTINGS_CSS = """
#quicksettings { align-items: flex-end; gap: .5em; }
.settings-row { gap: 0 !important; }
.settings-error { color: var(--error-text-color, #b91c1c); font-size: .9em; min-height: 0 !important; }
#settings_result { min-height: 1.5em; }
"""

CSS = """
.atelier-progress { position: relative; height: 1.6em; border-radius: 6px; overflow: hidden;
  background: var(--block-background-fill); border: 1px solid var(--border-color-primary); }
.atelier-progress-bar { position: absolute; inset: 0 auto 0 0; background: var(--color-accent); opacity: .45; }
.atelier-progress-text { position: relative; padding-left: .6em; font-size: .9em; line-height: 1.6em; }
.generate-button { min-height: 4.5em; }
.output-gallery, .output-gallery .grid-wrap { height: auto !important; max-height: none !important; }
.job-queue-row { font-size: .9em; padding: .1em 0; }
.confirm-box { border: 1px solid var(--color-accent); }
.tool-button { max-width: 3em; min-width: 3em !important; }
.token-counter { font-size: .95em; font-weight: 600; color: var(--body-text-color); text-align: right;
  min-height: 0 !important; }
.token-counter span { padding: .1em .5em; border-radius: 6px; border: 1px solid var(--border-color-primary);
  background: var(--background-fill-secondary); }
#gallery_images .caption-label { white-space: normal; overflow-wrap: anywhere; max-width: calc(100% - 8px); }
.atelier-params { width: 100%; border-collapse: collapse; font-size: .9em; }
.atelier-params th { text-align: left; padding: .2em .6em .2em 0; white-space: nowrap; vertical-align: top; }
.atelier-params td { padding: .2em 0; word-break: break-word; }
""" + TABLE_CSS + SETTINGS_CSS


# Ctrl+Enter (Cmd+Enter) in a prompt box presses that tab's Generate, as in A1111; plain Enter
# keeps adding lines. Glyph buttons get their tooltips (modules.ui.icons).
HEAD = icons.tooltip_script() + """<script>
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
