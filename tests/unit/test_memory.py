"""Contiguous gradients and optimizer state: training is unchanged, memory is one block each."""

from __future__ import annotations

import io
import weakref

import torch

from tuneforge.training import memory


class TwoPaths(torch.nn.Module):
    """`unused` never takes part in the loss, so it never gets a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(6, 5)
        self.second = torch.nn.Linear(5, 3)
        self.unused = torch.nn.Linear(3, 3)
        self.frozen = torch.nn.Parameter(torch.ones(4), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x))).pow(2).mean()


def train(steps: int, with_callback: bool, accumulation: int = 2, resume_at: int | None = None):
    """transformers' order of events: backward per micro-batch, clip, pre-optimizer, step,
    optimizer, zero_grad, step end."""
    torch.manual_seed(0)
    model = TwoPaths()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    callback = memory.ContiguousTrainingState() if with_callback else None
    if callback:
        callback.on_train_begin(None, None, None, model=model)
    data = torch.randn(steps, accumulation, 8, 6, generator=torch.Generator().manual_seed(1))
    for step in range(steps):
        if step == resume_at:  # the optimizer state goes through a checkpoint file
            buffer = io.BytesIO()
            torch.save(optimizer.state_dict(), buffer)
            buffer.seek(0)
            optimizer.load_state_dict(torch.load(buffer))
        for micro in range(accumulation):
            (model(data[step, micro]) / accumulation).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        if callback:
            callback.on_pre_optimizer_step(None, None, None)
        optimizer.step()
        if callback:
            callback.on_optimizer_step(None, None, None, optimizer=optimizer)
        model.zero_grad()
        if callback:
            callback.on_step_end(None, None, None)
    return model, optimizer, callback


def test_training_is_the_same_with_contiguous_state():
    plain, plain_optimizer, _ = train(5, with_callback=False)
    contiguous, optimizer, _ = train(5, with_callback=True)
    for (name, a), b in zip(plain.state_dict().items(), contiguous.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-7, msg=name)
    # the parameter without gradients was skipped by AdamW (no weight decay, no state)
    torch.testing.assert_close(contiguous.unused.weight.detach(), _initial_unused())
    assert contiguous.unused.weight not in optimizer.state
    assert len(optimizer.state) == len(plain_optimizer.state) == 4


def _initial_unused() -> torch.Tensor:
    torch.manual_seed(0)
    return TwoPaths().unused.weight.detach()


def test_gradients_and_state_each_live_in_one_block():
    model, optimizer, _ = train(2, with_callback=True)
    trained = [p for p in model.parameters() if p.requires_grad]
    # attached again after the last step: views of one zeroed block
    storages = {p.grad.untyped_storage().data_ptr() for p in trained}
    assert len(storages) == 1 and all(not p.grad.any() for p in trained)
    assert model.frozen.grad is None
    tensors = [v for s in optimizer.state.values() for v in s.values() if v.numel() > 1]
    assert len(tensors) == 8  # exp_avg and exp_avg_sq of four parameters
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1


def test_training_continues_the_same_after_the_state_is_reloaded():
    straight, _, _ = train(4, with_callback=True)
    reloaded, _, _ = train(4, with_callback=True, resume_at=2)
    for a, b in zip(straight.parameters(), reloaded.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_train_end_releases_the_blocks():
    _, _, callback = train(1, with_callback=True)
    callback.on_train_end(None, None, None)
    assert callback.gradients == [] and callback.hooks == []


def test_contiguous_blocks_keep_shapes_order_and_content():
    tensors = [torch.randn(2, 3), torch.randn(4, dtype=torch.float64), torch.randn(5)]
    layouts = [memory.layout(tensor) for tensor in tensors]
    copies = memory.contiguous_blocks(layouts, lambda i, view: view.copy_(tensors[i]))
    zeros = memory.contiguous_blocks(layouts)
    for original, copy, zero in zip(tensors, copies, zeros):
        assert copy.shape == original.shape and copy.dtype == original.dtype
        torch.testing.assert_close(copy, original)
        assert not zero.any()
    assert copies[0].untyped_storage().data_ptr() == copies[2].untyped_storage().data_ptr()


def test_moved_optimizer_state_is_freed_as_it_goes(monkeypatch):
    """Each state tensor is released once copied, so moving the state never needs room for
    two copies of it (the heap is given back between copies)."""
    model = torch.nn.Sequential(*(torch.nn.Linear(8, 8) for _ in range(4)))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    old = [
        weakref.ref(value)
        for per_parameter in optimizer.state.values()
        for value in per_parameter.values()
        if value.numel() > 1
    ]
    alive_at_each_release = []
    monkeypatch.setattr(memory, "RELEASE_EVERY_BYTES", 1)
    monkeypatch.setattr(
        memory,
        "release_free_heap",
        lambda: alive_at_each_release.append(sum(ref() is not None for ref in old)),
    )
    memory.move_optimizer_state(optimizer)
    assert alive_at_each_release == [*range(len(old) - 1, -1, -1), 0]
