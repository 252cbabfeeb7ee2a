"""`tuneforge api CONFIG [key=value ...]`: serve the config's model behind an OpenAI-style API.

Environment variables (LLaMA-Factory's names):
  API_HOST                 interface to listen on (default 127.0.0.1, this machine only;
                           LLaMA-Factory listens on 0.0.0.0: set API_HOST=0.0.0.0 to be reachable
                           from other machines, and then set API_KEY too)
  API_PORT                 port (default 8000)
  API_KEY                  when set, requests need `Authorization: Bearer <API_KEY>`
  API_MODEL_NAME           the model id clients send (default: the last part of
                           model_name_or_path)
  API_MAX_TOKENS           the most tokens one reply may ask for (default: the config's
                           max_new_tokens, or max_length when max_new_tokens <= 0)
  API_MAX_REQUEST_BYTES    the largest request body accepted (default 1048576)
  API_MAX_CONCURRENT       requests decoding at once, in one batch (default 16)
  API_MAX_QUEUE            requests waiting for a place (default 64); beyond both, a request
                           gets 429 with Retry-After at once
  API_STRICT_MODEL_NAME    1: answer 404 to a request for another model than API_MODEL_NAME
                           (OpenAI's behaviour; also `--strict-model-name`). By default any name
                           is served by the model, as LLaMA-Factory does

SIGTERM or SIGINT stops the server gracefully: no new connections, every answer being generated
ends at its next token (its stream gets a final chunk and [DONE]), then the process exits.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING

from tuneforge.cli.common import add_config_arguments
from tuneforge.inference.engine import Limits

if TYPE_CHECKING:
    from tuneforge.config.loader import Config

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_REQUEST_BYTES = 1 << 20


@dataclass(frozen=True)
class ServerSettings:
    """What the environment says about the server (see the module docstring)."""

    host: str
    port: int
    api_key: str | None
    model_name: str
    max_tokens: int | None
    max_request_bytes: int
    max_concurrent: int = Limits.max_concurrent
    max_queue: int = Limits.max_queue
    strict_model_name: bool = False

    @property
    def limits(self) -> Limits:
        return Limits(self.max_concurrent, self.max_queue)


TRUE = ("1", "true", "yes", "on")
FALSE = ("", "0", "false", "no", "off")


def _bool_variable(environ: Mapping[str, str], name: str) -> bool:
    from tuneforge.errors import ConfigError

    raw = environ.get(name, "").strip().lower()
    if raw not in TRUE + FALSE:
        raise ConfigError(f"environment variable {name}={raw!r} must be 1 or 0 (true or false)")
    return raw in TRUE


def _int_variable(environ: Mapping[str, str], name: str, default: int | None, low: int):
    from tuneforge.errors import ConfigError

    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} must be an integer") from None
    if value < low:
        raise ConfigError(f"environment variable {name}={raw!r} must be >= {low}")
    return value


def server_settings(environ: Mapping[str, str], config: Config) -> ServerSettings:
    """Read API_* variables, with defaults from the config.

    Args:
        environ: The environment (`os.environ`).
        config: The tuneforge Config being served.

    Returns:
        The settings.

    Raises:
        ConfigError: a variable is not a valid number or port.
    """
    generation = config.generation
    default_limit = (
        generation.max_new_tokens if generation.max_new_tokens > 0 else generation.max_length
    )
    model_path = config.model.model_name_or_path or "model"
    port = _int_variable(environ, "API_PORT", DEFAULT_PORT, 0)
    if port > 65535:
        from tuneforge.errors import ConfigError

        raise ConfigError(f"environment variable API_PORT={port} is not a port (0-65535)")
    return ServerSettings(
        host=environ.get("API_HOST", "").strip() or DEFAULT_HOST,
        port=port,
        api_key=environ.get("API_KEY") or None,
        model_name=environ.get("API_MODEL_NAME", "").strip() or PurePath(model_path).name,
        max_tokens=_int_variable(environ, "API_MAX_TOKENS", default_limit, 1),
        max_request_bytes=_int_variable(
            environ, "API_MAX_REQUEST_BYTES", DEFAULT_MAX_REQUEST_BYTES, 1
        ),
        max_concurrent=_int_variable(environ, "API_MAX_CONCURRENT", Limits.max_concurrent, 1),
        max_queue=_int_variable(environ, "API_MAX_QUEUE", Limits.max_queue, 0),
        strict_model_name=_bool_variable(environ, "API_STRICT_MODEL_NAME"),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--strict-model-name",
        action="store_true",
        help="answer 404 to a request naming another model (API_STRICT_MODEL_NAME=1)",
    )
    parser.epilog = (
        "Environment: API_HOST (default 127.0.0.1), API_PORT (8000), API_KEY, API_MODEL_NAME, "
        "API_MAX_TOKENS, API_MAX_REQUEST_BYTES, API_MAX_CONCURRENT (16), API_MAX_QUEUE (64), "
        "API_STRICT_MODEL_NAME."
    )


def run(args: argparse.Namespace) -> int:
    from tuneforge.errors import ConfigError, NotAvailableError

    if not args.config:
        raise ConfigError("usage: tuneforge api CONFIG.yaml [key=value ...]")
    try:
        from tuneforge.serving.app import create_app, serve
    except ImportError as error:
        raise NotAvailableError(
            f"`tuneforge api` needs FastAPI and uvicorn ({error.name} is missing): "
            "pip install 'tuneforge[api]'"
        ) from None
    from tuneforge.config.loader import load_config
    from tuneforge.inference import load_engine
    from tuneforge.utils.logs import setup_logging

    setup_logging()
    config = load_config(args.config, args.overrides)
    settings = server_settings(os.environ, config)  # checked before the model loads
    strict = settings.strict_model_name or getattr(args, "strict_model_name", False)
    engine = load_engine(config, settings.limits)
    app = create_app(
        engine,
        settings.model_name,
        api_key=settings.api_key,
        max_tokens=settings.max_tokens,
        max_request_bytes=settings.max_request_bytes,
        strict_model_name=strict,
    )
    print(
        f"Serving {settings.model_name!r} on http://{settings.host}:{settings.port}/v1 "
        f"(API key {'required' if settings.api_key else 'not set'}; "
        f"{settings.max_concurrent} requests at once, {settings.max_queue} waiting)",
        flush=True,
    )
    try:
        serve(app, engine, settings.host, settings.port)
    finally:
        engine.close()
    return 0
