"""The Train tab: the run's fields, a preview of its YAML and command, argument sets, Start and
Abort, and the running job's progress, log and loss curve."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from tuneforge.errors import UserError
from tuneforge.webui.arguments import to_yaml, train_keys, validate_yaml, values_from_keys
from tuneforge.webui.chat import import_gradio
from tuneforge.webui.components import TITLE, Page
from tuneforge.webui.datasets import dataset_names, preview_rows
from tuneforge.webui.locale import describe, text
from tuneforge.webui.monitor import job_records, loss_frame, progress_html, progress_of, read_tail
from tuneforge.webui.paths import Saves, check_existing, check_folder, timestamped
from tuneforge.webui.runner import JobRegistry, user_command
from tuneforge.webui.spec import form_spec

KIND = "train"
OUTPUT_FIELDS = ("output_dir", "output_path")  # laid out by hand, next to the argument sets
ARGS_FIELDS = ("args_path", "args_outside")


def form_names() -> list[str]:
    """The fields a training run is built from: the top bar's and the Train tab's."""
    spec = form_spec()
    return [*spec.names("top"), *spec.names("train"), *OUTPUT_FIELDS, *ARGS_FIELDS]


def restorable_fields() -> list[str]:
    """The fields an argument set (a training YAML) fills in."""
    return [name for name in form_names() if name != "lang" and name not in ARGS_FIELDS]


def planned_run(values: dict[str, Any], saves: Saves) -> tuple[str, str, Path]:
    """The YAML text, command and output dir of the run the fields describe."""
    keys = train_keys(values, saves)
    output_dir = check_folder(Path(keys["output_dir"]))  # a run name or output path (paths.py)
    command = shlex.join(user_command(KIND, output_dir / f"webui_{KIND}.yaml"))
    return to_yaml(keys, command), command, output_dir


def check_run(values: dict[str, Any], saves: Saves) -> tuple[str, str, Path | None, str]:
    """(YAML, command, output dir, status line); the output dir is None when it cannot run.
    What is validated is the YAML text itself, as `tuneforge train` will read it."""
    lang = values["lang"]
    try:
        config_text, command, output_dir = planned_run(values, saves)
    except UserError as error:
        return "", "", None, text(lang, "msg_invalid", error=describe(error, lang))
    try:
        validate_yaml(config_text)
    except UserError as error:
        return config_text, command, None, text(lang, "msg_invalid", error=describe(error, lang))
    return config_text, command, output_dir, text(lang, "msg_valid")


def build_train_tab(page: Page, saves: Saves, registry: JobRegistry, timer: Any) -> None:
    gr = import_gradio()
    spec = form_spec()
    page.fields(spec.layout["train"])
    with gr.Row():
        page.button("preview_data_btn", size="sm")
    page.add("data_preview", gr.JSON(label=text(page.lang, "data_preview"), visible=False))
    defaults = {name: field.default for name, field in spec.fields.items()}
    for name, panel in spec.panels.items():
        accordion = gr.Accordion(text(page.lang, name), visible=panel.applies(defaults))
        with page.add(name, accordion, TITLE):
            page.fields(panel.rows)
    with gr.Row():
        page.field("output_dir", scale=2)
        page.field("output_path", scale=2)
    with gr.Row():
        page.field("args_path", scale=2)
        page.field("args_outside")
        page.button("save_args_btn")
        page.button("load_args_btn")
    with gr.Row():
        page.button("preview_btn")
        page.button("start_btn", variant="primary", elem_id="tf-start")
        page.button("abort_btn", variant="stop", elem_id="tf-abort")
    page.add("status", gr.Markdown(elem_id="tf-train-status"), None)
    page.add("progress", gr.HTML(progress_html(None, None, page.lang), elem_id="tf-progress"), None)
    with gr.Row():
        with gr.Column(scale=3):
            lines = {"lines": 14, "max_lines": 14, "autoscroll": True, "interactive": False}
            page.add("log", gr.Textbox(label=text(page.lang, "log"), elem_id="tf-log", **lines))
        with gr.Column(scale=2):
            plot = gr.LinePlot(
                x="step",
                y="loss",
                color="series",
                label=text(page.lang, "loss_plot"),
                visible=False,
                elem_id="tf-loss-plot",
            )
            page.add("loss_plot", plot)
    with gr.Row():
        yaml_box = gr.Code(
            label=text(page.lang, "yaml_preview"), language="yaml", elem_id="tf-yaml"
        )
        page.add("yaml_preview", yaml_box)
        command = gr.Textbox(label=text(page.lang, "command_preview"), elem_id="tf-command")
        page.add("command_preview", command)
    _wire_fields(page, saves)
    _wire_actions(page, saves, registry)
    _wire_monitor(page, registry, timer)


def _wire_fields(page: Page, saves: Saves) -> None:
    """Datasets of the chosen dir and stage, their preview rows, panels for the method."""
    gr = import_gradio()
    spec = form_spec()
    dataset_dir, stage, dataset = page["dataset_dir"], page["stage"], page["dataset"]

    def datasets(folder: str, stage_name: str) -> Any:
        return gr.update(choices=dataset_names(folder, stage_name))

    gr.on([dataset_dir.change, stage.change], datasets, [dataset_dir, stage], dataset, queue=False)

    def show_rows(lang: str, folder: str, names: list[str]) -> tuple[Any, str]:
        try:
            return gr.update(value=preview_rows(folder, names), visible=True), ""
        except UserError as error:
            return gr.update(visible=False), text(lang, "msg_invalid", error=describe(error, lang))

    page["preview_data_btn"].click(
        show_rows, [page["lang"], dataset_dir, dataset], [page["data_preview"], page["status"]]
    )
    panels = list(spec.panels.values())

    def visibility(method: str, stage_name: str) -> list[Any]:
        values = {"finetuning_type": method, "stage": stage_name}
        return [gr.update(visible=panel.applies(values)) for panel in panels]

    gr.on(
        [page["finetuning_type"].change, stage.change],
        visibility,
        [page["finetuning_type"], stage],
        [page[panel.name] for panel in panels],
        queue=False,
    )


def _wire_actions(page: Page, saves: Saves, registry: JobRegistry) -> None:
    """Preview, Start, Abort, and saving / loading argument sets."""
    names = form_names()
    inputs = page.inputs(names)
    shown = [page["yaml_preview"], page["command_preview"], page["status"]]

    def preview(data: dict[Any, Any]) -> tuple[str, str, str]:
        config_text, command, _, status = check_run(page.values(data), saves)
        return config_text, command, status

    def start(data: dict[Any, Any]) -> tuple[str, str, str]:
        values = page.values(data)
        config_text, command, output_dir, status = check_run(values, saves)
        if output_dir is not None:
            try:
                registry.start(KIND, KIND, config_text, output_dir, output_dir)
                status = text(values["lang"], "msg_started", command=command)
            except UserError as error:
                status = describe(error, values["lang"])
        return config_text, command, status

    def abort(lang: str) -> str:
        job = registry.latest(KIND)
        return text(lang, "msg_abort_sent" if job and job.abort() else "msg_nothing_to_abort")

    page["preview_btn"].click(preview, inputs, shown)
    page["start_btn"].click(start, inputs, shown)
    page["abort_btn"].click(abort, page["lang"], page["status"])
    _wire_argument_sets(page, saves, names, inputs)


def _wire_argument_sets(page: Page, saves: Saves, names: list[str], inputs: set[Any]) -> None:
    gr = import_gradio()
    loadable = restorable_fields()

    def args_file(values: dict[str, Any], default: str = "") -> Path:
        typed = str(values.get("args_path") or "").strip() or default
        return saves.args_path(typed, allow_outside=bool(values.get("args_outside")))

    def save(data: dict[Any, Any]) -> str:
        values = page.values(data)
        lang = values["lang"]
        try:
            path = args_file(values, timestamped(KIND))
            config_text, _, _ = planned_run(values, saves)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(config_text, encoding="utf-8")
        except (UserError, OSError) as error:
            return text(lang, "msg_invalid", error=describe(error, lang))
        return text(lang, "msg_saved_args", path=path)

    def load(data: dict[Any, Any]) -> list[Any]:
        from tuneforge.config.loader import read_config_file

        values = page.values(data)
        lang = values["lang"]
        try:
            path = check_existing(args_file(values), "what_args")
            loaded = values_from_keys(read_config_file(path), saves)
        except UserError as error:
            status = text(lang, "msg_invalid", error=describe(error, lang))
            return [gr.skip() for _ in loadable] + [status]
        updates = [gr.update(value=loaded[n]) if n in loaded else gr.skip() for n in loadable]
        return [*updates, text(lang, "msg_loaded_args", path=path)]

    page["save_args_btn"].click(save, inputs, page["status"])
    page["load_args_btn"].click(load, inputs, [*(page[n] for n in loadable), page["status"]])


def _wire_monitor(page: Page, registry: JobRegistry, timer: Any) -> None:
    """Every tick: the train job's progress; its log and loss curve when they have grown."""
    gr = import_gradio()
    seen = gr.State(None)

    def tick(lang: str, last: Any) -> tuple[Any, ...]:
        job = registry.latest(KIND)
        if job is None:
            return progress_html(None, None, lang), gr.skip(), gr.skip(), last
        records = job_records(job)
        bar = progress_html(job, progress_of(records), lang)
        size = job.log_path.stat().st_size if job.log_path.is_file() else 0
        marker = (job.started_at, len(records), size, job.returncode, lang)
        if marker == last:
            return bar, gr.skip(), gr.skip(), last
        frame = loss_frame(records, lang)
        plot = gr.update(value=frame, visible=not frame.empty)
        return bar, read_tail(job.log_path), plot, marker

    timer.tick(
        tick,
        [page["lang"], seen],
        [page["progress"], page["log"], page["loss_plot"], seen],
        show_progress="hidden",
        concurrency_limit=None,
    )
