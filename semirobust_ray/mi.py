"""Mutual information between layers: the EDGE estimator, a KSG alternative, class-conditional layer MI.

Algorithm 1 of the paper measures, for every pair of consecutive trainable layers j-1, j of
(f*_a, f_b), the class-conditional mutual information

    I_j = sum_y pi(y) * I(f^(j-1)(X + delta); f^(j)(X + delta) | y)

on the adversarial test set, estimated with EDGE (Noshad, Zeng & Hero, 2019). This module holds

* :func:`edge_mi` -- our EDGE: p-stable random projection, hashing into buckets of width epsilon,
  dependence-graph counts N_i, M_j, N_ij, pointwise log-ratio clipped at ``cap`` (U), an
  ensemble of widths combined by median or mean. Vectorised (sort-based counting, no Python loop
  over samples or buckets), seeded through ``np.random.default_rng`` only.
* :func:`ksg_mi` -- the Kraskov-Stoegbauer-Grassberger k-NN estimator, the documented
  alternative for multi-dimensional, high-MI data (``estimator="ksg"``).
* :func:`layer_mi` -- forward hooks, batch-wise projection (memory O(N*d') per layer, never
  O(N*D)), per-(pair, class) estimates run sequentially or, grouped into one chunk per
  available CPU, as Ray tasks, with identical results.

Guarantees: every estimate is in bits, in [0, min(cap, log2 N)]; it is a deterministic function
of the samples and ``seed``, exactly invariant to
the sample order (with ``copula=True``), and the same sequentially or as Ray tasks.

Our EDGE departs from the reference ``EDGE_4_4_1.py`` (Noshad, Zeng & Hero, "Scalable Mutual
Information Estimation using Dependence Graphs", ICASSP 2019) where the reference is wrong in
more than one dimension: the bucket width comes from joint-space k-NN distances (``occupancy``),
coordinates are rank-transformed first (``copula``), log counts get Grassberger's correction
(``bias_correction``), the width ensemble is extrapolated to width 0 (``combine``), and the
projection is smaller (:func:`default_proj_dim`). Why, and the errors measured against the
reference on jointly Gaussian data of known MI: BENCHMARKS.md, "Mutual information (EDGE)".
A histogram estimator still underestimates large MI in several dimensions; use
``estimator="ksg"`` when absolute values matter. EDGE stays the default for fidelity to the paper.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma
from scipy.stats import rankdata

from semirobust_ray.models import eval_mode

__all__ = [
    "ESTIMATORS",
    "LayerPairMI",
    "default_proj_dim",
    "edge_mi",
    "ksg_mi",
    "layer_mi",
    "mi_estimate",
    "project_layer_outputs",
]

_LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _as_2d(a: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim > 2:
        arr = arr.reshape(arr.shape[0], -1)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be an N x d array, got shape {np.shape(a)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = _as_2d(x, "x"), _as_2d(y, "y")
    if xa.shape[0] != ya.shape[0]:
        raise ValueError(
            f"x and y need the same number of samples, got {xa.shape[0]} and {ya.shape[0]}"
        )
    return xa, ya


def default_proj_dim(n_samples: int, dim: int) -> int:
    """Projection size d' = min(d, floor(log2(N / 10) / 2)), at least 1, for each variable.

    The reference uses floor(log2(N / 10)) per variable; then even at two buckets per coordinate
    the joint grid has (N/10)^2 cells, nearly all joint buckets are singletons and independent
    data reads as dependent (50-D independent Gaussians, N = 10,000: 0.41 bits at d' = 6 versus
    0.14 at d' = 4). Halving the exponent keeps 2^(dx' + dy') <= N / 10.
    """
    rule = math.floor(math.log2(n_samples / 10.0) / 2.0) if n_samples > 10 else 1
    return int(max(1, min(dim, rule)))


def _project(a: np.ndarray, d_out: int, rng: np.random.Generator) -> np.ndarray:
    """p-stable (Gaussian) random projection of standardised columns to ``d_out`` dims.

    Columns are scaled to unit std first (the reference's N(0, 1/(s*sqrt(d))) entries do the
    same); a no-op when the data already has at most ``d_out`` columns, since then projecting
    could only lose information.
    """
    n, d = a.shape
    if d <= d_out:
        return a
    std = a.std(axis=0)
    std[std < 1e-12] = 1.0
    w = rng.normal(0.0, 1.0 / math.sqrt(d), size=(d, d_out))
    return (a / std) @ w


def _two_streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent generators from ``seed``: the projection's and the estimator's own.

    Independent so that whether or not a projection happens never shifts the second stream.
    """
    first, second = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    return first, second


def _standardise(a: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-std columns (constant columns are only centred)."""
    return (a - a.mean(0)) / np.where(a.std(0) > 1e-12, a.std(0), 1.0)


def _copula(a: np.ndarray) -> np.ndarray:
    """Per-column empirical CDF in (0, 1); ties get their average rank so order cannot matter."""
    return (rankdata(a, axis=0, method="average") - 0.5) / a.shape[0]


def _row_ids(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bucket id of every row of an integer code matrix and the bucket sizes.

    Exact mixed-radix int64 keys when the grid fits (always, for the projected sizes EDGE uses);
    otherwise the slower ``np.unique(axis=0)``.
    """
    codes = codes - codes.min(axis=0)
    span = codes.max(axis=0).astype(np.int64) + 1
    if float(np.prod(span.astype(np.float64))) < 2.0**62:
        strides = np.concatenate(([1], np.cumprod(span[:-1]))).astype(np.int64)
        key = codes @ strides
        _, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
    else:
        _, inv, cnt = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return inv.reshape(-1), cnt


# --------------------------------------------------------------------------------------------
# EDGE
# --------------------------------------------------------------------------------------------


def _knn_width(z: np.ndarray, k: int, n_query: int) -> float:
    """Cube side 2*median(r_k) with r_k the Chebyshev distance to the k-th neighbour.

    Query points are spread evenly over the lexicographic order of the rows, so which points are
    queried does not depend on the sample order.
    """
    n = z.shape[0]
    k = int(min(max(k, 1), n - 1))
    order = np.lexsort(z.T[::-1])
    q = z[order[np.linspace(0, n - 1, min(n, n_query)).astype(np.int64)]]
    dist, _ = cKDTree(z).query(q, k=k + 1, p=np.inf)
    return 2.0 * float(np.median(dist[:, -1]))


def _grassberger_table(n: int) -> np.ndarray:
    """G(m) for m = 0..n (G(0) unused): Grassberger's (2003) bias-reduced stand-in for log m.

    H = log N - (1/N) sum_buckets m G(m) has far less finite-sample bias than the plug-in
    entropy when buckets hold only a few samples; G(m) -> log m for large m.
    """
    m = np.arange(n + 1, dtype=np.float64)
    m[0] = 1.0
    half = 0.5 * (-1.0) ** m * (digamma((m + 1.0) / 2.0) - digamma(m / 2.0))
    return digamma(m) + half


def _edge_once(
    zx: np.ndarray,
    zy: np.ndarray,
    eps: float,
    bx: np.ndarray,
    by: np.ndarray,
    cap: float,
    floor: float | None,
    correction: str,
    g_table: np.ndarray | None,
) -> float:
    n = zx.shape[0]
    ix, cx = _row_ids(np.floor((zx + bx) / eps).astype(np.int64))
    iy, cy = _row_ids(np.floor((zy + by) / eps).astype(np.int64))
    # Joint bucket = pair of marginal bucket ids; this encoding is exact (< n^2 values).
    joint = ix.astype(np.int64) * np.int64(cy.size) + iy
    keys, cxy = np.unique(joint, return_counts=True)
    # Sum over buckets in sorted-key order rather than over samples: the floating-point sum then
    # does not depend on the sample order, so shuffling the data gives the identical result.
    ni = cx[keys // cy.size]
    mj = cy[keys % cy.size]
    if correction == "grassberger":
        g = g_table if g_table is not None else _grassberger_table(n)
        # I = H_G(X) + H_G(Y) - H_G(X, Y), written pointwise like EDGE's log-ratio.
        pmi = (math.log(n) + g[cxy] - g[ni] - g[mj]) / _LN2
    else:
        pmi = np.log2(cxy * float(n) / (ni.astype(np.float64) * mj))
    if floor is not None:
        pmi = np.maximum(pmi, floor)
    pmi = np.minimum(pmi, cap)
    est = float(np.dot(cxy, pmi)) / n
    if correction == "miller-madow":
        est -= (cxy.size - cx.size - cy.size + 1) / (2.0 * n * _LN2)
    return est


def _extrapolation_weights(t: np.ndarray, power: float) -> np.ndarray:
    """Weights w with sum(w) = 1 and sum(w * t**power) = 0 of least norm.

    ``w @ estimates`` is the intercept of the least-squares line estimates ~ a + b * t**power,
    i.e. the ensemble value extrapolated to width 0 -- EDGE's optimally weighted ensemble with
    one bias term.
    """
    design = np.stack([np.ones_like(t), t**power], axis=1)
    return np.linalg.pinv(design)[0]


def _edge_settings(
    combine: str, bias_correction: str | bool, n_widths: int, width_ratio: float | None
) -> tuple[str, float]:
    """Validate :func:`edge_mi`'s ensemble options; return (correction name, width ratio)."""
    if combine not in ("extrapolate", "median", "mean"):
        raise ValueError(f"combine must be 'extrapolate', 'median' or 'mean', got {combine!r}")
    if isinstance(bias_correction, bool):
        correction = "miller-madow" if bias_correction else "none"
    else:
        correction = bias_correction
    if correction not in ("grassberger", "miller-madow", "none"):
        raise ValueError(
            "bias_correction must be 'grassberger', 'miller-madow' or 'none', "
            f"got {bias_correction!r}"
        )
    if n_widths < 1 or (combine == "extrapolate" and n_widths < 2):
        raise ValueError("n_widths must be >= 1 (>= 2 to extrapolate)")
    if width_ratio is None:
        width_ratio = 1.0 if combine == "extrapolate" else 0.1
    if combine == "extrapolate" and width_ratio <= 0:
        raise ValueError("extrapolation needs width_ratio > 0")
    return correction, width_ratio


def _edge_coordinates(
    xa: np.ndarray,
    ya: np.ndarray,
    proj_dim: int | None,
    copula: bool,
    proj_rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Project both variables (x first, from one stream), then copula- or z-transform them."""
    n = xa.shape[0]
    zx = _project(xa, proj_dim or default_proj_dim(n, xa.shape[1]), proj_rng)
    zy = _project(ya, proj_dim or default_proj_dim(n, ya.shape[1]), proj_rng)
    if copula:
        return _copula(zx), _copula(zy)
    # A common width for all coordinates needs comparable scales.
    return _standardise(zx), _standardise(zy)


def _base_width(
    zx: np.ndarray,
    zy: np.ndarray,
    epsilon: float | None,
    occupancy: int,
    n_query: int,
    copula: bool,
) -> float:
    """Smallest ensemble width: ``epsilon`` or the joint-space k-NN rule, floored."""
    if epsilon is None:
        eps0 = _knn_width(np.hstack([zx, zy]), occupancy, n_query)
    else:
        eps0 = float(epsilon)
    # Many identical rows give a zero k-NN distance; one rank step is the finest useful width.
    return max(eps0, 1.0 / zx.shape[0] if copula else 1e-9)


def _width_ensemble(
    zx: np.ndarray,
    zy: np.ndarray,
    eps0: float,
    ts: np.ndarray,
    off_rng: np.random.Generator,
    cap: float,
    floor: float | None,
    correction: str,
) -> np.ndarray:
    """One EDGE estimate per width eps0 * t, each with fresh offsets b ~ U[0, width)."""
    g_table = _grassberger_table(zx.shape[0]) if correction == "grassberger" else None
    estimates = np.empty(ts.size)
    for i, t in enumerate(ts):
        eps = eps0 * t
        bx = off_rng.uniform(0.0, eps, zx.shape[1])
        by = off_rng.uniform(0.0, eps, zy.shape[1])
        estimates[i] = _edge_once(zx, zy, eps, bx, by, cap, floor, correction, g_table)
    return estimates


def _combine_ensemble(
    estimates: np.ndarray, ts: np.ndarray, combine: str, bias_power: float | None, dim: int
) -> float:
    """The ensemble's value: extrapolated to width 0, or its median or mean.

    ``dim`` is dx' + dy', the joint dimension the default bias exponent depends on.
    """
    if combine == "extrapolate":
        power = bias_power if bias_power is not None else 1.0 + 1.0 / dim
        return float(_extrapolation_weights(ts, power) @ estimates)
    return float(np.median(estimates) if combine == "median" else np.mean(estimates))


def edge_mi(
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int = 0,
    proj_dim: int | None = None,
    n_widths: int = 20,
    width_ratio: float | None = None,
    combine: str = "extrapolate",
    bias_power: float | None = None,
    cap: float = 10.0,
    occupancy: int = 10,
    copula: bool = True,
    bias_correction: str | bool = "grassberger",
    floor: float | None = None,
    epsilon: float | None = None,
    n_query: int = 512,
) -> float:
    """EDGE estimate of I(X; Y) in bits.

    Args:
        x: N x dx samples (a 1-D array is read as N x 1).
        y: N x dy samples paired with ``x``.
        seed: seeds the projection and the bucket offsets (``np.random.default_rng``); the same
            seed always gives the same value, in any process.
        proj_dim: d' of the p-stable projection, for both variables; ``None`` uses
            :func:`default_proj_dim` (EDGE's log rule, halved for the joint space). Data with
            at most d' columns is not projected.
        n_widths: ensemble size L; widths epsilon * t, t in linspace(1, 1 + width_ratio, L),
            each with its own random offset b ~ U[0, width).
        width_ratio: relative spread of the ensemble widths; ``None``: 1.0 (t in [1, 2]) for
            ``"extrapolate"``, EDGE's 0.1 for ``"median"`` / ``"mean"``.
        combine: ``"extrapolate"`` (least-squares fit of estimate ~ a + b * t**bias_power over
            the ensemble, returning a, i.e. the value extrapolated to width 0; EDGE's weighted
            ensemble with one bias term), ``"median"`` or ``"mean"``.
        bias_power: exponent of the width bias removed by ``"extrapolate"``; ``None``:
            1 + 1/(dx' + dy'), the exponent measured on Gaussian data (module docstring).
        cap: U, upper clip of every pointwise log-ratio and of the result.
        occupancy: target number of samples per joint bucket (k of the k-NN width rule).
        copula: rank-transform every coordinate first (MI-invariant; see the module docstring).
        bias_correction: finite-sample correction of the bucket counts: ``"grassberger"``
            (default; Grassberger's G(m) in place of log m), ``"miller-madow"`` (subtract
            (K_xy - K_x - K_y + 1) / (2 N ln 2); ``True`` means this too) or ``False`` /
            ``"none"`` (plain plug-in, as the reference).
        floor: lower clip of every pointwise log-ratio (the reference uses 0.001); ``None``
            keeps negative terms, which is unbiased for independent data.
        epsilon: fixed bucket width (in copula units if ``copula``) instead of the k-NN rule.
        n_query: number of query points for the k-NN width.

    Returns:
        The estimate, clipped to [0, min(cap, log2 N)].
    """
    # Longer than 60 lines: 14 documented options take 52 of them; the body is 11 steps.
    xa, ya = _check_pair(x, y)
    correction, width_ratio = _edge_settings(combine, bias_correction, n_widths, width_ratio)
    n = xa.shape[0]
    if n < 2:
        return 0.0
    proj_rng, off_rng = _two_streams(seed)
    zx, zy = _edge_coordinates(xa, ya, proj_dim, copula, proj_rng)
    eps0 = _base_width(zx, zy, epsilon, occupancy, n_query, copula)
    ts = np.linspace(1.0, 1.0 + width_ratio, n_widths)
    estimates = _width_ensemble(zx, zy, eps0, ts, off_rng, cap, floor, correction)
    est = _combine_ensemble(estimates, ts, combine, bias_power, zx.shape[1] + zy.shape[1])
    return float(min(max(est, 0.0), cap, math.log2(n)))


# --------------------------------------------------------------------------------------------
# KSG
# --------------------------------------------------------------------------------------------


def ksg_mi(
    x: np.ndarray,
    y: np.ndarray,
    *,
    k: int = 3,
    seed: int = 0,
    proj_dim: int | None = None,
    jitter: float = 1e-10,
) -> float:
    """Kraskov-Stoegbauer-Grassberger estimator (algorithm 1) of I(X; Y) in bits.

    psi(k) + psi(N) - <psi(n_x + 1) + psi(n_y + 1)> with max-norm k-NN radii in the joint space
    and strict-inequality neighbour counts in each marginal space, all through k-d trees
    (O(N log N) in low dimensions).

    Args:
        x, y: N x dx and N x dy samples (1-D arrays are read as N x 1).
        k: number of neighbours; 3 is the usual bias/variance compromise.
        seed: seeds the optional projection and the tie-breaking jitter.
        proj_dim: project both variables to this many dims first (``None``: no projection).
        jitter: relative scale of uniform noise added to break ties (KSG assumes none);
            0 disables it.

    Returns:
        The estimate in bits, clipped at 0 from below.
    """
    xa, ya = _check_pair(x, y)
    n = xa.shape[0]
    if n <= k:
        return 0.0
    proj_rng, noise_rng = _two_streams(seed)
    if proj_dim is not None:
        xa, ya = _project(xa, proj_dim, proj_rng), _project(ya, proj_dim, proj_rng)
    # Unit-scale coordinates so one max-norm radius means the same in every direction.
    xa, ya = _standardise(xa), _standardise(ya)
    if jitter > 0:
        xa = xa + noise_rng.uniform(-jitter, jitter, xa.shape)
        ya = ya + noise_rng.uniform(-jitter, jitter, ya.shape)
    joint = np.hstack([xa, ya])
    dist, _ = cKDTree(joint).query(joint, k=k + 1, p=np.inf)
    # Strictly-closer counts: shrink the radius by one ulp; the point itself is counted, which
    # supplies the +1 inside psi(n + 1).
    radius = np.nextafter(dist[:, -1], 0.0)
    nx = cKDTree(xa).query_ball_point(xa, radius, p=np.inf, return_length=True)
    ny = cKDTree(ya).query_ball_point(ya, radius, p=np.inf, return_length=True)
    nats = digamma(k) + digamma(n) - np.mean(digamma(nx) + digamma(ny))
    return float(max(nats / _LN2, 0.0))


ESTIMATORS: dict[str, Callable[..., float]] = {"edge": edge_mi, "ksg": ksg_mi}


def _estimator_named(estimator: str) -> Callable[..., float]:
    """The estimator called ``estimator``; a ValueError listing the valid names otherwise."""
    try:
        return ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(
            f"unknown MI estimator {estimator!r}; valid choices: {sorted(ESTIMATORS)}"
        ) from None


def mi_estimate(
    x: np.ndarray, y: np.ndarray, *, estimator: str = "edge", seed: int = 0, **kw: Any
) -> float:
    """Dispatch to an estimator by name (``"edge"`` or ``"ksg"``); MI in bits."""
    return _estimator_named(estimator)(x, y, seed=seed, **kw)


# --------------------------------------------------------------------------------------------
# Class-conditional layer MI
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerPairMI:
    """Class-conditional MI I_j = sum_y pi(y) I(f^(j-1); f^(j) | y) of one consecutive pair.

    ``j`` is the 1-based forward index (paper numbering) of the later layer ``next``; ``prev``
    is the layer before it. ``bits`` is the estimate in bits.
    """

    j: int
    prev: str
    next: str
    bits: float


def _derived_seed(*parts: int) -> int:
    # SeedSequence mixes the parts, so nearby (seed, j, class) triples give unrelated streams,
    # and the value is the same in every process (no global RNG involved).
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class _ProjectingHook:
    """Forward hook keeping one layer's batch outputs, projected to at most ``proj_dim`` dims.

    W_l is drawn on the first batch, once the layer's width D_l is known, and reused for every
    later batch; a layer with D_l <= proj_dim is kept as is.
    """

    def __init__(self, proj_dim: int, seed: int, layer_number: int) -> None:
        self.proj_dim = proj_dim
        self.seed = seed
        self.layer_number = layer_number
        self.weight: torch.Tensor | None = None
        self.decided = False
        self.chunks: list[torch.Tensor] = []

    def _projection(self, dim: int, device: torch.device) -> torch.Tensor | None:
        """W_l (dim x proj_dim, entries N(0, 1/dim)) on ``device``; None when dim <= proj_dim."""
        if dim <= self.proj_dim:
            return None
        # A CPU generator seeded by (seed, layer number): the same W_l on every device and for
        # every slice of the layer list.
        gen = torch.Generator(device="cpu").manual_seed(_derived_seed(self.seed, self.layer_number))
        w = torch.randn(dim, self.proj_dim, generator=gen) / math.sqrt(dim)
        return w.to(device)

    def __call__(self, _module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        flat = out.detach().reshape(out.shape[0], -1).float()
        if not self.decided:
            self.weight = self._projection(flat.shape[1], flat.device)
            self.decided = True
        w = self.weight
        self.chunks.append((flat if w is None else flat @ w).cpu())

    def collected(self, name: str) -> np.ndarray:
        """All batches of layer ``name`` as one N x d array."""
        if not self.chunks:
            raise RuntimeError(f"layer {name!r} produced no output during the forward pass")
        return torch.cat(self.chunks).numpy()


def _forward_hooked(
    model: torch.nn.Module,
    layers: Sequence[tuple[str, torch.nn.Module]],
    hooks: Sequence[_ProjectingHook],
    x: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> None:
    """Run ``model`` over ``x`` in batches with ``hooks[i]`` on ``layers[i]``, then remove them.

    The hooks are removed even if the forward pass fails.
    """
    handles = [
        module.register_forward_hook(hook) for (_, module), hook in zip(layers, hooks, strict=True)
    ]
    try:
        # Eval mode whatever mode the caller left the model in: ρ describes the network as it
        # classifies (BatchNorm running statistics, no dropout), and measuring must not update
        # f_b's running statistics.
        with eval_mode(model), torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                model(x[start : start + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()


def project_layer_outputs(
    model: torch.nn.Module,
    layers: Sequence[tuple[str, torch.nn.Module]],
    x: torch.Tensor,
    *,
    proj_dim: int,
    batch_size: int = 256,
    seed: int = 0,
    first_index: int = 1,
    device: str | torch.device = "cpu",
) -> list[np.ndarray]:
    """Run ``model`` over ``x`` and return every hooked layer's output projected to <= proj_dim dims.

    Each batch's output is flattened and multiplied by a fixed Gaussian matrix W_l (D_l x d',
    entries N(0, 1/D_l), drawn from a generator seeded by (seed, layer number), the layer number
    being ``first_index`` + position, so a sliced layer list reuses the same matrices) inside the
    forward hook, so only N x d' floats per layer are ever kept; a layer with D_l <= d' is kept
    as is. The model must already be on ``device``; it runs in eval mode (every module's mode is
    restored afterwards), its parameters and buffers are not touched, and the hooks are removed
    even if the forward pass fails.

    Returns:
        One float32 array of shape N x min(D_l, proj_dim) per entry of ``layers``, in order.
    """
    if proj_dim < 1:
        raise ValueError("proj_dim must be >= 1")
    device = torch.device(device)
    hooks = [_ProjectingHook(proj_dim, seed, first_index + pos) for pos in range(len(layers))]
    _forward_hooked(model, layers, hooks, x, batch_size, device)
    return [hook.collected(name) for (name, _), hook in zip(layers, hooks, strict=True)]


def _estimate_task(
    a: np.ndarray, b: np.ndarray, estimator: str, seed: int, kwargs: dict[str, Any]
) -> float:
    return mi_estimate(a, b, estimator=estimator, seed=seed, **kwargs)


def _estimate_chunk(items: list[tuple[Any, ...]]) -> list[float]:
    """Several (pair, class) estimates in one Ray task: one round trip for many milliseconds."""
    return [_estimate_task(*args) for args in items]


def _ray_wanted(use_ray: bool | None) -> bool:
    if use_ray is not None:
        return use_ray
    # Only look at Ray if the caller already imported it: importing Ray costs seconds.
    ray_mod = sys.modules.get("ray")
    return bool(ray_mod is not None and ray_mod.is_initialized())


# Tasks per usable CPU: a few, so a CPU slowed by other work does not hold up the rest (static
# chunks wait for the slowest), yet each task still carries several estimates.
_CHUNKS_PER_CPU = 4


def _ray_slots(ray: Any) -> tuple[int, bool]:
    """(Ray tasks of one CPU that can run at once for the caller, caller holds a CPU itself).

    Inside a trial whose placement group captures child tasks, the tasks can use the group's
    CPUs minus the caller's own (the ``mi_cpus`` bundles); elsewhere, the CPUs Ray has free now.
    A caller that is itself a Ray worker holding CPUs (a trial) computes one share locally
    instead of idling in ``ray.get``; the driver holds none, so it only waits.
    """
    ctx = ray.get_runtime_context()
    own = 0.0
    if ctx.worker.mode == ray.WORKER_MODE:
        own = float(ctx.get_assigned_resources().get("CPU", 0.0))
    pg = ray.util.get_current_placement_group()
    if pg is not None and ctx.should_capture_child_tasks_in_placement_group:
        slots = sum(float(b.get("CPU", 0.0)) for b in pg.bundle_specs) - own
    else:
        slots = float(ray.available_resources().get("CPU", 0.0))
    return max(int(slots), 0), own >= 1.0


def _balanced_chunks(costs: Sequence[float], n_chunks: int) -> list[list[int]]:
    """Longest-processing-time split of job indices into ``n_chunks`` non-empty lists.

    Deterministic (ties broken by index); which chunk computes a job never changes its value.
    """
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    chunks: list[list[int]] = [[] for _ in range(min(n_chunks, len(costs)))]
    loads = [0.0] * len(chunks)
    for i in order:
        c = min(range(len(chunks)), key=lambda k: (loads[k], k))
        chunks[c].append(i)
        loads[c] += costs[i]
    return [sorted(ch) for ch in chunks]


def _run_jobs(
    task_args: list[tuple[Any, ...]], costs: list[float], ray_tasks: int | None
) -> list[float]:
    """Run the estimates as a few Ray tasks per usable CPU plus, when the caller holds a CPU,
    one share in-process; with no CPU to spare, all in-process."""
    import ray  # lazy: the science runs without Ray

    slots, local = _ray_slots(ray)
    n_tasks = ray_tasks if ray_tasks is not None else _CHUNKS_PER_CPU * slots
    if slots < 1 or n_tasks < 1 or len(task_args) < 2:
        return _estimate_chunk(task_args)
    # The caller's share: one chunk of 1 / (slots + 1) of the work, computed while the tasks run.
    mine = _balanced_chunks(costs, slots + 1)[0] if local else []
    taken = set(mine)
    rest = [i for i in range(len(task_args)) if i not in taken]
    chunks = [[rest[j] for j in ch] for ch in _balanced_chunks([costs[i] for i in rest], n_tasks)]
    remote = ray.remote(num_cpus=1)(_estimate_chunk)
    refs = [remote.remote([task_args[i] for i in ch]) for ch in chunks]
    values = [math.nan] * len(task_args)
    for i, v in zip(mine, _estimate_chunk([task_args[i] for i in mine]), strict=True):
        values[i] = v
    for ch, vals in zip(chunks, ray.get(refs), strict=True):
        for i, v in zip(ch, vals, strict=True):
            values[i] = v
    return values


#: Below this much work (the sum, over the per-(pair, class) estimates, of the samples each
#: one sees: pairs x images), ``use_ray=None`` computes in-process even where Ray is running.
#: Measured (BENCHMARKS.md, "MI inside a trial: where the quickstart's 42 s went"): the MI
#: tasks of a trial start in a cold Ray worker that imports torch and this package, 4.4-10 s
#: on 2 cores (5.2-7.8 s per quickstart trial, against 0.05-0.15 s in-process), while EDGE
#: computes about 7.9 us per sample in-process (100,000 samples in 0.79 s, "Layer MI:
#: sequential vs Ray tasks"). However many CPUs the tasks get, they save at most the
#: in-process time, so they can only pay off above about 4.4 s / 7.9 us = 560,000 samples.
RAY_MIN_WORK = 500_000


def _estimate_jobs(
    task_args: list[tuple[Any, ...]],
    costs: list[float],
    use_ray: bool | None,
    ray_tasks: int | None,
) -> list[float]:
    """Every estimate, as Ray tasks when wanted, else in-process; the values are the same.

    ``use_ray=None`` wants Ray only when it is running and the work is at least
    :data:`RAY_MIN_WORK`: below it the tasks' overhead exceeds what they would compute.
    """
    if use_ray is None and sum(costs) < RAY_MIN_WORK:
        return _estimate_chunk(task_args)
    if _ray_wanted(use_ray):
        return _run_jobs(task_args, costs, ray_tasks)
    return _estimate_chunk(task_args)


def _label_array(y: torch.Tensor | np.ndarray, n_inputs: int) -> np.ndarray:
    """The labels as a flat array, checked against the number of inputs."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    labels = np.asarray(y).reshape(-1)
    if labels.shape[0] != n_inputs:
        raise ValueError(f"x has {n_inputs} samples but y has {labels.shape[0]}")
    return labels


def _pair_class_jobs(
    feats: Sequence[np.ndarray],
    labels: np.ndarray,
    classes: np.ndarray,
    estimator: str,
    seed: int,
    first_index: int,
    estimator_kwargs: dict[str, Any],
) -> tuple[list[tuple[int, int]], list[tuple[Any, ...]], list[float]]:
    """One estimate per (pair i, class index ci): the jobs, their task arguments, their costs.

    Pair i joins ``feats[i - 1]`` and ``feats[i]``; its seed derives from (seed, j, class).
    """
    members = [np.flatnonzero(labels == c) for c in classes]
    jobs = [(i, ci) for i in range(1, len(feats)) for ci in range(len(classes))]
    # Slicing happens on the driver: per-class slices are small (N_y x d'), so shipping them as
    # task arguments is cheaper than a round trip through the object store.
    task_args: list[tuple[Any, ...]] = [
        (
            feats[i - 1][members[ci]],
            feats[i][members[ci]],
            estimator,
            _derived_seed(seed, first_index + i, int(classes[ci])),
            estimator_kwargs,
        )
        for i, ci in jobs
    ]
    # Cost of an estimate ~ its class size; chunks of similar cost finish together.
    costs = [float(members[ci].size) for _, ci in jobs]
    return jobs, task_args, costs


def _class_weighted_pairs(
    layers: Sequence[tuple[str, torch.nn.Module]],
    jobs: Sequence[tuple[int, int]],
    values: Sequence[float],
    priors: np.ndarray,
    first_index: int,
) -> list[LayerPairMI]:
    """I_j = sum_y pi(y) I(f^(j-1); f^(j) | y) of every pair from the per-(pair, class) values."""
    per_pair = np.zeros(len(layers))
    for (i, ci), v in zip(jobs, values, strict=True):
        per_pair[i] += priors[ci] * v
    return [
        LayerPairMI(
            j=first_index + i, prev=layers[i - 1][0], next=layers[i][0], bits=float(per_pair[i])
        )
        for i in range(1, len(layers))
    ]


def layer_mi(
    model: torch.nn.Module,
    layers: Sequence[tuple[str, torch.nn.Module]],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    first_index: int,
    batch_size: int = 256,
    proj_dim: int | None = None,
    seed: int = 0,
    estimator: str = "edge",
    device: str | torch.device = "cpu",
    use_ray: bool | None = None,
    ray_tasks: int | None = None,
    **estimator_kwargs: Any,
) -> list[LayerPairMI]:
    """Class-conditional MI between consecutive layers, I_j = sum_y pi(y) I(f^(j-1); f^(j) | y).

    Args:
        model: the network, already on ``device``; it is evaluated in eval mode whatever mode
            it is in, and nothing about it is changed.
        layers: forward-ordered (name, module) list: the last trainable layer of f_a followed by
            all trainable layers of f_b.
        x: evaluation inputs (already attacked), N x C x H x W floats in [0, 1].
        y: true labels, N int64.
        first_index: 1-based layer number of ``layers[0]``; pair i gets j = first_index + i.
        batch_size: forward batch size; memory is O(batch * D + N * d') per layer.
        proj_dim: d' of the per-layer projection; ``None`` uses :func:`default_proj_dim` of
            the largest class size (1 for ~100 samples per class, 3 for 1,000).
        seed: base seed; each estimate uses a seed derived from (seed, j, class), so results do
            not depend on execution order or process.
        estimator: ``"edge"`` (default) or ``"ksg"``.
        device: where the forward pass runs.
        use_ray: run the per-(pair, class) estimates as Ray tasks; ``None`` means "if Ray is
            initialised and the work (pairs x images) is at least :data:`RAY_MIN_WORK`", below
            which a cold Ray worker costs more than the estimates. Ray and sequential give
            identical numbers. An estimate takes only
            milliseconds, so they are grouped: a few tasks (4) per CPU the caller can use
            (inside a trial, the CPUs its placement group reserves for MI), each computing a
            chunk of estimates of similar total size, and a caller that holds a CPU (a trial)
            computes a 1/(CPUs + 1) share itself; with no CPU to spare everything runs
            in-process.
        ray_tasks: number of Ray tasks for the work not done by the caller, instead of 4 per
            usable CPU.
        **estimator_kwargs: passed to the estimator (e.g. ``cap``, ``combine``, ``k``).

    Returns:
        One :class:`LayerPairMI` per consecutive pair, in forward order.
    """
    # Longer than 60 lines: 16 documented parameters take 47 of them; the body is 9 steps.
    _estimator_named(estimator)
    if len(layers) < 2:
        raise ValueError("layer_mi needs at least two layers to form a pair")
    labels = _label_array(y, x.shape[0])
    classes, counts = np.unique(labels, return_counts=True)
    if proj_dim is None:
        proj_dim = default_proj_dim(int(counts.max()), 1 << 30)
    feats = project_layer_outputs(
        model,
        layers,
        x,
        proj_dim=proj_dim,
        batch_size=batch_size,
        seed=seed,
        first_index=first_index,
        device=device,
    )
    jobs, task_args, costs = _pair_class_jobs(
        feats, labels, classes, estimator, seed, first_index, estimator_kwargs
    )
    values = _estimate_jobs(task_args, costs, use_ray, ray_tasks)
    return _class_weighted_pairs(layers, jobs, values, counts / counts.sum(), first_index)
