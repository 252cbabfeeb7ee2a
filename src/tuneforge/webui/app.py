"""The web workbench (`tuneforge webui`): a top bar for the model, and tabs to train,
evaluate, chat and export. Every run is a `tuneforge` subprocess on a YAML the page shows.

```python
workbench = create_app(saves_dir="saves")
workbench.blocks.queue().launch(css=STYLE)
workbench.registry.shutdown()  # the server is closing: stop running jobs cleanly
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuneforge.webui.arguments import values_from_keys
from tuneforge.webui.chat import import_gradio
from tuneforge.webui.chat_tab import EngineHolder, build_chat_tab
from tuneforge.webui.components import TITLE, Page
from tuneforge.webui.datasets import dataset_names
from tuneforge.webui.eval_tab import build_eval_tab
from tuneforge.webui.export_tab import build_export_tab
from tuneforge.webui.layout_top import build_top
from tuneforge.webui.locale import DEFAULT_LANGUAGE, text
from tuneforge.webui.paths import Saves, timestamped
from tuneforge.webui.runner import JobRegistry
from tuneforge.webui.train_tab import build_train_tab, restorable_fields

POLL_SECONDS = 2.0  # how often a page reads the running job's log files
TABS = (
    ("tab_train", "train"),
    ("tab_eval", "eval"),
    ("tab_chat", "chat"),
    ("tab_export", "export"),
)


# The progress bar of progress_html (monitor.py); passed to Blocks.launch(css=STYLE).
STYLE = """
.tf-progress { position: relative; height: 2.2em; border-radius: 6px; overflow: hidden;
  background: var(--block-background-fill); border: 1px solid var(--border-color-primary); }
.tf-progress-bar { position: absolute; inset: 0 auto 0 0; transition: width 0.5s;
  background: var(--color-accent-soft); }
.tf-progress-text { position: relative; line-height: 2.2em; padding: 0 0.8em;
  font-variant-numeric: tabular-nums; }
"""


def default_compute_type() -> str:
    """bf16 where the GPU has it, else fp16 on a GPU, fp32 on a CPU."""
    import torch

    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def header(lang: str) -> str:
    return f"## {text(lang, 'title')}\n{text(lang, 'subtitle')}"


@dataclass(frozen=True)
class Workbench:
    blocks: Any  # the gradio Blocks
    registry: JobRegistry  # its jobs: stop them when the server closes
    page: Page  # its components by name


def create_app(
    saves_dir: str | Path = "saves",
    registry: JobRegistry | None = None,
    lang: str = DEFAULT_LANGUAGE,
) -> Workbench:
    """Builds the page.

    Args:
        saves_dir: Where runs are listed from and written to (`<saves>/<model>/<method>/<run>`).
        registry: The jobs to show; a new one by default.
        lang: The language the page opens in.

    Returns:
        The page, its job registry and its components.
    """
    gr = import_gradio()
    registry = registry or JobRegistry()
    saves, holder, page = Saves(Path(saves_dir)), EngineHolder(), Page(lang)
    with gr.Blocks(title=text(lang, "title"), analytics_enabled=False) as app:
        page.add("header", gr.Markdown(header(lang)), None)
        build_top(page, saves)
        timer = gr.Timer(POLL_SECONDS)
        builders = {
            "train": lambda: build_train_tab(page, saves, registry, timer),
            "eval": lambda: build_eval_tab(page, saves, registry, timer),
            "chat": lambda: build_chat_tab(page, saves, holder),
            "export": lambda: build_export_tab(page, saves, registry, timer),
        }
        with gr.Tabs():
            for entry, name in TABS:
                with page.add(entry, gr.Tab(text(lang, entry), id=name), TITLE):
                    builders[name]()
        _wire_page(app, page, registry, saves)
    return Workbench(app, registry, page)


def _wire_page(app: Any, page: Page, registry: JobRegistry, saves: Saves) -> None:
    """Language switching, and the values a page starts with."""
    gr = import_gradio()
    labelled = page.labelled()
    page["lang"].change(
        lambda lang: [header(lang), *page.relabel(lang)],
        page["lang"],
        [page["header"], *labelled],
        queue=False,
    )
    names = [*restorable_fields(), "eval_output_dir", "eval_dataset", "yaml_preview"]
    names.append("command_preview")

    def opening_values(dataset_dir: str, stage: str, eval_dir: str) -> list[Any]:
        updates = opening_updates(registry, dataset_dir, stage, eval_dir, saves)
        return [gr.update(**updates.get(name, {})) for name in names]

    app.load(
        opening_values,
        [page["dataset_dir"], page["stage"], page["eval_dataset_dir"]],
        [page[name] for name in names],
        queue=False,
    )


def opening_updates(
    registry: JobRegistry,
    dataset_dir: str,
    stage: str,
    eval_dir: str,
    saves: Saves | None = None,
) -> dict[str, dict[str, Any]]:
    """Field name -> update for a page that (re)connects: fresh run names and the datasets
    on offer, or, while the server has a training job, that job's settings."""
    updates: dict[str, dict[str, Any]] = {
        "output_dir": {"value": timestamped("train")},
        "eval_output_dir": {"value": timestamped("eval")},
        "compute_type": {"value": default_compute_type()},
    }
    job = registry.latest("train")
    if job is not None and job.config_path.is_file():
        config_text = job.config_path.read_text(encoding="utf-8")
        restored = values_from_keys(yaml.safe_load(config_text) or {}, saves)
        restored |= {"yaml_preview": config_text, "command_preview": job.command_line}
        for name, value in restored.items():
            updates.setdefault(name, {})["value"] = value
        dataset_dir = restored.get("dataset_dir", dataset_dir)
        stage = restored.get("stage", stage)
    updates.setdefault("dataset", {})["choices"] = dataset_names(dataset_dir, stage)
    updates["eval_dataset"] = {"choices": dataset_names(eval_dir, "sft")}
    return updates
