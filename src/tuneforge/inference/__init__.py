"""Inference engines behind every front end (chat CLI, web chat, OpenAI-style API).

```python
from tuneforge.inference import load_engine
engine = load_engine(config)  # infer_backend: huggingface | vllm
answer = engine.chat([{"role": "user", "content": "hi"}], do_sample=False)[0].text
```

Modules: `engine` (the `Engine` interface, `Response`, `load_engine`), `generation` (per-call
generation settings and stop strings), `hf` (transformers), `vllm` (vLLM, an optional extra).
"""

from tuneforge.inference.engine import Engine, Response, load_engine

__all__ = ["Engine", "Response", "load_engine"]
