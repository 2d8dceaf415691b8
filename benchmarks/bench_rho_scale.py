"""Why our ρ are tenths of a bit where the paper reports 2-9 bits: every estimator on the same
saved layer outputs of one network.

Usage:
    python benchmarks/bench_rho_scale.py --search DIR [--reference-edge EDGE_4_4_1.py]
    python benchmarks/bench_rho_scale.py --config quickstart [--set KEY=VALUE ...]
    python benchmarks/bench_rho_scale.py --quick          # untrained smallcnn on digits, < 60 s

The network is the robust baseline (f*_a, f*_b) of a search directory (``baseline/`` and
``search/search_meta.json``), or the cached baseline of a config (trained on first use through
``semirobust_ray.baseline.get_baseline``), or with ``--quick`` an untrained smallcnn. Its
trainable layers' outputs are collected in ONE eval-mode forward pass over a class-stratified
subset of the test images (clean, or with ``--adversarial`` under the config's ``eval_attack``
as trials measure ρ), through the very hooks ``semirobust_ray.mi.layer_mi`` uses: full width,
projected to our default d', and projected to the reference's d'. Every consecutive pair then
gets the class-conditional MI I_j = sum_y pi(y) I(f^(j-1); f^(j) | y), with the per-class
slicing, seeds and class weights of ``layer_mi`` (its own helpers), from

* our EDGE as ``layer_mi`` computes it (default d', default options) -- the project's ρ;
* our EDGE on the reference's d' = floor(log2(N_y / 10)) projection, and on the full width;
* KSG (``mi_estimator: ksg``) on the default projection, and on the full width;
* the reference EDGE (``EDGE_4_4_1.py``, Noshad et al., loaded by ``bench_mi.load_reference_edge``)
  with its defaults on the full-width per-class arrays (what the paper's code sees), and on our
  default projection;
* ablations (a second table, and the JSON): the reference without its second, estimate-driven pass
  (``normalize_epsilon=False``), and our EDGE with the reference's ensemble and floor.

All values are in bits. The table also gives sum_y pi(y) log2 N_y: the value a plug-in MI reaches
when every joint bucket holds one sample (N_ij = N_i = M_j = 1), i.e. the saturation ceiling.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_mi import load_reference_edge  # noqa: E402  (after the path set-up above)

from semirobust_ray.config import config_path, load_config  # noqa: E402
from semirobust_ray.data import TEST_SEED, stratified_subset, to_unit  # noqa: E402
from semirobust_ray.experiment import Experiment, prepare  # noqa: E402
from semirobust_ray.mi import (  # noqa: E402
    _class_weighted_pairs,
    _forward_hooked,
    _pair_class_jobs,
    _ProjectingHook,
    default_proj_dim,
    layer_mi,
    mi_estimate,
)
from semirobust_ray.models import trainable_layers  # noqa: E402
from semirobust_ray.options import add_config_options  # noqa: E402

#: The reference's ``Compute_MI`` sums ``Nij * clip(math.log(Nij * N / (Ni * Mj), 2), 0.001, U)``
#: over joint buckets and divides by N: a base-2 logarithm, so ``EDGE`` already returns bits
#: (its second pass, ``normalize_epsilon``, only rescales the widths and calls itself again).
#: Stated as an explicit factor so every reference value below is visibly converted.
REFERENCE_BITS_PER_UNIT = 1.0

#: Width above which a layer is not kept at full width (memory N x D floats): it is projected to
#: this many dims instead and its row says so (``full_exact: false``). Every layer of the
#: project's networks at 32 x 32 inputs (AlexNet's largest: 16,384) is below it.
DEFAULT_MAX_FULL_DIM = 65536

#: Quick mode's test images: 30 per digit class (the reference needs N_y >= 20 for wide layers).
QUICK_SAMPLES = 300

#: The main table's columns: (key, header).
MAIN_COLUMNS = (
    ("ours_default", "ours (default d')"),
    ("ours_reference_dim", "ours (ref d')"),
    ("ours_full", "ours (full D)"),
    ("ksg_default", "KSG (default d')"),
    ("ksg_full", "KSG (full D)"),
    ("reference_full", "reference (full D)"),
    ("reference_default_dim", "reference (our d')"),
)
ABLATION_COLUMNS = (
    ("reference_full_one_pass", "reference, normalize_epsilon=False (full D)"),
    ("ours_reference_like", "ours, reference's median/10 widths/no correction/floor (ref d')"),
)

#: A per-class estimator: (x_y, y_y, derived seed) -> MI in bits.
Estimate = Callable[[np.ndarray, np.ndarray, int], float]


@dataclass
class Network:
    """The network whose layers are measured, with where it came from."""

    exp: Experiment
    model: torch.nn.Module
    source: str
    acc_star: float | None = None


@dataclass
class Features:
    """Every trainable layer's outputs on the same inputs, at the widths the estimators see."""

    labels: np.ndarray
    classes: np.ndarray
    counts: np.ndarray
    dims: list[int]  # D_l, the layer's full width
    full: list[np.ndarray]  # N x min(D_l, max_full_dim)
    default: list[np.ndarray]  # N x min(D_l, d'), d' as layer_mi chooses it
    reference_dim: list[np.ndarray]  # N x min(D_l, reference d')
    proj_default: int
    proj_reference: int
    max_full_dim: int
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# The network and its inputs
# --------------------------------------------------------------------------------------------


