"""Chat templates: turn a conversation into prompt text and trained response spans.

```python
from tuneforge.templates import get_template
template = get_template("qwen3", tokenizer)
turns = template.render(messages, system="...", tools=tools_json)  # list[TurnText]
prompt = template.render_prompt(messages)  # ends with the generation prompt
```

Modules: `base` (the `Template` type and the rendering rules, thinking included), `catalog` (every
named template as data), `registry` (`get_template`, `TEMPLATES`, `all_special_tokens`), `tools`
(tool-call formats), `jinja` (the equivalent HF chat_template), `auto` (the tokenizer's own
chat_template). Nothing here imports torch; transformers is never imported (`auto` only calls the
tokenizer it is given).
"""

from tuneforge.templates.base import ChatTemplate, Template, TurnText
from tuneforge.templates.registry import (
    TEMPLATES,
    all_special_tokens,
    get_template,
    template_for,
    template_names,
)
from tuneforge.templates.tools import TOOL_FORMATS, ToolFormat, get_tool_format

__all__ = [
    "TEMPLATES",
    "TOOL_FORMATS",
    "ChatTemplate",
    "Template",
    "ToolFormat",
    "TurnText",
    "all_special_tokens",
    "get_template",
    "get_tool_format",
    "template_for",
    "template_names",
]
