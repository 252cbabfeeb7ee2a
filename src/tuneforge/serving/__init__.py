"""The OpenAI-compatible API server (`tuneforge api`), built on `tuneforge.inference` only.

```python
from tuneforge.serving.app import create_app
app = create_app(engine, "my-model", api_key="sk-...")  # serve with uvicorn
```

Modules: `protocol` (request and response bodies in OpenAI's shapes, what is refused),
`messages` (OpenAI messages -> the engine's conversation), `tools` (tools and tool calls <->
the template's tool format), `chat` (completions and streaming on the engine), `app` (the
FastAPI app: routes, auth, limits, errors). FastAPI and uvicorn come with the `api` extra.
"""
