"""Training figures for a config, and side-by-side ratios against another system.

    python benchmarks/train.py CONFIG [key=value ...]
    python benchmarks/train.py --peer a_small_lora_sft [--repeat N] [key=value ...]

With `--peer NAME`, the LLaMA-Factory reference config NAME from ../shared/peer/configs is
run twice on the same model, data and settings: once unedited by LLaMA-Factory 0.9.5
(../shared/peer/run.sh) and once by `tuneforge train` (paths filled in, nothing else changed,
plus any key=value overrides). It prints examples/s, effective (non-pad) tokens/s, peak
memory (max RSS), preprocessing time, the mean training loss over the last logged steps, and
the ratios. CLI start-up times are printed too. Figures are measured, never asserted.

This machine's speed drifts by 10-15% over minutes, so one pair of runs can move a ratio by that
much: `--repeat N` alternates the two systems N times and also prints the median ratios.

The two systems' logged losses are not over the same tokens (LLaMA-Factory also trains the
newline after a ChatML end-of-turn, which tuneforge's templates never train), so both trained
models are also scored by `tuneforge train do_eval=true` on the first EVAL_EXAMPLES examples of
the dataset: one encoding, the same tokens for both.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEER = REPO.parent / "shared" / "peer"
PEER_HOME = Path(os.environ.get("PEER_DIR", Path.home() / ".cache" / "tuneforge-peer"))
LAST_STEPS = 20  # the training loss is compared as the mean over the last logged steps
EVAL_EXAMPLES = 200
TUNEFORGE = [sys.executable, "-m", "tuneforge"]


def timed(command: list[str], log: Path, env: dict | None = None) -> dict:
    """Runs `command` under /usr/bin/time -v; wall seconds, peak RSS (MB), return code."""
    stats = log.with_suffix(".time")
    with log.open("w") as out:
        code = subprocess.run(
            ["/usr/bin/time", "-v", "-o", str(stats), *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        ).returncode
    text = stats.read_text()
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", text)
    hours, minutes, seconds = (float(g) if g else 0.0 for g in wall.groups())
    return {"code": code, "wall": hours * 3600 + minutes * 60 + seconds, "rss_mb": rss / 1024}


def last_losses(log_file: Path) -> float | None:
    losses = [json.loads(line).get("loss") for line in log_file.read_text().splitlines()]
    losses = [loss for loss in losses if loss is not None]
    return statistics.mean(losses[-LAST_STEPS:]) if losses else None


def startup_seconds(command: list[str], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_command(config: Path, overrides: list[str], output_dir: Path, workdir: Path) -> list:
    """`tuneforge train CONFIG key=value ...` writing into output_dir, with the run's cache."""
    return [
        *TUNEFORGE,
        "train",
        str(config),
        *overrides,
        f"output_dir={output_dir}",
        f"data_cache_dir={workdir / 'cache'}",
    ]


def run_tuneforge(config: Path, overrides: list[str], workdir: Path) -> dict:
    output_dir = workdir / "tuneforge-out"
    command = train_command(config, overrides, output_dir, workdir)
    figures = timed(command, workdir / "tuneforge.log")
    if figures["code"] != 0:
        raise SystemExit(f"tuneforge failed; see {workdir / 'tuneforge.log'}")
    results = json.loads((output_dir / "all_results.json").read_text())
    encoded = re.search(r"in ([\d.]+) s \(cached", (workdir / "tuneforge.log").read_text())
    return {
        **figures,
        "examples_per_s": results["train_examples_per_second"],
        "tokens_per_s": results["effective_tokens_per_sec"],
        "runtime": results["train_runtime"],
        "preprocess_s": float(encoded.group(1)) if encoded else None,
        "loss": last_losses(output_dir / "trainer_log.jsonl"),
    }


def run_peer(name: str, workdir: Path) -> dict:
    """LLaMA-Factory on the peer config, through the peer harness."""
    figures = timed(["bash", str(PEER / "run.sh"), name, str(PEER_HOME)], workdir / "peer.log")
    log = (PEER_HOME / "logs" / f"{name}.log").read_text()
    metric = {
        key: float(value)
        for key, value in re.findall(
            r"'?(train_runtime|train_samples_per_second|effective_tokens_per_sec)'?\s*[:=]\s*([\d.]+)",
            log,
        )
    }
    rss = re.search(
        r"Maximum resident set size \(kbytes\): (\d+)",
        (PEER_HOME / "logs" / f"{name}.time").read_text(),
    )
    rows = int(re.search(r"Num examples = ([\d,]+)", log).group(1).replace(",", ""))
    examples = (
        int(re.search(r"Running tokenizer on dataset.*?(\d+)/(\d+)", log, re.S).group(2))
        if "packing" in name
        else rows
    )
    return {
        "wall": figures["wall"],
        "rss_mb": int(rss.group(1)) / 1024,
        # a packed row holds examples/rows examples on average
        "examples_per_s": metric["train_samples_per_second"] * examples / rows,
        "tokens_per_s": metric.get("effective_tokens_per_sec"),
        "runtime": metric["train_runtime"],
        "loss": last_losses(PEER_HOME / "out" / name / "trainer_log.jsonl"),
    }


