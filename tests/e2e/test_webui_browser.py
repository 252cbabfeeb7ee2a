"""`tuneforge webui` served on loopback and driven in headless Chromium (Playwright with the
system's Chromium; nothing is downloaded): train a LoRA on the demo data, predict with it, chat
with it, export it.

Screenshots of each tab go to a temporary folder; to refresh the README's images run
`TUNEFORGE_WEBUI_SCREENSHOTS=docs/images pytest tests/e2e/test_webui_browser.py`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuneforge.training.callbacks import read_trainer_log

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
LONG = 300_000  # ms: a step of the flow on a busy 2-core CPU (start-up, training, export)

pytestmark = pytest.mark.slow


def chromium() -> str | None:
    found = [shutil.which("chromium"), shutil.which("chromium-browser"), *CHROMIUM_CANDIDATES]
    return next((path for path in found if path and Path(path).is_file()), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


MODEL = "models/tiny-qwen2"  # paths as a user types them, relative to where the server runs
RUN_DIR = Path("saves/tiny-qwen2/lora/demo-lora")
EXPORT_DIR = "saves/exports/tiny-qwen2-identity"  # an output path: under the saves folder


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_model_dir) -> Path:
    """The folder the server runs in: the tiny model under models/, the demo data as data/."""
    folder = tmp_path_factory.mktemp("webui")
    (folder / "models").mkdir()
    (folder / MODEL).symlink_to(tiny_model_dir, target_is_directory=True)
    (folder / "data").symlink_to(REPO / "data", target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def server(workdir):
    """The webui command on a free loopback port, run from a scratch folder; yields its URL."""
    port = free_port()
    log = workdir / "server.log"
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("GRADIO_SERVER_NAME", None)  # the default must be loopback
    command = [sys.executable, "-m", "tuneforge", "webui", "--saves-dir", "saves"]
    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=workdir, stdout=output, stderr=subprocess.STDOUT, env=env
        )
    try:
        _wait_until_listening(port, process, log)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.send_signal(signal.SIGINT)  # the server stops its jobs cleanly on the way out
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_until_listening(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 600  # gradio's and torch's imports take a while on a busy CPU
    while time.monotonic() < deadline:
        assert process.poll() is None, f"webui exited early:\n{log.read_text()}"
        if "Running on local URL" in log.read_text():
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return
        time.sleep(0.5)
    raise AssertionError(f"webui did not start:\n{log.read_text()}")


class Session:
    """One browser; `open()` loads the page in a new tab, as a user (re)connecting would."""

    def __init__(self, browser, url: str) -> None:
        self.browser, self.url, self.page = browser, url, None

    def open(self):
        self.page = self.browser.new_page(viewport={"width": 1400, "height": 1000})
        self.page.set_default_timeout(30_000)
        self.page.goto(self.url)
        self.page.locator("#tf-start").wait_for()
        return self.page


@pytest.fixture(scope="module")
def session(server):
    path = chromium()
    if path is None:
        pytest.skip("no Chromium binary (install the system package `chromium`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True)
        yield Session(browser, server)
        browser.close()


@pytest.fixture(scope="module")
def screenshots(workdir) -> Path:
    folder = Path(os.environ.get("TUNEFORGE_WEBUI_SCREENSHOTS") or workdir / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- helpers that drive gradio widgets ---


def box(page, elem_id: str):
    """The text input of a Textbox, Number or Dropdown with this elem_id."""
    return page.locator(f"#{elem_id}").locator("textarea, input").first


def fill(page, elem_id: str, value: object) -> None:
    field = box(page, elem_id)
    field.fill(str(value))
    field.press("Tab")  # commit the value (change event)


def choose(page, elem_id: str, option: str) -> None:
    """Picks `option` in a (multi-select) Dropdown."""
    field = box(page, elem_id)
    field.click()
    field.fill(option)
    page.get_by_role("option", name=option, exact=True).click()
    field.press("Escape")


def set_visible_number(page, label: str, value: object) -> None:
    """Types into the number box of the visible slider labelled `label`."""
    boxes = page.get_by_label(f"number input for {label}", exact=True).all()
    field = next(b for b in boxes if b.is_visible())
    field.fill(str(value))
    field.press("Enter")


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def status_text(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id}").inner_text()


def wait_for_text(page, elem_id: str, needle: str, timeout: int = LONG) -> None:
    """Waits until the element's text holds `needle` (case-sensitive, unlike has_text)."""
    pattern = re.compile(re.escape(needle))
    page.locator(f"#{elem_id}").filter(has_text=pattern).wait_for(timeout=timeout)


def record_bot_texts(page) -> None:
    """Records every distinct text the chatbot's last answer shows, as it streams."""
    page.evaluate(
        """() => {
          window.tfAnswers = [];
          const seen = () => {
            const bots = document.querySelectorAll('[data-testid="bot"]');
            const text = bots.length ? bots[bots.length - 1].innerText : '';
            const last = window.tfAnswers[window.tfAnswers.length - 1];
            if (text && text !== last) {
              window.tfAnswers.push(text);
              window.tfChanged = Date.now();
            }
          };
          new MutationObserver(seen).observe(document.body, {
            subtree: true, childList: true, characterData: true });
        }"""
    )


# --- the flow: one browser session, step by step ---


def pick_model(page) -> None:
    fill(page, "tf-model_name_or_path", MODEL)
    choose(page, "tf-template", "qwen")


def test_a_hostile_run_name_is_refused_in_the_page(session, workdir):
    page = session.open()
    pick_model(page)
    choose(page, "tf-dataset", "identity")
    fill(page, "tf-output_dir", "../../../../etc/x")
    page.get_by_role("button", name="Preview command").click()
    wait_for_text(page, "tf-train-status", "holds a path separator", timeout=60_000)
    assert "Not valid: Run name" in status_text(page, "tf-train-status")
    assert box(page, "tf-command").input_value() == ""
    page.close()


