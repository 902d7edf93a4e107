"""The workers panel: which workers run jobs, where, on what, holding which model, busy or idle.

An accordion under the tabs, refreshed every few seconds while the page is open; one row for the
in-process worker, or one per Ray worker when jobs run on a cluster (``--ray-address``).
"""

from __future__ import annotations

import gradio as gr

from modules.services.container import Services
from modules.services.queue_contract import QueueMode

HEADERS = ["Worker", "Host", "Device", "Model", "State", "Jobs done"]
REFRESH_SECONDS = 3.0
COLUMN_WIDTHS = ["14%", "14%", "22%", "22%", "18%", "10%"]  # fits the page: long names wrap, no sideways scroll


def rows(services: Services) -> list[list[object]]:
    return [[w.name, w.host, w.device, w.model or "—", w.state.value + (f" ({w.job_id})" if w.job_id else ""),
             w.jobs_done] for w in services.queue.workers()]


def summary(services: Services) -> str:
    workers = services.queue.workers()
    if services.queue.mode is QueueMode.LOCAL:
        return "Jobs run in this process, one at a time."
    if not workers:
        return ("No worker has joined yet: start one on each GPU host with "
                "`python app.py worker --join HOST:PORT` (see docs/scale-out.md). Jobs wait until one joins.")
    busy = sum(1 for w in workers if w.job_id)
    return f"{len(workers)} worker(s) on Ray, {busy} busy; {services.queue.pending_count()} job(s) waiting."


def build_panel(services: Services) -> None:
    with gr.Accordion("Workers", open=False, elem_id="workers_panel"):
        text = gr.Markdown(summary(services), elem_id="workers_summary")
        table = gr.Dataframe(value=rows(services), headers=HEADERS, interactive=False, elem_id="workers_table",
                             wrap=True, column_widths=COLUMN_WIDTHS, elem_classes="atelier-dataframe")

    def refresh() -> tuple[str, list[list[object]]]:
        return summary(services), rows(services)

    gr.Timer(REFRESH_SECONDS).tick(refresh, outputs=[text, table], show_progress="hidden", api_visibility="private",
                                   queue=False)
