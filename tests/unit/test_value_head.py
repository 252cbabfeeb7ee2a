"""The value head: LLaMA-Factory's file and keys, scores of a padding-free row equal to each
sequence scored alone, and the HTTP reward client against a real local server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.errors import ModelError
from tuneforge.models.value_head import (
    VALUE_HEAD_FILE,
    ModelWithValueHead,
    ValueHead,
    load_value_head,
    save_value_head,
    sequence_scores,
)
from tuneforge.training.ppo_models import ApiRewardScorer
from tuneforge.training.preference_collate import PairwiseCollator

PAIRS = [
    {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, 12]},
    {"prompt_ids": [13, 14], "chosen_ids": [15, 16, 17, 18], "rejected_ids": [19]},
]


def test_value_head_file_has_llama_factory_keys_and_loads_back(tmp_path):
    torch.manual_seed(0)
    head = ValueHead(16)
    path = save_value_head(head, tmp_path)
    assert path.name == VALUE_HEAD_FILE == "value_head.safetensors"
    tensors = load_file(path)
    assert set(tensors) == {"v_head.summary.weight", "v_head.summary.bias"}
    assert tensors["v_head.summary.weight"].shape == (1, 16)
    loaded = load_value_head(tmp_path)
    hidden = torch.randn(3, 16)
    torch.testing.assert_close(loaded(hidden), head(hidden))


def test_value_head_bin_of_llama_factory_loads(tmp_path):
    weights = {
        "v_head.summary.weight": torch.ones(1, 4),
        "v_head.summary.bias": torch.tensor([2.0]),
    }
    torch.save(weights, tmp_path / "value_head.bin")
    assert load_value_head(tmp_path)(torch.ones(1, 4)).tolist() == [6.0]


def test_missing_and_malformed_value_heads(tmp_path):
    assert load_value_head(tmp_path) is None
    from safetensors.torch import save_file

    save_file({"score.weight": torch.ones(1, 4)}, str(tmp_path / VALUE_HEAD_FILE))
    with pytest.raises(ModelError, match="score.weight"):
        load_value_head(tmp_path)


def test_scores_of_a_pairwise_row_equal_each_sequence_scored_alone(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    language_model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, attn_implementation="eager"
    )
    model = ModelWithValueHead(language_model, ValueHead(language_model.config.hidden_size)).eval()
    batch = PairwiseCollator()(PAIRS)
    with torch.no_grad():
        scores = sequence_scores(model, batch)
        sequences = [p["prompt_ids"] + p["chosen_ids"] for p in PAIRS]
        sequences += [p["prompt_ids"] + p["rejected_ids"] for p in PAIRS]
        for index, ids in enumerate(sequences):
            hidden = language_model(torch.tensor([ids]), output_hidden_states=True).hidden_states
            alone = model.v_head(hidden[-1][0, -1])
            assert abs(scores[index].item() - alone.item()) < 1e-5


class ScoreHandler(BaseHTTPRequestHandler):
    """LLaMA-Factory's reward API: {"model", "messages": [texts]} -> {"scores": [...]}."""

    requests: ClassVar[list[dict]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ScoreHandler.requests.append(body)
        answer = json.dumps({"scores": [float(len(text)) for text in body["messages"]]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def score_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScoreHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ScoreHandler.requests = []
    yield f"http://127.0.0.1:{server.server_port}/v1/score/evaluation"
    server.shutdown()
    server.server_close()


def test_api_reward_scorer_posts_decoded_texts(score_server, tiny_tokenizer):
    prompt = tiny_tokenizer("<|im_start|>user\nHi<|im_end|>\n")["input_ids"]
    responses = [tiny_tokenizer("Hello there")["input_ids"], tiny_tokenizer("No")["input_ids"]]
    scores = ApiRewardScorer(score_server, tiny_tokenizer)([prompt, prompt], responses)
    (request,) = ScoreHandler.requests
    assert request["model"] == "model"
    # special tokens stay in the text, as LLaMA-Factory sends them
    assert request["messages"] == [
        "<|im_start|>user\nHi<|im_end|>\nHello there",
        "<|im_start|>user\nHi<|im_end|>\nNo",
    ]
    assert scores.dtype == torch.float32
    assert scores.tolist() == [float(len(t)) for t in request["messages"]]


def test_api_reward_scorer_names_the_url_when_unreachable(tiny_tokenizer):
    scorer = ApiRewardScorer("http://127.0.0.1:9/score", tiny_tokenizer)
    with pytest.raises(ModelError, match="127.0.0.1:9"):
        scorer([[1, 2]], [[3]])