def test_train_lora_and_watch_progress(session, workdir, screenshots):
    from playwright.sync_api import expect

    page = session.open()
    pick_model(page)
    choose(page, "tf-dataset", "identity")  # from data/dataset_info.json, the default dir
    settings = {
        "learning_rate": "5e-3",
        "max_steps": 8,
        "cutoff_len": 128,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "logging_steps": 1,
        "save_steps": 4,
        "output_dir": "demo-lora",
    }
    for name, value in settings.items():
        fill(page, f"tf-{name}", value)
    fill(page, "tf-extra_args", "data_cache_dir: cache")

    page.get_by_role("button", name="Preview command").click()
    wait_for_text(page, "tf-train-status", "valid", timeout=60_000)
    command = box(page, "tf-command").input_value()
    assert command == f"tuneforge train {RUN_DIR / 'webui_train.yaml'}"
    shown = page.locator("#tf-yaml").inner_text()

    page.locator("#tf-start").click()
    wait_for_text(page, "tf-train-status", "Started")
    # the browser goes away and another one connects: training goes on, and the new page
    # shows the running job's progress and loss
    page.close()
    page = session.open()
    expect(box(page, "tf-model_name_or_path")).to_have_value(MODEL)  # the job's settings
    expect(box(page, "tf-output_dir")).to_have_value(RUN_DIR.name)  # a run of this saves folder
    expect(box(page, "tf-output_path")).to_have_value("")
    progress = page.locator('#tf-progress .tf-progress[data-percent="100"]')
    progress.wait_for(timeout=LONG)
    wait_for_text(page, "tf-progress", "Finished")
    page.locator("#tf-loss-plot").locator("canvas, svg").first.wait_for(timeout=60_000)

    # the page ran exactly the YAML it showed, and the run is a LoRA adapter
    output_dir = workdir / RUN_DIR
    written = (output_dir / "webui_train.yaml").read_text()
    assert "dataset: identity" in written and "finetuning_type: lora" in written
    assert f"output_dir: {RUN_DIR}" in shown and f"output_dir: {RUN_DIR}" in written
    assert (output_dir / "adapter_config.json").is_file()
    steps = [r["current_steps"] for r in read_trainer_log(output_dir) if "loss" in r]
    assert steps == list(range(1, 9))
    page.screenshot(path=str(screenshots / "webui_train.png"), full_page=True)


def test_predict_shows_scores_and_samples(session, screenshots):
    page = session.page
    pick_model(page)  # the page is a fresh one: the model is chosen again
    choose(page, "tf-checkpoint", "demo-lora")
    open_tab(page, "Evaluate & Predict")
    choose(page, "tf-eval_dataset", "identity")
    fill(page, "tf-eval_max_samples", 4)
    fill(page, "tf-eval_cutoff_len", 128)
    fill(page, "tf-eval_output_dir", "demo-predict")
    page.locator("#tf-predict").click()
    wait_for_text(page, "tf-eval-status", "Started")
    wait_for_text(page, "tf-eval-progress", "Finished")
    wait_for_text(page, "tf-metrics", "predict_bleu-4", timeout=60_000)
    wait_for_text(page, "tf-predictions", "Who are you?", timeout=60_000)
    page.screenshot(path=str(screenshots / "webui_eval.png"), full_page=True)


def test_chat_streams_an_answer(session, screenshots):
    page = session.page
    open_tab(page, "Chat")
    page.locator("#tf-load-model").click()
    wait_for_text(page, "tf-model-status", "Loaded")
    assert "demo-lora" in status_text(page, "tf-model-status")
    set_visible_number(page, "Max new tokens", 48)
    set_visible_number(page, "Temperature (0: greedy)", 0)
    record_bot_texts(page)
    message = page.get_by_label("Message")
    message.fill("Who are you?")
    page.get_by_role("button", name="Send").click()
    # the answer is complete once it has stopped changing for a while
    settled = "() => window.tfAnswers.length > 0 && Date.now() - window.tfChanged > 2000"
    page.wait_for_function(settled, timeout=LONG)
    answers = page.evaluate("() => window.tfAnswers")
    assert answers[-1].strip(), "the model answered nothing"
    # streamed: the page showed the answer growing, piece by piece, before it was complete
    assert len(answers) >= 2, answers
    assert all(answers[-1].startswith(a.strip()) for a in answers), answers
    page.screenshot(path=str(screenshots / "webui_chat.png"), full_page=True)


def test_export_writes_a_loadable_model(session, workdir, screenshots):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    page = session.page
    page.locator("#tf-unload-model").click()
    open_tab(page, "Export")
    fill(page, "tf-export_dir", EXPORT_DIR)
    fill(page, "tf-export_size", 1)
    page.locator("#tf-export").click()
    wait_for_text(page, "tf-export-status", "Exported to")
    assert EXPORT_DIR in status_text(page, "tf-export-status")
    page.screenshot(path=str(screenshots / "webui_export.png"), full_page=True)

    target = workdir / EXPORT_DIR
    model = AutoModelForCausalLM.from_pretrained(target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    ids = tokenizer("Who are you?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape[:2] == ids.shape and torch.isfinite(logits).all()
    assert not (target / "adapter_config.json").exists()  # merged, not an adapter copy


def test_language_switch_relabels_the_page(session):
    page = session.page
    choose(page, "tf-lang", "zh")
    page.get_by_role("tab", name="训练").wait_for()
    assert page.get_by_role("button", name="开始导出").is_visible()
    assert "模型路径" in page.locator("#tf-model_name_or_path").inner_text()
