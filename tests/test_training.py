"""skeptic.training: evaluation modes and chunking, seeded epochs, the clipped step, step
decay, and bit-for-bit agreement with the loops the studies had before they shared these."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn

from skeptic.training import (
    epoch_generator,
    evaluate,
    optimizer_step,
    predict,
    shuffled_batches,
    step_decay_lr,
    train_epoch,
)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)
    )


def _data(n: int = 50, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


# ---- evaluation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_runs_in_eval_mode_and_restores_the_mode_it_found(training):
    model, (x, y) = _model(), _data()
    train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, 10, epoch_generator(0, 0))
    model.train(training)
    stats = _weights(model)
    logits = predict(model, x)
    assert model.training is training
    assert _same(_weights(model), stats)  # BN running statistics untouched
    model.eval()  # eval mode: running statistics, no dropout, so every sample is on its own
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(logits, expected)
    loss, acc = evaluate(model, x, y)
    assert loss == pytest.approx(nn.functional.cross_entropy(expected, y).item(), rel=1e-6)
    assert acc == pytest.approx((expected.argmax(1) == y).float().mean().item())


def test_a_frozen_submodule_stays_in_eval_mode_after_evaluation():
    model, (x, _) = _model(), _data()
    model.train()
    frozen = next(m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d))
    frozen.eval()  # a frozen backbone's BatchNorm inside a model that trains
    predict(model, x)
    assert model.training and not frozen.training


def test_chunked_evaluation_equals_one_batch():
    model, (x, y) = _model(), _data(n=53)
    whole = predict(model, x, chunk=len(x))
    for chunk in (1, 7, 52):
        torch.testing.assert_close(predict(model, x, chunk=chunk), whole, rtol=1e-6, atol=1e-6)
        assert evaluate(model, x, y, chunk=chunk) == pytest.approx(evaluate(model, x, y, chunk=53))
    assert predict(model, x[:0]).shape == (0, 1)  # an empty set does not crash


# ---- one epoch ----------------------------------------------------------------------------------


def test_epoch_generator_depends_on_seed_and_epoch_only():
    def order(seed, epoch):
        return torch.randperm(100, generator=epoch_generator(seed, epoch))

    assert torch.equal(order(3, 2), order(3, 2))
    assert not torch.equal(order(3, 2), order(3, 1))
    assert not torch.equal(order(3, 2), order(4, 2))
    # the seeding every study used before the helper: their sweeps keep their batch orders
    legacy = torch.randperm(100, generator=torch.Generator().manual_seed(3 * 100_003 + 2))
    assert torch.equal(order(3, 2), legacy)


def test_shuffled_batches_cover_every_index_once():
    gen = torch.Generator().manual_seed(0)
    pieces = list(shuffled_batches(23, 5, gen))
    assert [len(p) for p in pieces] == [5, 5, 5, 5, 3]
    assert sorted(torch.cat(pieces).tolist()) == list(range(23))
    kept = list(shuffled_batches(23, 5, torch.Generator().manual_seed(0), drop_last=True))
    assert [len(p) for p in kept] == [5, 5, 5, 5]
    assert all(torch.equal(a, b) for a, b in zip(kept, pieces, strict=False))


def _train(seed: int, epochs: list[int], **kw) -> tuple[list[tuple[float, float]], nn.Module]:
    model, (x, y) = _model(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    results = [train_epoch(model, opt, x, y, 8, epoch_generator(seed, e), **kw) for e in epochs]
    return results, model


def test_seeded_epochs_are_reproducible_and_differ_per_epoch():
    first, a = _train(seed=0, epochs=[0, 1])
    again, b = _train(seed=0, epochs=[0, 1])
    assert first == again and _same(_weights(a), _weights(b))
    _, c = _train(seed=0, epochs=[0, 0])  # epoch 1 replaying epoch 0's order
    assert not _same(_weights(a), _weights(c))


def test_train_epoch_trains_in_train_mode():
    model, (x, y) = _model(), _data()
    model.eval()
    train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, 8, epoch_generator(0, 0))
    assert model.training and model[1].num_batches_tracked.item() == 7  # ceil(50 / 8) batches


def test_forward_drop_last_and_autocast_are_per_batch():
    torch.manual_seed(0)
    model, (x, y) = nn.Linear(6, 3), _data()  # no dropout: its predictions can be replayed
    seen, entered = [], []

    def forward(xb, yb):
        seen.append(len(xb))
        logits = model(xb)
        return logits, nn.functional.cross_entropy(logits, (yb + 1) % 3)  # other targets

    @contextlib.contextmanager
    def autocast():
        entered.append(1)
        yield

    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    gen = epoch_generator(0, 0)
    _, acc = train_epoch(model, opt, x, y, 16, gen, forward=forward, drop_last=True,
                         autocast=autocast)  # fmt: skip
    assert seen == [16, 16, 16] and len(entered) == 3
    order = torch.randperm(50, generator=epoch_generator(0, 0))[:48]  # lr 0: weights unchanged
    logits = torch.cat([model(x[idx]) for idx in order.split(16)])
    assert acc == pytest.approx((logits.argmax(1) == y[order]).float().mean().item())


# ---- the step and the schedule ------------------------------------------------------------------


def test_optimizer_step_clips_the_gradient_norm():
    def update(clip_norm):
        w = nn.Parameter(torch.zeros(4))
        opt = torch.optim.SGD([w], lr=1.0)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        optimizer_step(opt, (w * torch.tensor([30.0, 40.0, 0.0, 0.0])).sum(), clip_norm, sched)
        return w.detach(), opt.param_groups[0]["lr"]

    unclipped, lr = update(None)
    assert unclipped.norm().item() == pytest.approx(50.0) and lr == 0.5  # scheduler stepped
    clipped, _ = update(1.0)
    assert clipped.norm().item() == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(clipped, unclipped / 50, rtol=1e-5, atol=0)  # same direction


def test_step_decay_drops_at_the_floor_of_each_fraction():
    lrs = [step_decay_lr(0.1, e, 6, (0.5, 0.75)) for e in range(6)]
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.001, 0.001])  # floor(4.5) = 4
    # floor(3.75) = 3, where round() would give 4
    assert [step_decay_lr(1.0, e, 5, (0.75,)) for e in (2, 3)] == [1.0, pytest.approx(0.1)]
    assert step_decay_lr(1.0, 0, 10, (0.0,)) == pytest.approx(0.1)  # a drop at 0 is at once
    assert step_decay_lr(1.0, 9, 10, ()) == 1.0


# ---- the loops the studies had before (copied verbatim): same numbers, bit for bit --------------


def _old_epoch(model, opt, x, y, batch_size, gen, clip_norm=None):
    """large_batch's `_epoch` (with clip_norm) and pruning's `train_epoch` (without)."""
    model.train()
    order = torch.randperm(len(x), generator=gen).to(x.device)
    loss_sum = correct = 0.0
    for idx in order.split(batch_size):
        logits = model(x[idx])
        loss = nn.functional.cross_entropy(logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        opt.step()
        loss_sum += loss.item() * len(idx)
        correct += (logits.argmax(1) == y[idx]).sum().item()
    return loss_sum / len(x), correct / len(x)


def _old_evaluate(model, x, y, chunk):
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(xb) for xb in x.split(chunk)])
    model.train()
    loss = nn.functional.cross_entropy(logits, y).item()
    return loss, (logits.argmax(1) == y).float().mean().item()


def _setup() -> tuple:
    model, (x, y) = _model(), _data(n=70)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return model, opt, x, y


def _three_old_epochs(clip_norm: float | None) -> tuple[list, list[torch.Tensor]]:
    model, opt, x, y = _setup()
    numbers = []
    for epoch in range(3):
        for group in opt.param_groups:  # the studies' former lr_at
            group["lr"] = 0.05 * 0.1 ** sum(epoch >= math.floor(f * 3) for f in (0.5, 0.75))
        gen = torch.Generator().manual_seed(7 * 100_003 + epoch)
        numbers.append(_old_epoch(model, opt, x, y, 16, gen, clip_norm))
        numbers.append(_old_evaluate(model, x, y, 32))
    return numbers, _weights(model)


def _three_new_epochs(clip_norm: float | None) -> tuple[list, list[torch.Tensor]]:
    model, opt, x, y = _setup()
    numbers = []
    for epoch in range(3):
        for group in opt.param_groups:
            group["lr"] = step_decay_lr(0.05, epoch, 3, (0.5, 0.75))
        gen = epoch_generator(7, epoch)
        numbers.append(train_epoch(model, opt, x, y, 16, gen, clip_norm=clip_norm))
        numbers.append(evaluate(model, x, y, chunk=32))
    return numbers, _weights(model)


@pytest.mark.parametrize("clip_norm", [None, 0.5])
def test_helpers_reproduce_the_studies_former_loops_exactly(clip_norm):
    old_numbers, old_weights = _three_old_epochs(clip_norm)
    new_numbers, new_weights = _three_new_epochs(clip_norm)
    assert new_numbers == old_numbers  # exact float equality, not approx
    assert _same(new_weights, old_weights)
