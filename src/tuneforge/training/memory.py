"""Keeping a CPU training process's resident memory close to what its tensors need.

Two measures, both about glibc's malloc (see docs/benchmarks.md for the measured effect):

- glibc serves large blocks from mmap only below a threshold that it raises every time such a
  block is freed (up to 32 MiB). After the first few steps every activation therefore comes from
  the heap, whose free holes between live blocks stay resident: on this project's CPU benchmark
  the peak RSS of a LoRA run grows ~700 MB above the model and data for ~200 MB of live
  activations. Fixing the threshold at a few MiB sends the big activation tensors back to mmap
  (returned on free) while small tensors stay on the fast heap.
- Gradients and optimizer state of a full fine-tune are hundreds of 1-3 MB tensors (below that
  threshold), so they live on the heap too; the gradients are freed and reallocated every step
  between activations, and the holes stay resident. `ContiguousTrainingState` gives each of
  them one block per dtype, allocated once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from collections import defaultdict
from typing import Any

import torch
from transformers import TrainerCallback

logger = logging.getLogger("tuneforge")

M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 4 << 20
RELEASE_EVERY_BYTES = 32 << 20  # heap given back while optimizer state moves, in steps of this


@functools.cache
def _glibc() -> Any:
    """glibc through ctypes, or None (not glibc: musl and others manage memory differently)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    has_all = all(hasattr(libc, f) for f in ("mallopt", "malloc_trim", "gnu_get_libc_version"))
    return libc if has_all else None


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fixes glibc's mmap threshold at `threshold` bytes; False where that does not apply
    (not glibc, or the user chose a value through MALLOC_MMAP_THRESHOLD_)."""
    libc = _glibc()
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))


def release_free_heap() -> None:
    """Returns the pages of free heap blocks to the system (glibc's malloc_trim)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


Layout = tuple[torch.Size, torch.dtype, torch.device]


def layout(tensor: torch.Tensor) -> Layout:
    return tensor.shape, tensor.dtype, tensor.device


def contiguous_blocks(layouts: list[Layout], fill=None) -> list[torch.Tensor]:
    """Tensors of the given (shape, dtype, device) layouts, as views into one new block per
    (dtype, device), in order. `fill(i, view)` writes each view's content (default: zeros).
    Layouts rather than tensors, so that a tensor being moved can be freed as soon as `fill`
    has copied it."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, (_, dtype, device) in enumerate(layouts):
        groups[(dtype, device)].append(index)
    views: list[Any] = [None] * len(layouts)
    allocate = torch.zeros if fill is None else torch.empty  # empty: resident as filled
    for (dtype, device), indices in groups.items():
        block = allocate(sum(layouts[i][0].numel() for i in indices), dtype=dtype, device=device)
        offset = 0
        for i in indices:
            shape = layouts[i][0]
            views[i] = block[offset : offset + shape.numel()].view(shape)
            offset += shape.numel()
            if fill is not None:
                fill(i, views[i])
    return views


def contiguous_state_applies(args: Any) -> bool:
    """CPU training whose gradients and optimizer state belong to the Trainer (not to
    DeepSpeed or FSDP)."""
    return args.device.type == "cpu" and not args.deepspeed and not args.fsdp


class ContiguousTrainingState(TrainerCallback):
    """Gradients and optimizer state of the trained parameters in one block per dtype.

    Gradients: the blocks are attached as `.grad` before each step and zeroed after it, so
    backward accumulates into them in place. A parameter that got no gradient in a step has its
    `.grad` removed before the optimizer step, as if it had never been attached, so optimizers
    skip it exactly as they do without this callback. Optimizer state: moved into one block after
    the first optimizer step (optimizers create it lazily), giving the freed heap back as it goes.
    For single-device and DDP CPU training; DeepSpeed and FSDP own their gradients and state.
    """

    def __init__(self) -> None:
        self.parameters: list[torch.nn.Parameter] = []
        self.gradients: list[torch.Tensor] = []
        self.touched: set[int] = set()
        self.hooks: list[Any] = []
        self.state_moved = False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.parameters = [p for p in model.parameters() if p.requires_grad and p.is_contiguous()]
        self.gradients = contiguous_blocks([layout(p) for p in self.parameters])
        self.hooks = [
            p.register_post_accumulate_grad_hook(functools.partial(self._touch, i))
            for i, p in enumerate(self.parameters)
        ]
        self.state_moved = False
        self._attach()

    def _touch(self, index: int, parameter: torch.Tensor) -> None:
        self.touched.add(index)

    def _attach(self) -> None:
        for parameter, gradient in zip(self.parameters, self.gradients):
            parameter.grad = gradient
        self.touched.clear()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        for index, parameter in enumerate(self.parameters):
            if index not in self.touched:
                parameter.grad = None

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if not self.state_moved and optimizer is not None:
            move_optimizer_state(optimizer)
            self.state_moved = True

    def on_step_end(self, args, state, control, **kwargs):
        for gradient in self.gradients:
            gradient.zero_()
        self._attach()  # transformers' zero_grad() has set every .grad to None

    def on_train_end(self, args, state, control, **kwargs):
        for hook in self.hooks:
            hook.remove()
        self.hooks, self.gradients, self.parameters = [], [], []


def move_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Moves every tensor of the optimizer's state (beyond scalars like Adam's `step`) into
    one block per dtype, returning the freed heap to the system every few tens of MB."""
    slots = [
        (per_parameter, key)
        for per_parameter in optimizer.state.values()
        for key, value in per_parameter.items()
        if torch.is_tensor(value) and value.numel() > 1
    ]
    if not slots:
        return
    moved = 0

    def fill(index: int, view: torch.Tensor) -> None:
        nonlocal moved
        per_parameter, key = slots[index]
        view.copy_(per_parameter[key])
        per_parameter[key] = view
        moved += view.numel() * view.element_size()
        if moved >= RELEASE_EVERY_BYTES:
            release_free_heap()
            moved = 0

    contiguous_blocks([layout(per_parameter[key]) for per_parameter, key in slots], fill)
    release_free_heap()
