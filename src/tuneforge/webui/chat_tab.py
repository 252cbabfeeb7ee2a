"""The Chat tab: load the top bar's model (with the chosen checkpoint) into an inference
engine, then chat with it through the chat block `tuneforge webchat` shows."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tuneforge.errors import UserError
from tuneforge.webui.arguments import chat_keys, validate
from tuneforge.webui.chat import chat_block, import_gradio
from tuneforge.webui.components import VALUE, Page
from tuneforge.webui.locale import FormError, describe, text
from tuneforge.webui.paths import Saves
from tuneforge.webui.spec import form_spec

if TYPE_CHECKING:
    from tuneforge.config.loader import Config

CHAT_BUTTONS = ("send", "clear")


class EngineHolder:
    """The server's one loaded engine (shared by every browser, like the device it runs on)."""

    def __init__(self) -> None:
        self._engine: Any = None
        self._lock = threading.Lock()

    def load(self, config: Config) -> None:
        """Replaces the loaded engine (if any) by one for `config`."""
        from tuneforge.inference import load_engine

        with self._lock:
            self._close()
            self._engine = load_engine(config)

    def unload(self) -> None:
        with self._lock:
            self._close()

    def get(self) -> Any:
        """The loaded engine; a FormError when none is."""
        engine = self._engine
        if engine is None:
            raise FormError("msg_no_model_loaded")
        return engine

    def _close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def build_chat_tab(page: Page, saves: Saves, holder: EngineHolder) -> None:
    gr = import_gradio()
    page.fields(form_spec().layout["chat"])
    with gr.Row():
        page.button("load_model_btn", variant="primary", elem_id="tf-load-model")
        page.button("unload_model_btn", elem_id="tf-unload-model")
    status = gr.Markdown(text(page.lang, "msg_model_unloaded"), elem_id="tf-model-status")
    page.add("model_status", status, None)
    for name, component in chat_block(holder.get).items():
        how = VALUE if name in CHAT_BUTTONS else None if name == "history" else "label"
        page.add(f"chat_{name}", component, how)

    names = [*form_spec().names("top"), *form_spec().names("chat")]

    def load(data: dict[Any, Any]) -> Iterator[str]:
        values = page.values(data)
        lang = values["lang"]
        yield text(lang, "msg_loading_model")
        try:
            keys = chat_keys(values, saves)
            holder.load(validate(keys))
        except UserError as error:
            yield text(lang, "msg_invalid", error=describe(error, lang))
            return
        adapters = keys.get("adapter_name_or_path")
        plus = f"+ {adapters.replace(',', ', ')}" if adapters else ""
        yield text(lang, "msg_model_loaded", model=keys["model_name_or_path"], adapters=plus)

    def unload(lang: str) -> str:
        holder.unload()
        return text(lang, "msg_model_unloaded")

    page["load_model_btn"].click(load, page.inputs(names), status)
    page["unload_model_btn"].click(unload, page["lang"], status)
