"""Training epochs: the paper's PGD method, "fast" and "free" trial training, and the f_b update.

Everything runs on scikit-learn's digits (offline) with the 6-layer ``smallcnn``; no timings are
asserted here (benchmarks/bench_training.py measures speed).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from semirobust_ray.attacks import create_attack
from semirobust_ray.data import load_dataset, to_unit
from semirobust_ray.models import create_model, split
from semirobust_ray.training import (
    CUBLAS_DETERMINISTIC_WORKSPACE,
    TRAIN_METHODS,
    DivergenceError,
    NumericsFlags,
    canonical_memory_format,
    deterministic_numerics,
    evaluate,
    make_optimizer,
    restore_cuda_rng_states,
    seed_everything,
    train_epoch,
)

EPS = 0.1  # digits barely notices 8/255; DESIGN.md §5 uses 0.1 with steps of eps/4
ALPHA = EPS / 4
CPU = torch.device("cpu")
METHODS = list(TRAIN_METHODS)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def pgd(model: torch.nn.Module, seed: int = 0, steps: int = 5):
    return create_attack("pgd", model, eps=EPS, alpha=ALPHA, steps=steps, seed=seed)


def fresh_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("smallcnn", 10, 8, 1)


def run(model, data, method, *, epochs=1, lr=0.05, seed=0, **kw):
    gen = seed_everything(seed)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], lr, 0.9, 5e-4)
    stats = None
    for epoch in range(epochs):
        attack = pgd(model, seed=epoch) if method != "regular" else None
        stats = train_epoch(
            model, data.x_train, data.y_train, opt, batch_size=64, device=CPU, generator=gen,
            attack=attack, method="standard" if method == "regular" else method, **kw,
        )  # fmt: skip
    return stats


def robust_acc(model, data) -> float:
    return evaluate(
        model, data.x_test, data.y_test, batch_size=256, device=CPU,
        attack=pgd(model, seed=123, steps=10),
    )  # fmt: skip


def test_fast_and_free_raise_robust_accuracy_over_regular(digits):
    regular = fresh_model()
    run(regular, digits, "regular", epochs=4)
    fast = fresh_model()
    run(fast, digits, "fast", epochs=4)
    free = fresh_model()
    # 2 passes x 4 replays = 8 steps per batch, about the budget of 4 fast epochs.
    run(free, digits, "free", epochs=2, replays=4)
    clean = evaluate(regular, digits.x_test, digits.y_test, batch_size=256, device=CPU)
    r_reg, r_fast, r_free = (robust_acc(m, digits) for m in (regular, fast, free))
    assert clean > 0.9, clean  # a working classifier, so the comparison means something
    assert r_fast > r_reg + 0.15, (r_reg, r_fast)
    assert r_free > r_reg + 0.15, (r_reg, r_free)


def test_free_replays_each_batch_m_times(digits):
    model = fresh_model()
    gen = seed_everything(0)
    opt = make_optimizer(list(model.parameters()), 0.05, 0.9, 5e-4)
    steps = 0
    original = opt.step

    def counting_step(*args, **kwargs):
        nonlocal steps
        steps += 1
        return original(*args, **kwargs)

    opt.step = counting_step
    n = len(digits.y_train)
    batches = -(-n // 64)
    stats = train_epoch(
        model, digits.x_train, digits.y_train, opt, batch_size=64, device=CPU, generator=gen,
        method="free", eps=EPS, replays=3,
    )  # fmt: skip
    assert steps == 3 * batches  # one optimizer step per replay
    assert stats.examples == n  # an epoch is still one pass over the data


@pytest.mark.parametrize("method", METHODS)
def test_nan_loss_raises_divergence_error(digits, method):
    model = fresh_model()
    with pytest.raises(DivergenceError, match="training loss became"):
        run(model, digits, method, lr=1e30)


@pytest.mark.parametrize("method", METHODS)
def test_split_training_leaves_fa_bit_identical(digits, method):
    model = fresh_model()
    s = split(model, 3)
    fb_keys = set(s.fb_state())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run(model, digits, method)
    after = model.state_dict()
    fa_keys = [k for k in before if k not in fb_keys]
    assert any("running_mean" in k for k in fa_keys)  # BN statistics are part of f*_a
    for k in fa_keys:
        assert torch.equal(before[k], after[k]), f"f*_a changed under {method}: {k}"
    assert any(not torch.equal(before[k], after[k]) for k in fb_keys)


def _graph(output: torch.Tensor) -> tuple[set[str], set[int]]:
    """Node type names and ids of the leaf tensors (AccumulateGrad nodes) behind ``output``."""
    kinds, params, stack, seen = set(), set(), [output.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        kinds.add(type(fn).__name__)
        if hasattr(fn, "variable"):
            params.add(id(fn.variable))
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return kinds, params


@pytest.mark.parametrize("method", METHODS)
def test_autograd_skips_fa_in_update_and_weights_in_attack(digits, method):
    """f_b's update records no f*_a operation; attack steps record no parameter at all."""
    model = fresh_model()
    s = split(model, 2)  # f_b = the two Linear layers; every convolution is in f*_a
    fb_params = {id(p) for p in s.fb_parameters()}
    all_params = {id(p) for p in model.parameters()}
    updates, attacks = [], []

    def inspect(module, _inputs, output):
        if output.requires_grad:
            kinds, leaves = _graph(output)  # leaves include the attacked input itself
            (updates if module.training else attacks).append((kinds, leaves & all_params))

    handle = model.register_forward_hook(inspect)
    try:
        run(model, digits, method)
    finally:
        handle.remove()
    assert updates
    for kinds, params in updates:
        assert params == fb_params
        # "free" needs the input gradient from the same backward, so it must go through f*_a.
        assert ("ConvolutionBackward0" in kinds) == (method == "free"), kinds
    assert bool(attacks) == (method != "free")
    for kinds, params in attacks:
        assert not params and "ConvolutionBackward0" in kinds


