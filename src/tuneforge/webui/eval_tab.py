"""The Evaluate & Predict tab: `tuneforge train` with do_predict and predict_with_generate on
the chosen datasets, for the top bar's model and checkpoint; shows BLEU-4 / ROUGE and a
sample of the generated predictions."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from tuneforge.errors import UserError
from tuneforge.webui.arguments import predict_keys, to_yaml, validate_yaml
from tuneforge.webui.chat import import_gradio
from tuneforge.webui.components import VALUE, Page
from tuneforge.webui.datasets import dataset_names
from tuneforge.webui.locale import describe, text
from tuneforge.webui.monitor import predict_scores, progress_html, read_tail, sample_predictions
from tuneforge.webui.paths import Saves, check_folder
from tuneforge.webui.runner import JobRegistry, user_command
from tuneforge.webui.spec import form_spec

KIND = "predict"
COLUMNS = ("predict", "label", "prompt")


def build_eval_tab(page: Page, saves: Saves, registry: JobRegistry, timer: Any) -> None:
    gr = import_gradio()
    page.fields(form_spec().layout["eval"])
    with gr.Row():
        page.button("predict_btn", variant="primary", elem_id="tf-predict")
        abort = gr.Button(text(page.lang, "abort_btn"), variant="stop")
        page.add("eval_abort_btn", abort, VALUE, entry="abort_btn")
    page.add("eval_status", gr.Markdown(elem_id="tf-eval-status"), None)
    bar = gr.HTML(progress_html(None, None, page.lang), elem_id="tf-eval-progress")
    page.add("eval_progress", bar, None)
    with gr.Row():
        metrics = gr.JSON(label=text(page.lang, "metrics"), elem_id="tf-metrics")
        page.add("metrics", metrics)
        lines = {"lines": 10, "max_lines": 10, "autoscroll": True, "interactive": False}
        page.add("eval_log", gr.Textbox(label=text(page.lang, "log"), **lines), entry="log")
    table = gr.Dataframe(
        headers=list(COLUMNS),
        label=text(page.lang, "predictions"),
        wrap=True,
        column_widths=["30%", "30%", "40%"],
        elem_id="tf-predictions",
    )
    page.add("predictions", table)

    folder, chosen = page["eval_dataset_dir"], page["eval_dataset"]
    folder.change(lambda d: gr.update(choices=dataset_names(d, "sft")), folder, chosen)
    _wire_actions(page, saves, registry)
    _wire_monitor(page, registry, timer)


def _wire_actions(page: Page, saves: Saves, registry: JobRegistry) -> None:
    spec = form_spec()
    names = [*spec.names("top"), *spec.names("eval")]

    def start(data: dict[Any, Any]) -> str:
        values = page.values(data)
        lang = values["lang"]
        try:
            keys = predict_keys(values, saves)
            output_dir = check_folder(Path(keys["output_dir"]))
            command = shlex.join(user_command("train", output_dir / f"webui_{KIND}.yaml"))
            config_text = to_yaml(keys, command)
            validate_yaml(config_text)
            registry.start(KIND, "train", config_text, output_dir, output_dir)
        except UserError as error:
            return text(lang, "msg_invalid", error=describe(error, lang))
        return text(lang, "msg_started", command=command)

    def abort(lang: str) -> str:
        job = registry.latest(KIND)
        return text(lang, "msg_abort_sent" if job and job.abort() else "msg_nothing_to_abort")

    page["predict_btn"].click(start, page.inputs(names), page["eval_status"])
    page["eval_abort_btn"].click(abort, page["lang"], page["eval_status"])


def _wire_monitor(page: Page, registry: JobRegistry, timer: Any) -> None:
    """Every tick: the prediction job's state; its log, scores and predictions when new."""
    gr = import_gradio()
    seen = gr.State(None)

    def tick(lang: str, last: Any) -> tuple[Any, ...]:
        job = registry.latest(KIND)
        if job is None:
            return progress_html(None, None, lang), gr.skip(), gr.skip(), gr.skip(), last
        bar = progress_html(job, None, lang)
        size = job.log_path.stat().st_size if job.log_path.is_file() else 0
        marker = (job.started_at, size, job.returncode)
        if marker == last:
            return bar, gr.skip(), gr.skip(), gr.skip(), last
        scores, rows = {}, []
        if job.returncode == 0:
            scores = predict_scores(job.output_dir)
            rows = [
                [record.get(c, "") for c in COLUMNS]
                for record in sample_predictions(job.output_dir)
            ]
        return bar, read_tail(job.log_path), scores, rows, marker

    timer.tick(
        tick,
        [page["lang"], seen],
        [page["eval_progress"], page["eval_log"], page["metrics"], page["predictions"], seen],
        show_progress="hidden",
        concurrency_limit=None,
    )
