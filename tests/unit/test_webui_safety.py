"""Typed text is data, never structure: hostile run names, newlines in text fields, argument
files outside the saves folder, and the login and public-link rules of `tuneforge webui` and
`tuneforge webchat`. The page's handlers are called as the Gradio app wires them (no browser)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneforge.cli.main import main
from tuneforge.config.loader import build_config
from tuneforge.webui.locale import FormError
from tuneforge.webui.paths import Saves, check_name
from tuneforge.webui.spec import form_spec

REPO = Path(__file__).resolve().parents[2]
INJECTED = "\ntrust_remote_code: true\nresume_from_checkpoint: /tmp/evil"


class Handlers:
    """The workbench's wired event functions, called with field values by name."""

    def __init__(self, workbench: Any, values: dict[str, Any]) -> None:
        self.workbench, self.values = workbench, values

    def __call__(self, trigger: str, event: str = "click", **changes: Any) -> Any:
        component = self.workbench.page[trigger]
        wired = [
            f for f in self.workbench.blocks.fns.values() if (component._id, event) in f.targets
        ]
        assert len(wired) == 1, f"{trigger}.{event} has {len(wired)} handlers"
        fn = wired[0]
        names = {id(c): name for name, c in self.workbench.page.components.items()}
        values = self.values | changes
        if fn.inputs_as_dict:  # a set of inputs: the handler takes {component: value}
            return fn.fn({c: values[names[id(c)]] for c in fn.inputs})
        return fn.fn(*(values[names[id(c)]] for c in fn.inputs))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from tuneforge.webui.app import create_app
    from tuneforge.webui.runner import JobRegistry

    root = tmp_path_factory.mktemp("server")
    model = root / "model"
    model.mkdir()
    saves = Saves(root / "saves")
    registry = JobRegistry(program=(sys.executable, "-c", "pass"))  # writes its YAML, runs nothing
    workbench = create_app(saves.root, registry=registry)
    values = {name: field.default for name, field in form_spec().fields.items()}
    values |= {"model_name_or_path": str(model), "template": "qwen", "dataset": ["identity"]}
    values |= {"dataset_dir": str(REPO / "data"), "compute_type": "fp32", "output_dir": "run1"}
    values |= {"eval_dataset_dir": str(REPO / "data"), "eval_dataset": ["identity"]}
    values |= {"eval_output_dir": "pred1"}
    return workbench, saves, values


@pytest.fixture
def handlers(built) -> Handlers:
    workbench, _, values = built
    return Handlers(workbench, values)


@pytest.fixture
def saves(built) -> Saves:
    return built[1]


# --- run names ---


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../../../../etc/x", "path separator"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("..", "starts with a dot"),
        (".hidden", "starts with a dot"),
        ("run\nx", "control character"),
        ("run\x00", "control character"),
        ("run\u2028x", "control character"),
        ("  ", "give a name"),
    ],
)
def test_a_hostile_run_name_is_refused_in_the_page(handlers, saves, name, why):
    config_text, command, status = handlers("preview_btn", output_dir=name)
    assert (config_text, command) == ("", "")
    assert status.startswith("Not valid: Run name") and why in status
    before = handlers.workbench.registry.latest("train")
    _, _, started = handlers("start_btn", output_dir=name)
    assert started == status
    assert handlers.workbench.registry.latest("train") is before  # nothing started
    assert not (saves.root.parent / "etc").exists()


def test_the_refusal_is_told_in_chinese_too(handlers):
    _, _, status = handlers("preview_btn", output_dir="../x", lang="zh")
    assert status.startswith("配置无效：运行名称 '../x' 含有路径分隔符")


def test_a_plain_run_name_goes_under_the_method_folder(handlers, saves):
    config_text, command, status = handlers("preview_btn", output_dir="run-2.1")
    assert status == "The config is valid."
    run = saves.root / "model" / "lora" / "run-2.1"
    assert yaml.safe_load(config_text)["output_dir"] == str(run)
    assert command == f"tuneforge train {run / 'webui_train.yaml'}"


def test_the_prediction_run_name_is_checked_the_same_way(handlers):
    before = handlers.workbench.registry.latest("predict")
    status = handlers("predict_btn", eval_output_dir="../../pred")
    assert status.startswith("Not valid: Run name") and "path separator" in status
    assert handlers.workbench.registry.latest("predict") is before


