"""The Export tab: `tuneforge export` of the top bar's model and checkpoint into export_dir,
as a subprocess like training, and where the export went."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from tuneforge.errors import UserError
from tuneforge.webui.arguments import export_keys, to_yaml, validate_yaml
from tuneforge.webui.chat import import_gradio
from tuneforge.webui.components import Page
from tuneforge.webui.locale import describe, text
from tuneforge.webui.monitor import job_message, read_tail
from tuneforge.webui.paths import Saves
from tuneforge.webui.runner import JobRegistry, user_command
from tuneforge.webui.spec import form_spec

KIND = "export"


def build_export_tab(page: Page, saves: Saves, registry: JobRegistry, timer: Any) -> None:
    gr = import_gradio()
    page.fields(form_spec().layout["export"])
    page.button("export_btn", variant="primary", elem_id="tf-export")
    page.add("export_status", gr.Markdown(elem_id="tf-export-status"), None)
    lines = {"lines": 10, "max_lines": 10, "autoscroll": True, "interactive": False}
    page.add("export_log", gr.Textbox(label=text(page.lang, "log"), **lines), entry="log")
    names = [*form_spec().names("top"), *form_spec().names("export")]

    def start(data: dict[Any, Any]) -> str:
        from tuneforge.export.save import check_export_dir

        values = page.values(data)
        lang = values["lang"]
        try:
            keys = export_keys(values, saves)
            target = check_export_dir(keys.get("export_dir"))
            job_dir = saves.job_dir(KIND)
            command = shlex.join(user_command(KIND, job_dir / f"webui_{KIND}.yaml"))
            config_text = to_yaml(keys, command)
            validate_yaml(config_text)
            registry.start(KIND, KIND, config_text, job_dir, Path(target))
        except UserError as error:
            return text(lang, "msg_invalid", error=describe(error, lang))
        return text(lang, "msg_started", command=command)

    page["export_btn"].click(start, page.inputs(names), page["export_status"])
    seen = gr.State(None)

    def tick(lang: str, last: Any) -> tuple[Any, ...]:
        job = registry.latest(KIND)
        if job is None:
            return gr.skip(), gr.skip(), last
        size = job.log_path.stat().st_size if job.log_path.is_file() else 0
        marker = (job.started_at, size, job.returncode, lang)
        if marker == last:
            return gr.skip(), gr.skip(), last
        done = job.returncode == 0
        message = text(lang, "msg_exported", path=job.output_dir) if done else None
        return message or job_message(job, None, lang), read_tail(job.log_path), marker

    timer.tick(
        tick,
        [page["lang"], seen],
        [page["export_status"], page["export_log"], seen],
        show_progress="hidden",
        concurrency_limit=None,
    )
