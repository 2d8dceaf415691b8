"""Tests of the EDGE / KSG estimators and the class-conditional layer MI (semirobust_ray.mi).

Tolerances are what the estimators meet on these exact seeds *and* what we expect them to meet
for any seed (each one has at least 2x headroom over the errors measured over several data
seeds); the reasoning is in each docstring. All values are bits.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from semirobust_ray.mi import (
    LayerPairMI,
    _balanced_chunks,
    default_proj_dim,
    edge_mi,
    ksg_mi,
    layer_mi,
    mi_estimate,
    project_layer_outputs,
)


def gaussian_pair(n: int, d: int, r: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """d independent coordinate pairs with correlation r; true MI = -d/2 * log2(1 - r^2)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = r * x + math.sqrt(1.0 - r * r) * rng.standard_normal((n, d))
    return x, y, -0.5 * d * math.log2(1.0 - r * r)


# ---------------------------------------------------------------------------------------------
# Closed forms
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "r", "tol"),
    [
        (2000, 0.0, 0.03),
        (2000, 0.5, 0.06),
        (2000, 0.9, 0.15),
        (20000, 0.0, 0.01),
        (20000, 0.5, 0.03),
        (20000, 0.9, 0.02),
        (20000, 0.99, 0.03),
    ],
)
def test_edge_1d_gaussian_closed_form(n: int, r: float, tol: float) -> None:
    """1-D: |error| <= tol. Measured errors at N=20k over 5 data seeds are <= 0.01 bits (the
    reference EDGE: up to 0.15); at r = 0.99 the data's own sampling error of the MI is about
    0.01 bits (std of the pointwise MI r / sqrt(N) nats), hence 0.03. At N=2000: <= 0.035."""
    x, y, true = gaussian_pair(n, 1, r)
    assert abs(edge_mi(x, y) - true) <= tol


@pytest.mark.parametrize(
    ("n", "r", "lo", "hi"),
    [
        (5000, 0.0, 0.0, 0.3),
        (5000, 0.5, -0.5, 0.3),
        (20000, 0.5, -0.3, 0.35),
        (20000, 0.9, -0.8, 0.3),
    ],
)
def test_edge_4d_gaussian_within_issue_bounds(n: int, r: float, lo: float, hi: float) -> None:
    """4-D (4 coordinate pairs): lo <= error <= hi.

    Honest bound: a histogram estimator *underestimates* large multi-dimensional MI (buckets
    large enough to be occupied are too coarse); extrapolating the ensemble to width 0 leaves
    about -0.4 bits at r=0.9, N=20k (true 4.79; median of the widths: -1.6); the issue's target
    is a third of the reference's error (5.21 / 3 = 1.74). At r = 0.5 the extrapolation lands
    +0.05..+0.16 over 5 data seeds. Independent data stays below 0.3 (reference: 1-2 bits)."""
    x, y, true = gaussian_pair(n, 4, r)
    err = edge_mi(x, y) - true
    assert lo <= err <= hi


@pytest.mark.parametrize(("d", "r", "tol"), [(1, 0.5, 0.03), (1, 0.9, 0.05), (4, 0.9, 0.8)])
def test_ksg_gaussian_closed_form(d: int, r: float, tol: float) -> None:
    """KSG (k=3) at N=3000: within 0.05 bits in 1-D and 0.8 bits in 4-D at r=0.9, where EDGE is
    off by about 2 bits -- which is why it is offered as the alternative."""
    x, y, true = gaussian_pair(3000, d, r, seed=1)
    assert abs(ksg_mi(x, y) - true) <= tol


def test_bias_reductions_help_where_the_histogram_is_coarse() -> None:
    """Grassberger counts + extrapolation to width 0 (the defaults) against EDGE's median of a
    narrow ensemble with the Miller-Madow correction, on the cases where buckets are coarse
    for the density: 1-D r = 0.99 (measured |error| 0.009 vs 0.020) and 4-D r = 0.9 (0.42 vs
    1.60 bits). Independent 1-D data stays within 0.005 bits of 0 either way."""
    old = {"combine": "median", "bias_correction": "miller-madow"}
    for d, r in [(1, 0.99), (4, 0.9)]:
        x, y, true = gaussian_pair(20000, d, r)
        assert abs(edge_mi(x, y) - true) < 0.6 * abs(edge_mi(x, y, **old) - true)
    x, y, _ = gaussian_pair(20000, 1, 0.0)
    assert edge_mi(x, y) < 0.005 and edge_mi(x, y, **old) < 0.005


