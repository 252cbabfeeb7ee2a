"""Gradio widgets built from form.yaml, and the page's registry of them: every component is
added under a name, so that handlers read values by field name and a change of language can
relabel everything at once."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tuneforge.webui.chat import import_gradio
from tuneforge.webui.locale import info, label, text
from tuneforge.webui.spec import Field, choices_of, form_spec

# How a component shows its locale entry: label (+ info), its value (buttons, markdown), or a
# tab's or accordion's label.
LABEL, VALUE, TITLE = "label", "value", "title"


class Page:
    """The components of the page by name, and how each is labelled."""

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self.components: dict[str, Any] = {}
        self._labelled: list[tuple[str, Any, str]] = []  # (locale entry, component, how)

    def add(self, name: str, component: Any, how: str | None = LABEL, entry: str | None = None):
        """Registers `component` as `name`; `how` says how its locale entry (`entry`, default
        the name) labels it, None for a component without text."""
        self.components[name] = component
        if how is not None:
            self._labelled.append((entry or name, component, how))
        return component

    def __getitem__(self, name: str) -> Any:
        return self.components[name]

    def field(self, name: str, **overrides: Any) -> Any:
        """The widget of a form.yaml field, labelled in the page's language."""
        if name == "lang":  # the language picker opens on the page's language
            overrides.setdefault("value", self.lang)
        return self.add(name, make_widget(form_spec().fields[name], self.lang, **overrides))

    def fields(self, rows: Iterable[Iterable[str]]) -> None:
        """Fields laid out in rows."""
        gr = import_gradio()
        for row in rows:
            with gr.Row():
                for name in row:
                    self.field(name)

    def button(self, name: str, **kwargs: Any) -> Any:
        gr = import_gradio()
        return self.add(name, gr.Button(text(self.lang, name), **kwargs), VALUE)

    def inputs(self, names: Iterable[str] | None = None) -> set[Any]:
        """Components to pass as a set: the handler then gets {component: value}."""
        names = self.components if names is None else names
        return {self.components[name] for name in names}

    def values(self, data: dict[Any, Any]) -> dict[str, Any]:
        """{component: value} from gradio as {name: value}."""
        names = {id(component): name for name, component in self.components.items()}
        return {names[id(component)]: value for component, value in data.items()}

    def labelled(self) -> list[Any]:
        return [component for _, component, _ in self._labelled]

    def relabel(self, lang: str) -> list[Any]:
        """Updates for `labelled()` that show the page in `lang`."""
        gr = import_gradio()
        updates = []
        for entry, _, how in self._labelled:
            if how == LABEL:
                help_line = info(lang, entry)
                extra = {"info": help_line} if help_line else {}
                updates.append(gr.update(label=label(lang, entry), **extra))
            elif how == VALUE:
                updates.append(gr.update(value=text(lang, entry)))
            else:
                updates.append(gr.update(label=text(lang, entry)))
        return updates


def make_widget(spec: Field, lang: str, **overrides: Any) -> Any:
    """A gradio component for one field, with its label and help in `lang`."""
    gr = import_gradio()
    common: dict[str, Any] = {"label": label(lang, spec.name), "info": info(lang, spec.name)}
    common |= {"elem_id": f"tf-{spec.name}", "interactive": True}
    if spec.widget in ("dropdown", "multiselect"):
        multiselect = spec.widget == "multiselect"
        kwargs = common | {"choices": choices_of(spec), "value": spec.default}
        kwargs |= {"allow_custom_value": spec.custom, "multiselect": multiselect}
        return gr.Dropdown(**(kwargs | overrides))
    if spec.widget == "textbox":
        return gr.Textbox(**(common | {"value": str(spec.default)} | overrides))
    if spec.widget == "number":
        kwargs = common | {"value": spec.default, "minimum": spec.min, "maximum": spec.max}
        return gr.Number(**(kwargs | {"precision": 0 if spec.type == "int" else None} | overrides))
    if spec.widget == "slider":
        kwargs = common | {"value": spec.default, "step": spec.step}
        return gr.Slider(spec.min, spec.max, **(kwargs | overrides))
    if spec.widget == "checkbox":
        return gr.Checkbox(**(common | {"value": bool(spec.default)} | overrides))
    raise ValueError(f"form.yaml: field {spec.name} has an unknown widget {spec.widget!r}")