def test_an_explicit_output_path_is_absolute_or_under_the_saves_folder(handlers, saves, tmp_path):
    target = tmp_path / "elsewhere"
    config_text, _, status = handlers("preview_btn", output_dir="../x", output_path=str(target))
    assert status == "The config is valid."  # the path is used, the run name is not
    assert yaml.safe_load(config_text)["output_dir"] == str(target)
    _, _, status = handlers("preview_btn", output_path="../outside")
    assert "neither absolute nor under the saves folder" in status
    (tmp_path / "a_file").write_text("x")
    _, _, status = handlers("preview_btn", output_path=str(tmp_path / "a_file"))
    assert status == f"Not valid: {tmp_path / 'a_file'} is a file; give a folder."
    _, _, status = handlers("preview_btn", output_path=f"{target}{INJECTED}")
    assert "control character" in status
    # extra arguments cannot slip an output dir past the rule
    _, _, status = handlers("preview_btn", extra_args="output_dir: ../../escape")
    assert "neither absolute nor under the saves folder" in status
    inside = saves.root / "custom" / "run"
    config_text, _, status = handlers("preview_btn", output_path=str(inside))
    assert status == "The config is valid." and str(inside) in config_text


def test_the_export_dir_is_absolute_or_under_the_saves_folder(handlers):
    before = handlers.workbench.registry.latest("export")
    status = handlers("export_btn", export_dir="exports/out")
    assert "Export dir exports/out is neither absolute nor under the saves folder" in status
    assert handlers.workbench.registry.latest("export") is before


def test_check_name_returns_the_stripped_name():
    assert check_name("  run1 ", "what_run_name") == "run1"
    with pytest.raises(FormError, match="starts with a dot"):
        check_name("..", "what_run_name")


# --- newlines and types ---


def test_a_newline_in_a_text_field_stays_inside_its_value(handlers, saves):
    """The written YAML has exactly the keys of the form, and the typed text is one value."""
    template = f"qwen{INJECTED}"
    config_text, _, status = handlers("preview_btn", template=template)
    loaded = yaml.safe_load(config_text)
    assert "trust_remote_code" not in loaded and "resume_from_checkpoint" not in loaded
    assert loaded["template"] == template
    assert status == "The config is valid."  # a (strange) template name, nothing more
    _, _, started = handlers("start_btn", template=template, output_dir="newline-run")
    assert started.startswith("Started")
    job = handlers.workbench.registry.latest("train")
    job.wait(timeout=60)
    written = yaml.safe_load(job.config_path.read_text(encoding="utf-8"))
    assert written == loaded | {"output_dir": str(saves.root / "model" / "lora" / "newline-run")}
    assert build_config(written).model.trust_remote_code is False


def test_a_newline_in_the_command_stays_a_comment():
    from tuneforge.webui.arguments import to_yaml

    keys = {"model_name_or_path": "m", "stage": "sft"}
    text = to_yaml(keys, f"tuneforge train x{INJECTED}")
    assert yaml.safe_load(text) == keys
    assert all(line.startswith("# ") for line in text.splitlines()[:3])


def test_the_command_preview_is_quoted_for_the_shell(handlers, saves):
    import shlex

    _, command, _ = handlers("preview_btn", output_dir="my run; rm -rf ~")
    run = saves.root / "model" / "lora" / "my run; rm -rf ~"
    assert shlex.split(command) == ["tuneforge", "train", str(run / "webui_train.yaml")]


def test_text_stays_a_string_and_numbers_are_parsed_as_the_form_declares(handlers):
    config_text, _, status = handlers(
        "preview_btn", template="true", lora_target="1e-4", learning_rate="1e-4"
    )
    loaded = yaml.safe_load(config_text)
    assert loaded["template"] == "true" and loaded["lora_target"] == "1e-4"
    assert loaded["learning_rate"] == 1e-4
    config = build_config(loaded)
    assert config.data.template == "true" and config.training["learning_rate"] == 1e-4
    for name, value in [("max_steps", 2.5), ("learning_rate", "nan"), ("num_train_epochs", "inf")]:
        _, _, status = handlers("preview_btn", **{name: value})
        assert "is not a number" in status, name


# --- argument files ---