def test_deterministic_invertible_map_gives_high_mi() -> None:
    """y = x^3 + x is strictly monotone, so I(X; Y) is infinite; the estimate must be large
    (>= 6 bits; in practice ~log2(N/occupancy) = 8.6) and never above log2(N)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(4000)
    est = edge_mi(x, x**3 + x)
    assert 6.0 <= est <= math.log2(4000)
    # A 4-D invertible linear map: far above the 4-D independent level.
    x4 = rng.standard_normal((4000, 4))
    a = rng.standard_normal((4, 4)) + 3 * np.eye(4)
    assert edge_mi(x4, x4 @ a) >= 3.0


@pytest.mark.parametrize("d", [1, 4, 40])
def test_shuffle_invariance_is_exact(d: int) -> None:
    """Ranks, bucket counts and k-NN distances do not depend on sample order, and the final sum
    runs over buckets in key order, so a permutation gives the *identical* float (d=40 also
    exercises the random projection to d' = 4)."""
    x, y, _ = gaussian_pair(3000, d, 0.6, seed=4)
    base = edge_mi(x, y, seed=5)
    for s in range(3):
        perm = np.random.default_rng(s).permutation(x.shape[0])
        assert edge_mi(x[perm], y[perm], seed=5) == base


def test_determinism_and_seed_effect() -> None:
    """Same seed -> same value; another seed changes only the bucket offsets (and projection),
    which moves the estimate by far less than its bias (< 0.05 bits here)."""
    x, y, _ = gaussian_pair(3000, 20, 0.5, seed=6)
    a, b, c = edge_mi(x, y, seed=1), edge_mi(x, y, seed=1), edge_mi(x, y, seed=2)
    assert a == b
    assert abs(a - c) < 0.5
    xs, ys, _ = gaussian_pair(3000, 1, 0.5, seed=6)
    assert abs(edge_mi(xs, ys, seed=1) - edge_mi(xs, ys, seed=2)) < 0.05


def test_no_global_rng_use() -> None:
    """The estimators neither read nor reseed numpy's global RNG."""
    x, y, _ = gaussian_pair(500, 3, 0.5)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    edge_mi(x, y, seed=0)
    ksg_mi(x, y)
    assert np.array_equal(np.random.get_state()[1], before)


@pytest.mark.parametrize("n", [5, 20, 100])
@pytest.mark.parametrize("kwargs", [{}, {"bias_correction": False, "floor": 0.001, "cap": 100.0}])
def test_mi_never_exceeds_log2_n(n: int, kwargs: dict) -> None:
    """A plug-in bucket MI is at most log2(N) (N_ij N / (N_i M_j) <= N); perfectly dependent
    data is the worst case. This is the per-class bound of the layer MI."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 3))
    est = edge_mi(x, x, **kwargs)
    assert 0.0 <= est <= math.log2(n) + 1e-12


def test_cap_and_combine_modes() -> None:
    """Median and mean of the same narrow ensemble agree; extrapolating a wide ensemble to width
    0 removes part of the discretisation bias, so at r = 0.999 (true 4.48 bits, where buckets
    are far too coarse for the ridge) it lands closer to the truth than either."""
    x, y, true = gaussian_pair(2000, 1, 0.999)
    assert edge_mi(x, y, cap=2.0) <= 2.0
    median, mean = edge_mi(x, y, combine="median"), edge_mi(x, y, combine="mean")
    assert abs(median - mean) < 0.1
    assert abs(edge_mi(x, y) - true) < min(abs(median - true), abs(mean - true))
    with pytest.raises(ValueError, match="combine"):
        edge_mi(x, y, combine="max")
    with pytest.raises(ValueError, match="n_widths"):
        edge_mi(x, y, n_widths=1)  # one width cannot be extrapolated
    assert edge_mi(x, y, n_widths=1, combine="median") > 0
    with pytest.raises(ValueError, match="bias_correction"):
        edge_mi(x, y, bias_correction="jackknife")


def test_mi_estimate_dispatch() -> None:
    x, y, _ = gaussian_pair(1000, 1, 0.5)
    assert mi_estimate(x, y, estimator="edge", seed=3) == edge_mi(x, y, seed=3)
    assert mi_estimate(x, y, estimator="ksg", k=4) == ksg_mi(x, y, k=4)
    with pytest.raises(ValueError, match=r"'edge', 'ksg'"):
        mi_estimate(x, y, estimator="mine")


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="same number"):
        edge_mi(np.zeros(10), np.zeros(11))
    with pytest.raises(ValueError, match="NaN"):
        edge_mi(np.array([0.0, np.nan, 1.0]), np.zeros(3))
    # Constant data carries no information; must not divide by zero.
    assert edge_mi(np.ones((50, 2)), np.arange(50.0)) == 0.0


def test_default_proj_dim() -> None:
    assert default_proj_dim(20000, 65536) == 5
    assert default_proj_dim(1000, 65536) == 3
    assert default_proj_dim(100, 65536) == 1
    assert default_proj_dim(20000, 4) == 4
    assert default_proj_dim(5, 100) == 1


def test_real_data_digits_halves() -> None:
    """scikit-learn digits (1797 real 8x8 images): the top and bottom halves of a digit share
    information; breaking the pairing by a permutation destroys it (both 32-D, projected to
    d' = 3; measured 0.51 vs 0.10 bits -- the residual is the 6-D bucket bias at N = 1797)."""
    x = load_digits().data
    top, bottom = x[:, :32], x[:, 32:]
    paired = edge_mi(top, bottom)
    perm = np.random.default_rng(0).permutation(len(x))
    shuffled = edge_mi(top, bottom[perm])
    assert paired > 0.5
    assert shuffled < 0.15
    assert paired > 4 * shuffled


# ---------------------------------------------------------------------------------------------
# Layer MI
# ---------------------------------------------------------------------------------------------


def tiny_cnn() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3, padding=1),
        torch.nn.BatchNorm2d(6),
        torch.nn.ReLU(),
        torch.nn.Conv2d(6, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 8 * 8, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 10),
    )


def trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [
        (n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.images[:600] / 16.0, dtype=torch.float32).unsqueeze(1)
    return x, torch.tensor(d.target[:600], dtype=torch.int64)


def test_layer_mi_pairs_and_model_untouched(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """One LayerPairMI per consecutive pair, j numbered from first_index, finite and in
    [0, log2 N_class]; the model's mode, parameters, buffers and hooks are unchanged."""
    x, y = digits
    model = tiny_cnn()
    model(x[:64])  # give BatchNorm non-trivial state in train mode first
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    layers = trainable(model)  # 4 layers: conv0, conv3, lin6, lin8
    res = layer_mi(model, layers, x, y, first_index=1, batch_size=100)
    assert [r.j for r in res] == [2, 3, 4]
    assert [(r.prev, r.next) for r in res] == [("0", "3"), ("3", "6"), ("6", "8")]
    assert all(isinstance(r, LayerPairMI) for r in res)
    max_class = np.bincount(y.numpy()).max()
    assert all(math.isfinite(r.bits) and 0.0 <= r.bits <= math.log2(max_class) for r in res)
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(not m._forward_hooks for m in model.modules())

    # A slice of the list (split at depth 2) keeps paper numbering.
    tail = layer_mi(model, layers[1:], x, y, first_index=2, batch_size=100)
    assert [r.j for r in tail] == [3, 4]
    assert [r.bits for r in tail] == [r.bits for r in res[1:]]


def test_layer_mi_removes_hooks_on_failure(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    model = tiny_cnn().eval()
    with pytest.raises(RuntimeError):
        layer_mi(model, trainable(model), x[:, :, :4], y, first_index=1)  # wrong input size
    assert all(not m._forward_hooks for m in model.modules())


def test_layer_mi_ksg_and_bad_estimator(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    model = tiny_cnn().eval()
    res = layer_mi(model, trainable(model), x, y, first_index=1, estimator="ksg")
    assert len(res) == 3 and all(r.bits >= 0 for r in res)
    with pytest.raises(ValueError, match="valid choices"):
        layer_mi(model, trainable(model), x, y, first_index=1, estimator="bogus")


def test_projection_shapes_and_batch_independence(
    digits: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Each layer comes back as N x min(D_l, d'); the projection matrix is fixed per layer, so
    the batch size changes nothing but float rounding."""
    x, _ = digits
    model = tiny_cnn().eval()
    layers = trainable(model)
    a = project_layer_outputs(model, layers, x, proj_dim=5, batch_size=600)
    b = project_layer_outputs(model, layers, x, proj_dim=5, batch_size=37)
    assert [f.shape for f in a] == [(600, 5)] * 4
    for fa, fb in zip(a, b, strict=True):
        np.testing.assert_allclose(fa, fb, rtol=1e-4, atol=1e-4)
    wide = project_layer_outputs(model, layers, x, proj_dim=20, batch_size=600)
    assert wide[-1].shape == (600, 10)  # the 10 logits are kept, not projected up


def test_layer_mi_memory_is_o_n_dprime() -> None:
    """A hooked layer whose full output would take N x D x 4 bytes = 1.07 GB (N=1024 images x
    262,144 floats) must raise the process's peak RSS by less than 0.5 GB over what one
    batch already needs (the start-up peak of torch varies with the machine's load, so the
    bound is on the increase). Materialising the layer before projecting would add >= 1.07 GB."""
    script = textwrap.dedent(
        """
        import resource, torch
        from semirobust_ray.mi import layer_mi
        torch.manual_seed(0)
        up = torch.nn.Upsample(scale_factor=64)  # 1x8x8 -> 1x512x512 = 262,144 floats
        head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                   torch.nn.Linear(16, 10))
        model = torch.nn.Sequential(up, head).eval()
        x = torch.rand(1024, 1, 8, 8)
        y = torch.arange(1024) % 4
        with torch.no_grad():
            model(x[:64])  # one batch: the memory any implementation needs
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
        res = layer_mi(model, [("up", up), ("fc", head[2])], x, y, first_index=1, batch_size=64)
        assert len(res) == 1 and res[0].bits >= 0
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).resolve().parents[1],  # so the child imports this checkout
    )
    base_gb, peak_gb = (float(v) for v in out.stdout.strip().splitlines()[-2:])
    assert peak_gb - base_gb < 0.5, f"peak RSS {base_gb:.2f} -> {peak_gb:.2f} GB"


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_and_sequential_identical(
    ray_session, digits: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Per-(pair, class) seeds come from (seed, j, class), so Ray tasks and the sequential loop
    give bit-identical numbers, for both estimators."""
    x, y = digits
    model = tiny_cnn().eval()
    layers = trainable(model)
    for est in ("edge", "ksg"):
        seq = layer_mi(model, layers, x, y, first_index=1, use_ray=False, estimator=est, seed=7)
        par = layer_mi(model, layers, x, y, first_index=1, use_ray=True, estimator=est, seed=7)
        auto = layer_mi(model, layers, x, y, first_index=1, estimator=est, seed=7)  # Ray is up
        assert seq == par == auto


def test_ray_chunks_explicit_count_identical(
    ray_session, digits: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Any grouping of the (pair, class) estimates into Ray tasks gives the same numbers: the
    driver uses its free CPUs (2 here), and an explicit task count of 1, 4 or more tasks than
    estimates changes nothing."""
    import time

    from semirobust_ray.mi import _ray_slots

    # Free CPUs are counted now: wait until the previous test's tasks have released theirs.
    deadline = time.monotonic() + 30
    while _ray_slots(ray_session)[0] < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ray_slots(ray_session) == (2, False)  # the driver holds no CPU of its own
    x, y = digits
    model = tiny_cnn().eval()
    layers = trainable(model)
    seq = layer_mi(model, layers, x, y, first_index=1, use_ray=False, seed=3)
    for n in (1, 4, 1000):
        assert (
            layer_mi(model, layers, x, y, first_index=1, use_ray=True, ray_tasks=n, seed=3) == seq
        )


def test_ray_inside_placement_group_uses_reserved_cpus(
    ray_session, digits: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """A trial-like task in a placement group of [its own CPU, one CPU reserved for MI] that
    captures child tasks sees one task slot and computes one chunk itself (so the estimates
    use both CPUs), with the sequential numbers."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from semirobust_ray.mi import _ray_slots

    x, y = digits
    model = tiny_cnn().eval()
    layers = trainable(model)
    pg = ray_session.util.placement_group([{"CPU": 1}, {"CPU": 1}])
    ray_session.get(pg.ready())
    try:

        def trial() -> tuple[tuple[int, bool], list[LayerPairMI]]:
            # Only importable names in here: the function travels to the worker by value.
            hooked = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
            # Ray tasks asked for: work this small would run in-process by default.
            res = layer_mi(model, hooked, x, y, first_index=1, seed=9, use_ray=True)
            return _ray_slots(ray_session), res

        strategy = PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=0,
            placement_group_capture_child_tasks=True,
        )  # fmt: skip
        remote = ray_session.remote(num_cpus=1, scheduling_strategy=strategy)(trial)
        slots, res = ray_session.get(remote.remote())
    finally:
        ray_session.util.remove_placement_group(pg)
    assert slots == (1, True)
    linear = [(n, m) for n, m in layers if isinstance(m, torch.nn.Linear)]
    assert res == layer_mi(model, linear, x, y, first_index=1, use_ray=False, seed=9)


def test_small_mi_runs_in_process_even_where_ray_is_up(monkeypatch) -> None:
    """``use_ray=None`` sends the estimates to Ray only from RAY_MIN_WORK samples on (a cold
    Ray worker costs seconds, BENCHMARKS.md); ``use_ray=True`` always does."""
    import semirobust_ray.mi as mi_module

    sent: list[int] = []
    monkeypatch.setattr(mi_module, "_ray_wanted", lambda use_ray: use_ray is not False)
    monkeypatch.setattr(mi_module, "_run_jobs", lambda args, costs, n: sent.append(len(args)))
    rng = np.random.default_rng(0)
    args = [(rng.normal(size=(40, 2)), rng.normal(size=(40, 2)), "edge", i, {}) for i in range(3)]
    costs = [40.0] * 3
    values = mi_module._estimate_jobs(args, costs, None, None)
    assert not sent and len(values) == 3  # 120 samples: in-process
    mi_module._estimate_jobs(args, costs, True, None)
    assert sent == [3]
    monkeypatch.setattr(mi_module, "RAY_MIN_WORK", 120)
    mi_module._estimate_jobs(args, costs, None, None)
    assert sent == [3, 3]


def test_balanced_chunks() -> None:
    """Every job lands in exactly one chunk; loads differ by at most the largest job."""
    costs = [float(c) for c in np.random.default_rng(0).integers(50, 300, size=53)]
    for n in (1, 2, 3, 7, 60):
        chunks = _balanced_chunks(costs, n)
        assert len(chunks) == min(n, len(costs)) and all(chunks)
        assert sorted(i for ch in chunks for i in ch) == list(range(len(costs)))
        loads = [sum(costs[i] for i in ch) for ch in chunks]
        assert max(loads) - min(loads) <= max(costs)


def test_layer_mi_measures_the_network_in_eval_mode(digits: tuple[torch.Tensor, torch.Tensor]):
    """After f_b training the model is left in train mode; ρ must still be measured with
    BatchNorm's running statistics (and no dropout), and must not update f_b's statistics."""
    from semirobust_ray.models import create_model, split

    x, y = digits
    torch.manual_seed(0)
    model = create_model("smallcnn", 10, 8, 1)
    s = split(model, 4)  # f_b: two conv blocks with BatchNorm, then the two Linear layers
    opt = torch.optim.SGD(s.fb_parameters(), lr=0.1)
    model.train()
    for start in range(0, 256, 64):  # batch statistics now differ from the running ones
        loss = torch.nn.functional.cross_entropy(
            model(x[start : start + 64]), y[start : start + 64]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    layers = s.layers[s.split_index - 1 :]
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    assert model.training
    in_train_mode = layer_mi(model, layers, x, y, first_index=s.split_index, batch_size=100)
    modules = dict(model.named_modules())
    assert all(modules[name].training for name in s.fb_modules)  # modes restored
    for k, v in model.state_dict().items():
        if "running" in k:
            assert torch.equal(v, stats[k]), k
    model.eval()
    in_eval_mode = layer_mi(model, layers, x, y, first_index=s.split_index, batch_size=100)
    assert [r.bits for r in in_train_mode] == [r.bits for r in in_eval_mode]
