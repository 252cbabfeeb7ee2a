"""The top bar: language, model, method, checkpoint, template and the model's run-time
options. Every tab reads its values."""

from __future__ import annotations

from typing import Any

from tuneforge.webui.arguments import model_folder
from tuneforge.webui.chat import import_gradio
from tuneforge.webui.components import Page
from tuneforge.webui.models import hub_id, suggested_template
from tuneforge.webui.paths import Saves
from tuneforge.webui.spec import form_spec


def build_top(page: Page, saves: Saves) -> None:
    """Adds the top bar's fields and wires the model name to its path, template and runs."""
    gr = import_gradio()
    page.fields(form_spec().layout["top"])
    model_name, model_path = page["model_name"], page["model_name_or_path"]
    method, checkpoint = page["finetuning_type"], page["checkpoint"]

    def pick_model(name: str, path: str) -> tuple[Any, Any]:
        template = suggested_template(name or "")
        return (
            hub_id(name or "") or path,
            template if template else gr.skip(),
        )

    def guess_template(name: str, path: str, current: str) -> Any:
        # a template chosen (or loaded) already is the user's: only the default is replaced
        if name or current != form_spec().fields["template"].default:
            return gr.skip()
        return suggested_template(path or "") or gr.skip()

    def runs(name: str, path: str, finetuning_type: str, **update: Any) -> Any:
        values = {"model_name": name, "model_name_or_path": path or ""}
        folder = model_folder(values).strip()
        found = saves.runs(folder, finetuning_type) if folder else []
        return gr.update(choices=found, **update)

    names = [model_name, model_path]
    model_name.change(pick_model, names, [model_path, page["template"]], queue=False)
    template = page["template"]
    model_path.change(guess_template, [*names, template], template, queue=False)
    checkpoint.focus(runs, [*names, method], checkpoint, queue=False)
    # runs belong to a model and a method: a change of either empties the choice
    gr.on(
        [model_name.change, model_path.change, method.change],
        lambda *args: runs(*args, value=[]),
        [*names, method],
        checkpoint,
        queue=False,
    )