def test_argument_sets_stay_in_the_configs_folder_unless_confirmed(handlers, saves, tmp_path):
    configs = saves.root / "configs"
    assert handlers("save_args_btn", args_path="set1").startswith("Saved")
    assert (configs / "set1.yaml").is_file()
    assert handlers("save_args_btn", args_path=str(configs / "set2.yml")).startswith("Saved")
    outside = tmp_path / "elsewhere.yaml"
    for typed in (str(outside), "../../x", "~/x.yaml", ".hidden"):
        status = handlers("save_args_btn", args_path=typed)
        assert "is outside" in status and "Allow a path outside" in status, typed
    assert not outside.exists()
    status = handlers("save_args_btn", args_path=str(outside), args_outside=True)
    assert status == f"Saved the arguments to {outside}."
    assert yaml.safe_load(outside.read_text())["stage"] == "sft"


def test_loading_outside_the_configs_folder_needs_the_confirmation(handlers, tmp_path):
    outside = tmp_path / "secret.yaml"
    outside.write_text("model_name_or_path: /somewhere/else\nlearning_rate: 0.5\n")
    *updates, status = handlers("load_args_btn", args_path=str(outside))
    assert "is outside" in status
    assert not any(isinstance(u, dict) and "value" in u for u in updates)  # nothing shown
    *updates, status = handlers("load_args_btn", args_path=str(outside), args_outside=True)
    assert status == f"Loaded the arguments from {outside}."
    assert {"__type__": "update", "value": "/somewhere/else"} in updates
    *_, status = handlers("load_args_btn", args_path="missing")
    assert status.startswith("Not valid: Argument file") and "does not exist" in status


# --- login and public link ---


@pytest.fixture
def launched(monkeypatch):
    """The keyword arguments of every gradio Blocks.launch call (which then returns)."""
    import gradio

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **kwargs: calls.append(kwargs))
    for name in ("GRADIO_SHARE", "GRADIO_SERVER_NAME", "TUNEFORGE_WEBUI_AUTH_FILE"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_webui_without_auth_launches_on_loopback_without_a_login(launched, tmp_path):
    assert main(["webui", "--saves-dir", str(tmp_path)]) == 0
    (kwargs,) = launched
    assert kwargs["auth"] is None and kwargs["share"] is False
    assert kwargs["server_name"] == "127.0.0.1"


def test_webui_auth_goes_to_gradio(launched, tmp_path, monkeypatch):
    logins = tmp_path / "logins"
    logins.write_text("# the team\nann:s3cret:with:colons\n\nbob:pw\n")
    monkeypatch.setenv("TUNEFORGE_WEBUI_AUTH_FILE", str(logins))
    assert main(["webui", "--saves-dir", str(tmp_path), "--auth", "me:pass"]) == 0
    assert launched[0]["auth"] == [("me", "pass"), ("ann", "s3cret:with:colons"), ("bob", "pw")]


@pytest.mark.parametrize("bad", ["nopassword", ":pw", "user:"])
def test_a_malformed_login_is_refused(launched, tmp_path, capsys, bad):
    assert main(["webui", "--saves-dir", str(tmp_path), "--auth", bad]) == 2
    assert "user:pass" in capsys.readouterr().err and not launched


def test_share_without_auth_is_refused(launched, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRADIO_SHARE", "1")
    assert main(["webui", "--saves-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GRADIO_SHARE" in err[0] and "--auth" in err[0]
    assert not launched
    assert main(["webui", "--saves-dir", str(tmp_path), "--auth", "me:pass"]) == 0
    assert launched[-1]["share"] is True and launched[-1]["auth"] == [("me", "pass")]


def test_share_without_auth_is_allowed_when_asked_with_a_warning(
    launched, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("GRADIO_SHARE", "true")
    assert main(["webui", "--saves-dir", str(tmp_path), "--share-without-auth"]) == 0
    assert launched[-1]["share"] is True and launched[-1]["auth"] is None
    assert "WARNING: a public link without a login" in capsys.readouterr().err


def test_webchat_takes_the_same_login_and_share_rule(launched, tmp_path, monkeypatch, capsys):
    class Engine:
        closed = False

        def close(self) -> None:
            Engine.closed = True

    monkeypatch.setattr("tuneforge.inference.load_engine", lambda config: Engine())
    config = tmp_path / "chat.yaml"
    config.write_text("model_name_or_path: some/model\ntemplate: qwen\n")
    assert main(["webchat", str(config), "--auth", "me:pass"]) == 0
    assert launched[-1]["auth"] == [("me", "pass")] and Engine.closed
    monkeypatch.setenv("GRADIO_SHARE", "1")
    Engine.closed = False
    assert main(["webchat", str(config)]) == 2
    assert "GRADIO_SHARE" in capsys.readouterr().err
    assert len(launched) == 1 and not Engine.closed  # refused before the model loaded
