"""Serving figures under load for `tuneforge api`, side by side with LLaMA-Factory's API.

    python benchmarks/serve.py [--model DIR] [--max-tokens N] [--rounds R] [--no-peer]

Each server runs as its own process on loopback, on the same model, template and prompts,
greedy decoding (temperature 0), float32, and is driven by streaming clients (httpx). Measured:

- throughput: C concurrent clients (C = 1 and 16), each sending R streamed requests in turn
  (R = 3 for one client, 1 each for 16; both servers run at once and the phases alternate);
  aggregate generated tokens/s (the streamed text re-tokenized with the model's tokenizer, the
  same count for both servers) and time to first token (first content chunk), p50 and p95;
- 64 streaming clients at once: how many end with `[DONE]`, errors;
- 256 clients at once: how many are served, how many get 429 and how fast, whether the server
  answers `/v1/models` meanwhile, and a normal request afterwards (these bursts are written
  on raw sockets, so that the client's own cost does not blur the server's latencies);
- the graceful stop: seconds from SIGTERM to the process's exit.

LLaMA-Factory 0.9.5 (installed by ../shared/peer/setup.sh) serves one request at a time by
default (its MAX_CONCURRENT=1); only the throughput phase runs on it. The default model is the
peer's `small` (Qwen2, 32M parameters, random weights: greedy answers repeat, and rarely end
before max_tokens). Figures are printed, never asserted; the machine's load moves them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
PEER = REPO.parent / "shared" / "peer"
PEER_HOME = Path(os.environ.get("PEER_DIR", Path.home() / ".cache" / "tuneforge-peer"))
PROMPTS = [
    "Give three tips for staying healthy.",
    "What are the three primary colors?",
    "Describe the structure of an atom.",
    "How can we reduce air pollution?",
    "Explain why the sky is blue.",
    "Write a short story about a robot.",
    "What is the capital of France?",
    "Suggest a name for a coffee shop.",
    "Summarize the water cycle.",
    "List five fruits that are red.",
    "Translate 'good morning' into French.",
    "Why do cats purr?",
    "Give an example of a metaphor.",
    "How does a rainbow form?",
    "Name three famous painters.",
    "What is machine learning?",
]
READY_SECONDS = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """A server process on a free port; `url` once it answers /v1/models."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **env, "API_PORT": str(self.port), "API_HOST": "127.0.0.1"}
        self.started = time.monotonic()
        with log.open("w") as out:
            self.process = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = self.started + READY_SECONDS
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"{name} exited:\n{log.read_text()[-3000:]}")
            try:
                httpx.get(f"{self.url}/v1/models", timeout=5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    tail = log.read_text()[-3000:]
                    raise SystemExit(f"{name} did not come up:\n{tail}") from None
                time.sleep(0.5)
        self.ready_seconds = time.monotonic() - self.started

    def stop(self) -> float:
        """SIGTERM; seconds until the process exits (killed after 60)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return float("inf")
        return time.monotonic() - started


async def stream_request(
    client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int
) -> dict:
    """One streamed request: status, seconds to the first content, text, whether [DONE] came."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
    }
    started = time.monotonic()
    result: dict = {"status": None, "ttft": None, "text": "", "done": False, "error": None}
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            result["status"] = response.status_code
            result["status_seconds"] = time.monotonic() - started
            if response.status_code != 200:
                await response.aread()
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    result["done"] = True
                    continue
                chunk = json.loads(data)
                if "error" in chunk:
                    result["error"] = chunk["error"]
                    continue
                for choice in chunk.get("choices", []):
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if result["ttft"] is None:
                            result["ttft"] = time.monotonic() - started
                        result["text"] += content
    except httpx.HTTPError as error:
        result["error"] = repr(error)
    result["seconds"] = time.monotonic() - started
    return result


def client_limits(count: int) -> httpx.Limits:
    return httpx.Limits(max_connections=count, max_keepalive_connections=count)


async def throughput(
    url: str, model: str, clients: int, rounds: int, max_tokens: int, count_tokens
) -> dict:
    """`clients` concurrent clients, each sending `rounds` streamed requests in turn."""

    async def client_loop(client: httpx.AsyncClient, index: int) -> list[dict]:
        results = []
        for round_ in range(rounds):
            prompt = PROMPTS[(index + round_ * clients) % len(PROMPTS)]
            results.append(await stream_request(client, url, model, prompt, max_tokens))
        return results

    async with httpx.AsyncClient(timeout=3600, limits=client_limits(clients)) as client:
        started = time.monotonic()
        nested = await asyncio.gather(*(client_loop(client, i) for i in range(clients)))
        wall = time.monotonic() - started
    results = [result for group in nested for result in group]
    tokens = sum(count_tokens(result["text"]) for result in results)
    ttfts = sorted(result["ttft"] for result in results if result["ttft"] is not None)
    return {
        "clients": clients,
        "requests": len(results),
        "ok": sum(r["status"] == 200 and r["done"] and not r["error"] for r in results),
        "tokens": tokens,
        "wall": wall,
        "tokens_per_second": tokens / wall,
        "ttft_p50": percentile(ttfts, 50),
        "ttft_p95": percentile(ttfts, 95),
    }


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


