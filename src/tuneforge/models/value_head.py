"""A scalar value head on a causal language model: the reward model of `rm`, the critic of `ppo`.

The head is one linear layer, hidden size -> 1, reading the model's last hidden state (after
the final norm). It is saved beside the adapter or the full weights as `value_head.safetensors`
with the keys `v_head.summary.weight` / `v_head.summary.bias`: the file name and keys of
LLaMA-Factory (TRL's `AutoModelForCausalLMWithValueHead`), so reward models trained with either
tool load in the other. The language model's own files stay exactly what `save_pretrained`
writes, so a reward model's weights load with plain transformers / peft too.

A padding-free batch (one row of several sequences, see data/batch.py) is scored at each
sequence's last token: that position has read the whole sequence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tuneforge.data.batch import PaddingFreeBatch
from tuneforge.errors import ModelError

VALUE_HEAD_FILE = "value_head.safetensors"
VALUE_HEAD_BIN = "value_head.bin"  # LLaMA-Factory writes this with save_safetensors: false
WEIGHT_KEY = "v_head.summary.weight"
BIAS_KEY = "v_head.summary.bias"


class ValueHead(torch.nn.Module):
    """hidden state [..., hidden] -> scalar [...]. `summary` keeps TRL's module name."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = torch.nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # the head is kept in float32 while training; the hidden state may be bf16
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


class ModelWithValueHead(torch.nn.Module):
    """A causal LM (plain or a peft model) and its value head, trained and saved together."""

    def __init__(self, model: Any, head: ValueHead) -> None:
        super().__init__()
        self.pretrained_model = model
        self.v_head = head

    @property
    def config(self) -> Any:
        return self.pretrained_model.config

    def forward(
        self, batch: PaddingFreeBatch, positions: torch.Tensor, with_logits: bool = False
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Values (and, if asked, next-token logits) at `positions` of a one-row batch.

        Logits are computed only at `positions` (none when not asked for): the vocabulary
        projection is the largest matmul of a small model.

        Returns:
            (logits [len(positions), vocab] or None, values [len(positions)]).
        """
        keep = positions if with_logits else positions[:0]
        output = self.pretrained_model(
            **batch.model_inputs(), logits_to_keep=keep, output_hidden_states=True, use_cache=False
        )
        values = self.v_head(output.hidden_states[-1][0, positions])
        return (output.logits[0] if with_logits else None), values

    def save_pretrained(self, folder: str | Path, **kwargs: Any) -> None:
        """The model's own files (adapter or full weights), then value_head.safetensors.

        Of a peft model's adapters only the active one is saved: PPO loads a reward adapter
        beside the trained one, and it belongs to the reward model's folder, not this one.
        """
        if hasattr(self.pretrained_model, "peft_config"):
            kwargs.setdefault("selected_adapters", [self.pretrained_model.active_adapter])
        self.pretrained_model.save_pretrained(folder, **kwargs)
        if kwargs.get("is_main_process", True):
            save_value_head(self.v_head, folder)


def sequence_scores(model: ModelWithValueHead, batch: PaddingFreeBatch) -> torch.Tensor:
    """One score per sequence of a padding-free row: the value at its last token."""
    return model(batch, batch.sequence_ends())[1]


def new_value_head(model: Any) -> ValueHead:
    """A freshly initialised head sized to `model`'s hidden state."""
    head = ValueHead(model.config.get_text_config().hidden_size)
    return head.to(next(model.parameters()).device)


def save_value_head(head: ValueHead, folder: str | Path) -> Path:
    """Writes `folder/value_head.safetensors` with LLaMA-Factory's (TRL's) keys."""
    from safetensors.torch import save_file

    path = Path(folder) / VALUE_HEAD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        WEIGHT_KEY: head.summary.weight.detach().cpu().contiguous(),
        BIAS_KEY: head.summary.bias.detach().cpu().contiguous(),
    }
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def load_value_head(folder: str | Path, hidden_size: int | None = None) -> ValueHead | None:
    """The value head saved in `folder` (ours or LLaMA-Factory's), or None if it has none.

    Raises:
        ModelError: the file exists but cannot be read, lacks the value head's keys, or (with
            `hidden_size`) does not fit a model of that hidden size.
    """
    folder = Path(folder)
    tensors = _read_tensors(folder)
    if tensors is None:
        return None
    if WEIGHT_KEY not in tensors or BIAS_KEY not in tensors:
        raise ModelError(
            f"{folder}: the value head file has {', '.join(sorted(tensors)) or 'no tensors'}, "
            f"not `{WEIGHT_KEY}` and `{BIAS_KEY}`; is it a reward model saved by tuneforge or "
            "LLaMA-Factory?"
        )
    weight = tensors[WEIGHT_KEY].float()
    if hidden_size is not None and weight.numel() != hidden_size:
        raise ModelError(
            f"{folder}: the value head's `{WEIGHT_KEY}` has shape {tuple(weight.shape)}, not "
            f"(1, {hidden_size}) for this model's hidden size: a reward model of another model?"
        )
    head = ValueHead(weight.shape[-1])
    head.summary.weight.data.copy_(weight.reshape(1, -1))
    head.summary.bias.data.copy_(tensors[BIAS_KEY].float().reshape(1))
    return head


def _read_tensors(folder: Path) -> dict[str, torch.Tensor] | None:
    if (folder / VALUE_HEAD_FILE).is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / VALUE_HEAD_FILE))
    if (folder / VALUE_HEAD_BIN).is_file():
        try:
            return torch.load(folder / VALUE_HEAD_BIN, map_location="cpu", weights_only=True)
        except Exception as error:  # a pickle that is not a plain dict of tensors
            path = folder / VALUE_HEAD_BIN
            raise ModelError(f"cannot read the value head {path}: {error}") from None
    return None


def require_value_head(folder: str | Path, role: str) -> ValueHead:
    """The value head of `folder`, or a ModelError naming `role` (e.g. `reward_model`)."""
    head = load_value_head(folder)
    if head is None:
        raise ModelError(
            f"`{role}`: {folder} has no {VALUE_HEAD_FILE}; give the output_dir of a "
            "`stage: rm` run (tuneforge or LLaMA-Factory)."
        )
    return head