def same_tokens_loss(config: Path, trained: Path, workdir: Path, label: str) -> float:
    """eval_loss of the model (or LoRA adapter) in `trained` on the first EVAL_EXAMPLES
    examples of the config's dataset, encoded by tuneforge."""
    import yaml

    keys = yaml.safe_load(config.read_text())
    lora = keys.get("finetuning_type") == "lora"
    weights = "adapter_name_or_path" if lora else "model_name_or_path"
    output_dir = workdir / f"eval-{label}"
    evaluation = [
        f"{weights}={trained}",
        "do_train=false",
        "do_eval=true",
        "dataset=null",
        f"eval_dataset={keys['dataset']}",
        f"max_samples={EVAL_EXAMPLES}",
        "packing=false",
        "per_device_eval_batch_size=8",
    ]
    command = train_command(config, evaluation, output_dir, workdir)
    with (workdir / f"eval-{label}.log").open("w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads((output_dir / "all_results.json").read_text())["eval_loss"]


def peer_config(name: str, workdir: Path) -> Path:
    """The peer's YAML with its paths filled in, and nothing else changed."""
    text = (PEER / "configs" / f"{name}.yaml").read_text()
    text = text.replace("@PEER@", str(PEER_HOME)).replace(
        "@DATA@", str(PEER.parent / "lf-demo-data")
    )
    path = workdir / f"{name}.yaml"
    path.write_text(text)
    return path


def print_rows(rows: list[tuple[str, dict]]) -> None:
    print(
        f"{'':22}{'examples/s':>12}{'eff. tok/s':>12}{'peak RSS MB':>13}{'loss(last)':>12}"
        f"{'wall s':>9}"
    )
    for label, figures in rows:
        loss = f"{figures['loss']:.4f}" if figures["loss"] is not None else "-"
        print(
            f"{label:22}{figures['examples_per_s']:>12.2f}{figures['tokens_per_s'] or 0:>12.1f}"
            f"{figures['rss_mb']:>13.0f}{loss:>12}{figures['wall']:>9.1f}"
        )
    if len(rows) == 2:
        ours, peer = rows[0][1], rows[1][1]
        print(
            f"ratios (tuneforge / LLaMA-Factory): examples/s "
            f"{ours['examples_per_s'] / peer['examples_per_s']:.2f}x, peak memory "
            f"{ours['rss_mb'] / peer['rss_mb']:.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="a tuneforge config (not with --peer)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--peer", help="a LLaMA-Factory reference config to run side by side")
    parser.add_argument(
        "--repeat", type=int, default=1, help="alternate the runs N times; median ratios"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tuneforge-bench-"))
    print(
        f"CLI start-up: `tuneforge --help` {startup_seconds([*TUNEFORGE, '--help']):.2f} s, "
        f"`tuneforge version` {startup_seconds([*TUNEFORGE, 'version']):.2f} s"
    )
    overrides = args.overrides
    if args.peer and args.config:  # with --peer every positional is an override
        overrides = [args.config, *overrides]
    config = peer_config(args.peer, workdir) if args.peer else Path(args.config)
    rounds = []
    for index in range(args.repeat):
        folder = workdir if args.repeat == 1 else workdir / f"round-{index + 1}"
        folder.mkdir(exist_ok=True)
        rows = [("tuneforge", run_tuneforge(config, overrides, folder))]
        if args.peer:
            rows.append(("LLaMA-Factory 0.9.5", run_peer(args.peer, folder)))
        if args.repeat > 1:
            print(f"round {index + 1} of {args.repeat}")
        print_rows(rows)
        rounds.append(rows)
    ours = rounds[0][0][1]
    if ours.get("preprocess_s") is not None:
        print(f"tuneforge preprocessing: {ours['preprocess_s']:.2f} s")
    if args.peer:
        speed = [rows[0][1]["examples_per_s"] / rows[1][1]["examples_per_s"] for rows in rounds]
        memory = [rows[0][1]["rss_mb"] / rows[1][1]["rss_mb"] for rows in rounds]
        if args.repeat > 1:
            print(
                f"median ratios over {args.repeat} rounds (tuneforge / LLaMA-Factory): examples/s "
                f"{statistics.median(speed):.2f}x (each: {', '.join(f'{r:.2f}' for r in speed)}), "
                f"peak memory {statistics.median(memory):.2f}x "
                f"(each: {', '.join(f'{r:.2f}' for r in memory)})"
            )
        trained_by_us = folder / "tuneforge-out"  # every round trains the same model (seeded)
        losses = [
            same_tokens_loss(config, trained, workdir, label)
            for label, trained in (
                ("tuneforge", trained_by_us),
                ("peer", PEER_HOME / "out" / args.peer),
            )
        ]
        print(
            f"loss of each trained model on the same tokens (first {EVAL_EXAMPLES} examples, "
            f"tuneforge's encoding): tuneforge {losses[0]:.4f}, LLaMA-Factory {losses[1]:.4f}"
        )
    print(f"logs in {workdir}")


if __name__ == "__main__":
    main()