async def raw_request(url: str, method: str, path: str, body: dict | None = None) -> dict:
    """One HTTP/1.1 request on its own connection, written and read by hand: a burst of
    hundreds costs the client next to nothing, so the latencies measured are the server's.
    Returns the status, the seconds until it arrived, and whether a stream ended with [DONE]."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode() if body is not None else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    started = time.monotonic()
    result: dict = {"status": None, "status_seconds": None, "done": False, "error": None}
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head + payload)
        await writer.drain()
        status_line = await reader.readline()
        result["status_seconds"] = time.monotonic() - started
        result["status"] = int(status_line.split()[1])
        rest = await reader.read()  # until the server closes the connection
        result["done"] = b"data: [DONE]" in rest
        result["error"] = b'"error"' in rest.split(b"\r\n\r\n", 1)[-1] and result["status"] == 200
        writer.close()
    except (OSError, ValueError, IndexError) as error:
        result["error"] = repr(error)
    result["seconds"] = time.monotonic() - started
    return result


async def burst(url: str, model: str, clients: int, max_tokens: int) -> dict:
    """`clients` streamed requests at once; 0.5 s in, /v1/models is asked."""
    tasks = [
        asyncio.ensure_future(
            raw_request(
                url,
                "POST",
                "/v1/chat/completions",
                {
                    "model": model,
                    "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    "temperature": 0,
                    "max_tokens": max_tokens,
                    "stream": True,
                },
            )
        )
        for i in range(clients)
    ]
    await asyncio.sleep(0.5)
    models = await raw_request(url, "GET", "/v1/models")
    results = await asyncio.gather(*tasks)
    refused = [r for r in results if r["status"] == 429]
    served = [r for r in results if r["status"] == 200]
    return {
        "clients": clients,
        "served": len(served),
        "done": sum(r["done"] and not r["error"] for r in served),
        "refused_429": len(refused),
        "p50_429_seconds": percentile(sorted(r["status_seconds"] for r in refused), 50),
        "max_429_seconds": max((r["status_seconds"] for r in refused), default=float("nan")),
        "other": len(results) - len(served) - len(refused),
        "models_status": models["status"],
        "models_seconds": models["status_seconds"],
    }


def tuneforge_server(model: Path, work: Path, limits: tuple[int, int]) -> Server:
    config = work / "tuneforge.yaml"
    config.write_text(f"model_name_or_path: {model}\ntemplate: qwen\ninfer_dtype: float32\n")
    env = {
        "API_MODEL_NAME": "bench",
        "API_MAX_CONCURRENT": str(limits[0]),
        "API_MAX_QUEUE": str(limits[1]),
    }
    command = [sys.executable, "-m", "tuneforge", "api", str(config)]
    return Server("tuneforge", command, env, work / "tuneforge.log")


def peer_server(model: Path, work: Path) -> Server:
    config = work / "llamafactory.yaml"
    config.write_text(
        f"model_name_or_path: {model}\ntemplate: qwen\ninfer_backend: huggingface\n"
        "infer_dtype: float32\n"
    )
    env = {
        "PYTHONPATH": str(PEER / "stubs"),
        "PATH": f"{PEER_HOME / 'venv' / 'bin'}:{os.environ['PATH']}",
        "HF_HOME": str(PEER_HOME / ".hf_home"),
        "API_MODEL_NAME": "bench",
    }
    command = [str(PEER_HOME / "venv" / "bin" / "llamafactory-cli"), "api", str(config)]
    return Server("LLaMA-Factory 0.9.5", command, env, work / "llamafactory.log")


def show(title: str, row: dict) -> None:
    cells = ", ".join(
        f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
        for key, value in row.items()
    )
    print(f"{title}: {cells}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=PEER_HOME / "models" / "small")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="requests of the one client")
    parser.add_argument("--rounds-16", type=int, default=1, help="requests of each of 16")
    parser.add_argument("--no-peer", action="store_true", help="skip LLaMA-Factory")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as folder:
        work = Path(folder)
        servers = {"tuneforge": tuneforge_server(args.model, work, (16, 64))}
        if not args.no_peer:  # both up at once, phases alternating: the load drifts less between
            servers["llamafactory"] = peer_server(args.model, work)
        try:
            for server in servers.values():
                print(f"{server.name} ready in {server.ready_seconds:.1f} s", flush=True)
                asyncio.run(throughput(server.url, "bench", 1, 1, 8, count_tokens))  # warm-up
            for clients, rounds in ((1, args.rounds), (16, args.rounds_16)):
                for name, server in servers.items():
                    row = asyncio.run(
                        throughput(
                            server.url, "bench", clients, rounds, args.max_tokens, count_tokens
                        )
                    )
                    figures[f"{name} c={clients}"] = row
                    show(f"{server.name}, {clients} clients", row)
            url = servers["tuneforge"].url
            row = asyncio.run(burst(url, "bench", 64, args.max_tokens))
            figures["tuneforge burst 64"] = row
            show("tuneforge, 64 clients at once", row)
            row = asyncio.run(burst(url, "bench", 256, 16))
            figures["tuneforge burst 256"] = row
            show("tuneforge, 256 clients at once", row)
            after = asyncio.run(throughput(url, "bench", 1, 1, 8, count_tokens))
            show("tuneforge, a request afterwards", after)
        finally:
            for server in servers.values():
                seconds = server.stop()
                print(f"{server.name} stopped {seconds:.1f} s after SIGTERM", flush=True)

    ours_1, ours_16 = figures["tuneforge c=1"], figures["tuneforge c=16"]
    print(
        f"\ntuneforge 16 clients / 1 client: "
        f"{ours_16['tokens_per_second'] / ours_1['tokens_per_second']:.2f}x tokens/s",
        flush=True,
    )
    if "llamafactory c=16" in figures:
        theirs_1, theirs_16 = figures["llamafactory c=1"], figures["llamafactory c=16"]
        print(
            f"tuneforge / LLaMA-Factory at 16 clients: "
            f"{ours_16['tokens_per_second'] / theirs_16['tokens_per_second']:.2f}x tokens/s; "
            f"at 1 client: {ours_1['tokens_per_second'] / theirs_1['tokens_per_second']:.2f}x",
            flush=True,
        )
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