def test_standard_matches_plain_reference_loop(digits):
    """The optimised epoch computes exactly what the straightforward loop computes."""
    a, b = fresh_model(1), fresh_model(1)
    split(a, 3), split(b, 3)
    run(a, digits, "standard")
    gen = seed_everything(0)
    opt = make_optimizer([p for p in b.parameters() if p.requires_grad], 0.05, 0.9, 5e-4)
    attack = pgd(b, seed=0)
    b.train()
    order = torch.randperm(len(digits.y_train), generator=gen)
    for i in range(0, len(order), 64):
        idx = order[i : i + 64]
        xb, yb = to_unit(digits.x_train[idx]), digits.y_train[idx]
        loss = F.cross_entropy(b(attack(xb, yb)), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_channels_last_and_bf16_options_train(digits):
    model = fresh_model()
    stats = run(model, digits, "standard", channels_last=True, bf16=True)
    assert stats.accuracy > 0.3 and stats.loss == stats.loss


def test_unknown_method_is_one_line_error(digits):
    model = fresh_model()
    opt = make_optimizer(list(model.parameters()), 0.05, 0.9, 5e-4)
    with pytest.raises(ValueError) as err:
        train_epoch(
            model, digits.x_train, digits.y_train, opt, batch_size=64, device=CPU,
            generator=seed_everything(0), method="fgsm",
        )  # fmt: skip
    msg = str(err.value)
    assert "\n" not in msg and "'fgsm'" in msg
    assert all(m in msg for m in TRAIN_METHODS)


def test_fast_without_eps_or_attack_says_what_is_missing(digits):
    model = fresh_model()
    opt = make_optimizer(list(model.parameters()), 0.05, 0.9, 5e-4)
    with pytest.raises(ValueError, match="needs eps"):
        train_epoch(
            model, digits.x_train, digits.y_train, opt, batch_size=64, device=CPU,
            generator=seed_everything(0), method="fast",
        )  # fmt: skip


def _conv_weight(model: torch.nn.Module) -> torch.Tensor:
    """A conv weight whose NCHW and NHWC layouts differ (the first conv has one channel)."""
    return next(
        m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1
    )


def test_evaluation_uses_the_devices_canonical_memory_format(digits):
    """Evaluated networks are in one layout per device whatever was done to them before, so
    an evaluation before any training epoch (Acc_sr) runs the same kernels as one after."""
    assert canonical_memory_format(torch.device("cuda")) == torch.channels_last
    assert canonical_memory_format(CPU) == torch.contiguous_format
    model = fresh_model()
    run(model, digits, "regular", channels_last=True)
    assert _conv_weight(model).is_contiguous(memory_format=torch.channels_last)
    assert not _conv_weight(model).is_contiguous()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate(model, digits.x_test[:32], digits.y_test[:32], batch_size=32, device=CPU)
    assert _conv_weight(model).is_contiguous()  # back to CPU's NCHW, values unchanged
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # An explicit channels_last=False trains NCHW even after the model was NHWC.
    model.to(memory_format=torch.channels_last)
    run(model, digits, "regular", channels_last=False)
    assert _conv_weight(model).is_contiguous()


def test_seed_everything_applies_the_deterministic_option(restore_numerics):
    assert restore_numerics.cudnn_allow_tf32  # the session runs with PyTorch's defaults
    seed_everything(0, deterministic=True)
    on = NumericsFlags.current()
    assert on == NumericsFlags(
        cudnn_deterministic=True,
        cudnn_benchmark=False,
        deterministic_algorithms=True,
        deterministic_warn_only=True,
        cudnn_allow_tf32=False,
        matmul_precision="highest",
    )
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_DETERMINISTIC_WORKSPACE
    seed_everything(1)  # None: the process's settings stay as they are
    assert NumericsFlags.current() == on
    seed_everything(2, deterministic=False)
    off = NumericsFlags.current()
    assert not off.cudnn_deterministic and not off.deterministic_algorithms
    assert off.cudnn_allow_tf32 and not off.cudnn_benchmark  # PyTorch's defaults
    assert off == NumericsFlags.for_config(False)


def test_deterministic_numerics_restores_the_callers_flags(restore_numerics):
    torch.backends.cudnn.benchmark = True  # a caller's own choice, not the default
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"
    mine = NumericsFlags.current()
    with deterministic_numerics(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark and not torch.backends.cudnn.allow_tf32
        # A workspace setting the user chose is kept (":16:8" is the other deterministic one).
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert NumericsFlags.current() == mine


def test_cuda_rng_restore_takes_what_this_machine_has(monkeypatch):
    """A checkpoint from a 2-GPU machine restores device 0 on a 1-GPU machine and nothing on a
    CPU-only one, without raising (the real CUDA path runs in tests/test_gpu.py)."""
    states = [torch.full((16,), i, dtype=torch.uint8) for i in range(2)]
    calls: list[tuple[torch.Tensor, int]] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: calls.append((s, device)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert restore_cuda_rng_states(states) == 0 and calls == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert restore_cuda_rng_states(states) == 1
    assert len(calls) == 1 and calls[0][1] == 0 and torch.equal(calls[0][0], states[0])
    assert restore_cuda_rng_states([]) == 0  # an older or CPU-written checkpoint: nothing
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    calls.clear()
    assert restore_cuda_rng_states(states) == 2 and [d for _, d in calls] == [0, 1]
