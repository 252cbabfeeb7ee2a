"""The models PPO consults besides the policy: the reward model and the reference.

Reward model (`reward_model_type`):
- lora: a reward adapter trained by `stage: rm` on the same base model, loaded into the
  policy's peft model as a second adapter and switched in only while scoring, with its own
  value head (LLaMA-Factory's arrangement: no second copy of the base weights).
- full: a separate model folder holding value_head.safetensors (a full `rm` output, or a base
  model with `reward_model_adapters` merged and the head taken from the last adapter).
- api: an HTTP endpoint, LLaMA-Factory's protocol: POST {"model": "model", "messages": [texts]}
  -> {"scores": [floats]}, each text the decoded prompt + response with special tokens.

Reference (for the per-token KL penalty): with LoRA the policy's own base weights, adapters
disabled; with full/freeze `ref_model` (with `ref_model_adapters` merged), else a frozen copy of
the starting model.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, Protocol

import torch

from tuneforge.data.batch import PaddingFreeBatch
from tuneforge.errors import ModelError
from tuneforge.models.tokenizer import base_model_path
from tuneforge.models.value_head import ModelWithValueHead, require_value_head, sequence_scores
from tuneforge.training.loss import token_losses
from tuneforge.training.preference_collate import prompt_and_response
from tuneforge.training.reference import RunParts

if TYPE_CHECKING:
    from tuneforge.config.loader import Config

logger = logging.getLogger("tuneforge")
REWARD_ADAPTER = "reward"
API_TIMEOUT_S = 120


class RewardScorer(Protocol):
    def __call__(self, prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        """One float32 score per (prompt, response), on the CPU."""
        ...


def sequences_row(
    prompts: list[list[int]], responses: list[list[int]], device: Any
) -> PaddingFreeBatch:
    """A padding-free row of prompt + response sequences; the responses are the targets."""
    sequences = [prompt_and_response(p, r) for p, r in zip(prompts, responses)]
    return PaddingFreeBatch.from_sequences(sequences).to(device)


class AdapterRewardScorer:
    """`reward_model_type: lora`: the reward adapter, switched into the policy for scoring."""

    def __init__(self, policy: ModelWithValueHead, path: str) -> None:
        peft_model = policy.pretrained_model
        if not hasattr(peft_model, "load_adapter"):
            raise ModelError(
                "`reward_model_type: lora` needs a LoRA policy (finetuning_type: lora)."
            )
        try:
            peft_model.load_adapter(path, adapter_name=REWARD_ADAPTER, is_trainable=False)
        except (OSError, ValueError) as error:
            raise ModelError(f"`reward_model`: cannot load the adapter {path}: {error}") from None
        head = require_value_head(path, "reward_model")
        device = next(policy.v_head.parameters()).device
        self.scorer = ModelWithValueHead(peft_model, head.to(device))
        self.peft_model = peft_model

    @torch.no_grad()
    def __call__(self, prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        active = self.peft_model.active_adapter
        self.peft_model.set_adapter(REWARD_ADAPTER, inference_mode=True)
        try:
            row = sequences_row(prompts, responses, self.scorer.v_head.summary.weight.device)
            return sequence_scores(self.scorer, row).float().cpu()
        finally:
            self.peft_model.set_adapter(active)  # the policy's adapter trains again


class ModelRewardScorer:
    """`reward_model_type: full`: a separate frozen model with its value head."""

    def __init__(self, model: ModelWithValueHead) -> None:
        self.model = model.eval()

    @torch.no_grad()
    def __call__(self, prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        row = sequences_row(prompts, responses, self.model.v_head.summary.weight.device)
        return sequence_scores(self.model, row).float().cpu()


class ApiRewardScorer:
    """`reward_model_type: api`: scores from an HTTP endpoint (LLaMA-Factory's protocol)."""

    def __init__(self, url: str, tokenizer: Any) -> None:
        self.url = url
        self.tokenizer = tokenizer

    def __call__(self, prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(
            [p + r for p, r in zip(prompts, responses)], skip_special_tokens=False
        )
        body = json.dumps({"model": "model", "messages": texts}).encode("utf-8")
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=API_TIMEOUT_S) as response:
                scores = json.loads(response.read().decode("utf-8"))["scores"]
        except (urllib.error.URLError, OSError) as error:
            raise ModelError(f"`reward_model` {self.url}: the request failed: {error}") from None
        except (ValueError, KeyError, TypeError):
            raise ModelError(
                f'`reward_model` {self.url}: the answer is not JSON with a "scores" list.'
            ) from None
        if len(scores) != len(texts):
            raise ModelError(
                f"`reward_model` {self.url}: {len(scores)} scores for {len(texts)} texts."
            )
        return torch.tensor(scores, dtype=torch.float32)


def load_frozen_model(
    config: Config,
    run: RunParts,
    path: str,
    adapters: list[str] | None,
    quantization_bit: int | None,
) -> Any:
    """A model for scoring only (see reference.load_frozen_model), on the training device."""
    from tuneforge.training.reference import load_frozen_model as load_frozen

    model = load_frozen(config, run, path, adapters, quantization_bit)
    if getattr(model, "hf_device_map", None):  # quantized: placed by bitsandbytes already
        return model
    return model.to(run.args.device)


def reward_scorer(config: Config, run: RunParts, policy: ModelWithValueHead) -> RewardScorer:
    """The reward model `config.finetuning` names, ready to score rollouts."""
    finetuning = config.finetuning
    kind, path = finetuning.reward_model_type, finetuning.reward_model
    assert path, "config/checks.py: reward_and_ppo requires a reward_model for ppo"
    if kind == "api":
        return ApiRewardScorer(path, run.tokenizer)
    if kind == "lora":
        return AdapterRewardScorer(policy, path)
    adapters = finetuning.reward_model_adapters
    model = load_frozen_model(config, run, path, adapters, finetuning.reward_model_quantization_bit)
    head = require_value_head(adapters[-1] if adapters else path, "reward_model")
    head = head.to(device=run.args.device, dtype=model.dtype)
    return ModelRewardScorer(ModelWithValueHead(model, head))


class ReferenceLogProbs:
    """Log-probabilities of response tokens under the reference policy."""

    def __init__(self, policy: ModelWithValueHead, frozen: Any | None) -> None:
        self.policy = policy
        self.frozen = frozen  # None: the policy with its adapters disabled

    @torch.no_grad()
    def __call__(self, row: PaddingFreeBatch) -> torch.Tensor:
        if self.frozen is not None:
            return -token_losses(self.frozen, row)[0]
        with self.policy.pretrained_model.disable_adapter():
            return -token_losses(self.policy.pretrained_model, row)[0]


def reference(config: Config, run: RunParts, policy: ModelWithValueHead) -> ReferenceLogProbs:
    """The reference policy: adapters off for LoRA, else `ref_model` or the starting model."""
    finetuning = config.finetuning
    if finetuning.finetuning_type == "lora":
        return ReferenceLogProbs(policy, None)
    path = finetuning.ref_model or base_model_path(config.model)
    logger.info("Reference model for the KL penalty: %s", path)
    return ReferenceLogProbs(
        policy,
        load_frozen_model(
            config,
            run,
            path,
            finetuning.ref_model_adapters,
            finetuning.ref_model_quantization_bit,
        ),
    )