def load_network(args: argparse.Namespace) -> Network:
    """The robust network of ``--search``, the config's cached baseline, or (``--quick``) an
    untrained smallcnn on digits."""
    if args.search:
        from semirobust_ray.searchdir import load_search_baseline, stored_config
        from semirobust_ray.storage import Store

        store = Store.of(args.search)
        config = stored_config(store)
        baseline = load_search_baseline(store)
        if baseline is None:
            raise SystemExit(f"{args.search} holds no baseline/baseline.json")
        exp = prepare(config, device=args.device)
        source = f"search directory {args.search} (robust baseline, key {baseline.key})"
    else:
        config = load_config(config_path(args.config or "quickstart"), args.overrides)
        exp = prepare(config, device=args.device)
        if args.quick:
            torch.manual_seed(config.seed)  # the same untrained weights on every run
            model = exp.build_model()
            return Network(exp, model, f"untrained {config.model} on {config.dataset} (--quick)")
        from semirobust_ray.baseline import get_baseline

        baseline = get_baseline(exp)
        source = f"config {args.config} (robust baseline {baseline.path})"
    model = exp.build_model()
    model.load_state_dict(baseline.robust_state)
    return Network(exp, model, source, acc_star=baseline.acc_star)


def measurement_inputs(
    net: Network, samples: int, adversarial: bool, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A class-stratified subset of the test images (float, [0, 1]) and their labels.

    The subset is drawn as ``trial_mi`` draws its ``mi_samples`` subset (TEST_SEED), from the
    test split the config evaluates on (``eval_samples`` honoured). With ``adversarial`` the
    images are attacked with the config's ``eval_attack``, as a trial's ρ are measured.
    """
    from semirobust_ray.training import predict_adversarial

    x, y = net.exp.eval_split("test")
    keep = stratified_subset(y, samples, TEST_SEED)
    x, y = x[keep], y[keep]
    if not adversarial:
        return to_unit(x), y
    attack = net.exp.eval_attack(net.model, seed)
    x_adv, _ = predict_adversarial(
        net.model,
        x,
        y,
        attack=attack,
        batch_size=net.exp.config.eval_batch,
        device=net.exp.device,
    )
    assert x_adv is not None  # keep_inputs defaults to True
    return x_adv, y


def reference_proj_dim(n: int, dim: int) -> int:
    """The d' the reference's ``gen_W`` projects a D-dim variable of N samples to:
    min(D, floor(log_2(N / 10))) (its kx = 2, rx = 10), at least 1 here so it is usable."""
    return int(max(1, min(dim, math.floor(math.log(n / 10.0, 2)) if n > 10 else 1)))


def collect_features(
    net: Network,
    layers: Sequence[tuple[str, torch.nn.Module]],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    proj_dim: int | None,
    seed: int,
    batch_size: int,
    max_full_dim: int,
) -> Features:
    """All layers' outputs from ONE forward pass, through ``layer_mi``'s own projecting hooks.

    Three hooks per layer: full width (capped at ``max_full_dim``), the projection ``layer_mi``
    would use (the same d' rule, seed and layer numbers, so its per-class values are exactly
    ``layer_mi``'s), and the reference's d'. A one-image probe first gives each layer's width.
    """
    labels = y.detach().cpu().numpy().reshape(-1)
    classes, counts = np.unique(labels, return_counts=True)
    n_max = int(counts.max())
    # layer_mi's rule: d' of the largest class, for every layer.
    proj_default = proj_dim or default_proj_dim(n_max, 1 << 30)
    proj_reference = reference_proj_dim(n_max, 1 << 30)
    device = net.exp.device
    probe = [_ProjectingHook(1 << 62, seed, 1 + i) for i in range(len(layers))]
    _forward_hooked(net.model, layers, probe, x[:1], 1, device)
    dims = [h.collected(name).shape[1] for (name, _), h in zip(layers, probe, strict=True)]
    sets = {"full": max_full_dim, "default": proj_default, "reference_dim": proj_reference}
    # first_index 1: the whole network's layers are numbered 1..n as in layer_mi's call below.
    hooks = {
        k: [_ProjectingHook(d, seed, 1 + i) for i in range(len(layers))] for k, d in sets.items()
    }
    _forward_hooked(
        net.model,
        list(layers) * len(sets),
        [h for hs in hooks.values() for h in hs],
        x,
        batch_size,
        device,
    )
    out = {
        k: [h.collected(name) for (name, _), h in zip(layers, hs, strict=True)]
        for k, hs in hooks.items()
    }
    return Features(
        labels=labels,
        classes=classes,
        counts=counts,
        dims=dims,
        proj_default=proj_default,
        proj_reference=proj_reference,
        max_full_dim=max_full_dim,
        **out,
    )


# --------------------------------------------------------------------------------------------
# Class-conditional MI with any estimator
# --------------------------------------------------------------------------------------------


def class_conditional(
    layers: Sequence[tuple[str, torch.nn.Module]],
    feats: Sequence[np.ndarray],
    f: Features,
    wanted: set[int],
    estimate: Estimate,
    seed: int,
) -> tuple[dict[int, float], float]:
    """I_j for every wanted pair j and the seconds it took, with ``layer_mi``'s per-(pair,
    class) slices, derived seeds and class priors; only the estimator is ``estimate``."""
    # The estimator name and kwargs in the task tuples are not used: ``estimate`` replaces them.
    jobs, task_args, _ = _pair_class_jobs(feats, f.labels, f.classes, "edge", seed, 1, {})
    keep = [k for k, (i, _) in enumerate(jobs) if 1 + i in wanted]
    t0 = time.perf_counter()
    values = [estimate(task_args[k][0], task_args[k][1], task_args[k][3]) for k in keep]
    seconds = time.perf_counter() - t0
    pairs = _class_weighted_pairs(
        layers, [jobs[k] for k in keep], values, f.counts / f.counts.sum(), 1
    )
    return {p.j: p.bits for p in pairs if p.j in wanted}, seconds


def ours(estimator: str, **kw: Any) -> Estimate:
    """Our estimator ``estimator`` with options ``kw``, as ``layer_mi`` calls it."""

    def run(a: np.ndarray, b: np.ndarray, seed: int) -> float:
        # At full width the grid's size overflows a float in _row_ids' fits-in-int64 test, which
        # then (correctly) takes the np.unique(axis=0) path; the warning says nothing more.
        with np.errstate(over="ignore"):
            return mi_estimate(a, b, estimator=estimator, seed=seed, **kw)

    return run


def reference(edge: Callable[..., float], **kw: Any) -> Estimate:
    """The reference ``EDGE`` (its own hashing seeds; ours are ignored), converted to bits.

    NaN where the reference cannot run: a variable wider than 6 dims (p-stable hashing) with
    N < 20 samples gets d' = floor(log2(N / 10)) = 0 projected columns and ``H1`` fails.
    """

    def run(a: np.ndarray, b: np.ndarray, _seed: int) -> float:
        n, wide = a.shape[0], max(a.shape[1], b.shape[1]) > 6
        if wide and math.floor(math.log(n / 10.0, 2)) < 1:
            return math.nan
        return REFERENCE_BITS_PER_UNIT * float(
            edge(np.asarray(a, np.float64), np.asarray(b, np.float64), **kw)
        )

    return run


#: No further projection inside our estimators: every column of the array is used.
_NO_PROJECTION = 1 << 62


def columns(
    f: Features, edge: Callable[..., float] | None
) -> dict[str, tuple[list[np.ndarray], Estimate]]:
    """Every column: (the layer outputs it reads, its per-class estimator)."""
    cols: dict[str, tuple[list[np.ndarray], Estimate]] = {
        "ours_default": (f.default, ours("edge")),
        "ours_reference_dim": (f.reference_dim, ours("edge")),
        "ours_full": (f.full, ours("edge", proj_dim=_NO_PROJECTION)),
        "ksg_default": (f.default, ours("ksg")),
        "ksg_full": (f.full, ours("ksg")),
        # EDGE_4_4_1's ensemble (median of 10 widths over a 10 % range), plug-in counts and its
        # 0.001-bit floor, with our bucket width rule and copula: how much our corrections move.
        "ours_reference_like": (
            f.reference_dim,
            ours(
                "edge",
                combine="median",
                n_widths=10,
                width_ratio=0.1,
                bias_correction="none",
                floor=0.001,
            ),
        ),
    }
    if edge is not None:
        cols["reference_full"] = (f.full, reference(edge))
        cols["reference_default_dim"] = (f.default, reference(edge))
        cols["reference_full_one_pass"] = (f.full, reference(edge, normalize_epsilon=False))
    return cols


def measure(
    layers: Sequence[tuple[str, torch.nn.Module]],
    f: Features,
    edge: Callable[..., float] | None,
    wanted: set[int],
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """One row per wanted pair with every column's I_j (bits), and each column's seconds."""
    priors = f.counts / f.counts.sum()
    # What an all-singleton histogram gives: sum_y pi(y) log2 N_y (the reference's U = 10 and
    # our cap never bind below N_y = 1024).
    ceiling = float(np.dot(priors, np.minimum(np.log2(f.counts), 10.0)))
    rows = {
        j: {
            "j": j,
            "prev": layers[j - 2][0],
            "next": layers[j - 1][0],
            "dims": [f.dims[j - 2], f.dims[j - 1]],
            "full_exact": max(f.dims[j - 2], f.dims[j - 1]) <= f.max_full_dim,
            "proj_dim_ours": [min(d, f.proj_default) for d in f.dims[j - 2 : j]],
            "proj_dim_reference": [min(d, f.proj_reference) for d in f.dims[j - 2 : j]],
            "ceiling_log2_n": ceiling,
        }
        for j in sorted(wanted)
    }
    seconds: dict[str, float] = {}
    for key, (feats, estimate) in columns(f, edge).items():
        values, seconds[key] = class_conditional(layers, feats, f, wanted, estimate, seed)
        for j, v in values.items():
            rows[j][key] = v
        print(f"  {key}: {seconds[key]:.1f} s", file=sys.stderr, flush=True)
    return list(rows.values()), seconds


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    """A value in bits with 3 decimals; a dash where there is none."""
    return "–" if v is None or math.isnan(v) else f"{v:.3f}"


def _json_safe(v: Any) -> Any:
    """``v`` with NaN (the reference could not run) as null: strict JSON has no NaN."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


def markdown(rows: Sequence[dict[str, Any]], cols: Sequence[tuple[str, str]]) -> str:
    """The rows as a Markdown table with the pair, widths, d' and the given columns (bits)."""
    head = ["j", "pair", "D", "d' ours / ref", *(h for _, h in cols), "Σπ log2 N_y"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        d = f"{r['dims'][0]}→{r['dims'][1]}" + ("" if r["full_exact"] else " (capped)")
        proj = (
            "×".join(map(str, r["proj_dim_ours"]))
            + " / "
            + "×".join(map(str, r["proj_dim_reference"]))
        )
        cells = [str(r["j"]), f"{r['prev']} → {r['next']}", d, proj]
        cells += [_cell(r.get(k)) for k, _ in cols] + [f"{r['ceiling_log2_n']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_pairs(spec: str | None, n_layers: int) -> set[int]:
    """``--pairs 2,5``: the j of each pair (its later layer's 1-based number); default all."""
    if spec is None:
        return set(range(2, n_layers + 1))
    wanted = {int(s) for s in spec.split(",") if s.strip()}
    bad = sorted(j for j in wanted if not 2 <= j <= n_layers)
    if bad:
        raise SystemExit(f"--pairs {bad}: j must be in 2..{n_layers} (pair j-1, j)")
    return wanted


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; exactly one of --search, --config, --quick chooses the network."""
    ap = argparse.ArgumentParser(description=__doc__)
    add_config_options(ap, default="none; give --search, --config or --quick")
    ap.add_argument("--search", metavar="DIR", help="a search directory (its robust baseline)")
    ap.add_argument(
        "--quick", action="store_true", help="untrained smallcnn on digits, < 60 s (smoke test)"
    )
    ap.add_argument(
        "--reference-edge",
        metavar="PATH",
        default=os.environ.get("EDGE_REFERENCE"),
        help="the reference EDGE_4_4_1.py (default: $EDGE_REFERENCE); without it, no "
        "reference columns",
    )
    ap.add_argument(
        "--samples",
        type=int,
        default=None,
        help=f"test images, class-stratified (default 500; --quick: {QUICK_SAMPLES})",
    )
    ap.add_argument("--pairs", default=None, help="j values, e.g. 2,5 (default: all pairs)")
    ap.add_argument(
        "--adversarial",
        action="store_true",
        help="attack the images with the config's eval_attack first (as trials measure ρ)",
    )
    ap.add_argument("--seed", type=int, default=0, help="layer_mi's seed (projections, offsets)")
    ap.add_argument("--device", default="cpu", help="where the forward pass runs (default cpu)")
    ap.add_argument("--batch-size", type=int, default=256, help="forward batch size")
    ap.add_argument(
        "--max-full-dim",
        type=int,
        default=DEFAULT_MAX_FULL_DIM,
        help="wider layers are projected to this many dims for the 'full D' columns",
    )
    ap.add_argument("--json", type=Path, help="write the rows and settings here")
    args = ap.parse_args(argv)
    if sum(map(bool, (args.search, args.config, args.quick))) > 1:
        ap.error("give one of --search, --config, --quick")
    if not (args.search or args.config or args.quick):
        ap.error("give --search DIR, --config NAME_OR_YAML or --quick")
    if args.search and args.overrides:
        ap.error("--set applies to --config / --quick; a search directory keeps its config")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Load the network, collect its layer outputs once, estimate every column, report."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    net = load_network(args)
    samples = args.samples or (QUICK_SAMPLES if args.quick else 500)
    x, y = measurement_inputs(net, samples, args.adversarial, args.seed)
    layers = trainable_layers(net.model)
    wanted = parse_pairs(args.pairs, len(layers))
    c = net.exp.config
    f = collect_features(
        net,
        layers,
        x,
        y,
        proj_dim=c.mi_proj_dim,
        seed=args.seed,
        batch_size=args.batch_size,
        max_full_dim=args.max_full_dim,
    )
    edge = load_reference_edge(Path(args.reference_edge)) if args.reference_edge else None
    rows, seconds = measure(layers, f, edge, wanted, args.seed)
    check = None
    if args.quick:
        # Self-check of the reuse: layer_mi itself (a second forward pass) gives the same ρ.
        direct = layer_mi(
            net.model, layers, x, y, first_index=1, seed=args.seed, proj_dim=c.mi_proj_dim,
            batch_size=args.batch_size, device=net.exp.device, use_ray=False,
        )  # fmt: skip
        check = all(r["ours_default"] == p.bits for r in rows for p in direct if p.j == r["j"])
    acc = "" if net.acc_star is None else f", Acc* {net.acc_star:.3f}"
    print(
        f"\n# ρ scale: {net.source}{acc}; {len(y)} test images "
        f"({'adversarial, ' + c.eval_attack_name if args.adversarial else 'clean'}), "
        f"{len(f.classes)} classes, N_y {int(f.counts.min())}-{int(f.counts.max())}; bits\n"
    )
    print(markdown(rows, MAIN_COLUMNS))
    print("\nAblations (bits):\n")
    print(markdown(rows, ABLATION_COLUMNS))
    if edge is None:
        print("\n(no --reference-edge / $EDGE_REFERENCE: reference columns left out)")
    if check is not None:
        print(f"\nours (default d') == layer_mi: {check}")
    total = time.perf_counter() - t_start
    print(f"\nseconds per column: {json.dumps({k: round(v, 2) for k, v in seconds.items()})}")
    print(f"total {total:.1f} s")
    if args.json:
        result = {
            "source": net.source,
            "model": c.model,
            "dataset": c.dataset,
            "acc_star": net.acc_star,
            "units": "bits",
            "images": int(len(y)),
            "adversarial": args.adversarial,
            "class_counts": {int(k): int(v) for k, v in zip(f.classes, f.counts, strict=True)},
            "seed": args.seed,
            "proj_dim_default": f.proj_default,
            "proj_dim_reference": f.proj_reference,
            "reference_edge": args.reference_edge,
            "rows": rows,
            "seconds": seconds,
            "total_seconds": total,
            "matches_layer_mi": check,
        }
        args.json.write_text(json.dumps(_json_safe(result), indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
