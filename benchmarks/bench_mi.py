"""Benchmark of semirobust_ray.mi: accuracy and speed of our EDGE against third-party KSG,
scaling with N, Ray speed-up of layer MI, and time / peak memory of a VGG16's layer MI.

Usage:
    python benchmarks/bench_mi.py [--quick] [--json FILE] [--reference-edge EDGE_4_4_1.py]

``--quick`` is a smoke run (every part at its smallest size: N = 2,000, scaling to 4,000, 64
VGG16 images); the numbers in BENCHMARKS.md come from a full run.

The reference EDGE (``EDGE_4_4_1.py`` of https://github.com/mrtnoshad/EDGE, commit 83c94cf) is
not in this repository: its README names a "University of Michigan License" but the repository
carries no license text, so we may not redistribute it. Download it yourself and pass its path
with ``--reference-edge`` (or set ``EDGE_REFERENCE``) to run it side by side on the same data;
without it the numbers quoted in issue 4 are printed instead. It is loaded unmodified; two
shims, applied from outside, let it run today: ``np.asscalar`` (removed in numpy 1.23) is
provided as ``.item()`` in the module's own numpy namespace, and if ``cvxpy`` is missing an
empty placeholder module satisfies its top-level import (cvxpy is used only by the
``optimal_weights`` ensemble, which the default ``EDGE(X, Y)`` does not call).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Reference EDGE_4_4_1.py (Noshad), as quoted in issue 4 (2-core CPU, N = 20,000, its own data
# draw): printed only when the reference file is not available to run side by side.
REFERENCE_EDGE_20K = {
    (1, 0.0): 0.001,
    (1, 0.5): 0.355,
    (1, 0.9): 1.338,
    (1, 0.99): 2.828,
    (4, 0.0): 1.89,
    (4, 0.5): 8.63,
    (4, 0.9): 10.0,
}
REFERENCE_EDGE_SECONDS = 5.5
CIFAR = Path("/work/shared/datasets/cifar10_subset.npz")


def gaussian_pair(n: int, d: int, r: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = r * x + math.sqrt(1.0 - r * r) * rng.standard_normal((n, d))
    return x, y, -0.5 * d * math.log2(1.0 - r * r)


def timed(fn, *args, repeat: int = 1, **kw) -> tuple[float, float]:
    """(value, best wall time of ``repeat`` runs)."""
    best = math.inf
    value = math.nan
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn(*args, **kw)
        best = min(best, time.perf_counter() - t0)
    return value, best


def load_reference_edge(path: Path):
    """The reference's ``EDGE`` function from an unmodified ``EDGE_4_4_1.py`` (see module doc)."""
    if importlib.util.find_spec("cvxpy") is None:
        # Shim 1: only compute_weights ('optimal_weights' ensemble) touches cvxpy.
        sys.modules.setdefault("cvxpy", types.ModuleType("cvxpy"))
    spec = importlib.util.spec_from_file_location("reference_edge", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Shim 2: np.asscalar was removed in numpy 1.23; give the module a numpy namespace that
    # still has it (numpy itself is not modified).
    shim = types.ModuleType("numpy")
    shim.__dict__.update(np.__dict__)
    shim.asscalar = lambda a: np.asarray(a).item()  # type: ignore[attr-defined]
    module.np = shim
    return module.EDGE


TASKS = [(1, 0.0), (1, 0.5), (1, 0.9), (1, 0.99), (4, 0.0), (4, 0.5), (4, 0.9)]


def bench_accuracy(n: int, seeds: list[int], reference=None) -> list[dict]:
    """Every estimator on the same draws; values and times are for data seed ``seeds[0]``,
    ``*_mae`` the mean |error| over all ``seeds`` (the sampling error of the MI of one draw is
    itself about 0.01 bits at r = 0.99, N = 20k, so one draw cannot rank estimators that close)."""
    from sklearn.feature_selection import mutual_info_regression

    from semirobust_ray.mi import edge_mi, ksg_mi

    def sklearn_ksg(x: np.ndarray, y: np.ndarray) -> float:
        # scikit-learn's KSG handles a 1-D target only; it returns nats.
        nats = mutual_info_regression(x, y.ravel(), n_neighbors=3, random_state=0)[0]
        return nats / math.log(2.0)

    rows = []
    for d, r in TASKS:
        x, y, true = gaussian_pair(n, d, r, seed=seeds[0])
        edge, t_edge = timed(edge_mi, x, y, repeat=3)
        ksg, t_ksg = timed(ksg_mi, x, y)
        row = {
            "d": d,
            "r": r,
            "n": n,
            "true": true,
            "edge": edge,
            "edge_s": t_edge,
            "ksg_ours": ksg,
            "ksg_ours_s": t_ksg,
        }
        if d == 1:
            sk, t_sk = timed(sklearn_ksg, x, y, repeat=3)
            row.update(sklearn_ksg=sk, sklearn_ksg_s=t_sk)
        errs_ours, errs_ref = [], []
        for s in seeds:
            xs, ys, _ = gaussian_pair(n, d, r, seed=s)
            errs_ours.append(edge - true if s == seeds[0] else edge_mi(xs, ys) - true)
            if reference is not None:
                v, t = timed(reference, xs, ys)
                errs_ref.append(v - true)
                if s == seeds[0]:
                    row.update(reference_edge=v, reference_edge_s=t, reference_measured=True)
        row["edge_mae"] = float(np.mean(np.abs(errs_ours)))
        if reference is not None:
            row["reference_edge_mae"] = float(np.mean(np.abs(errs_ref)))
        elif n == 20000:
            row.update(reference_edge=REFERENCE_EDGE_20K[(d, r)], reference_measured=False)
        rows.append(row)
    return rows


def bench_scaling(ns: list[int]) -> list[dict]:
    from semirobust_ray.mi import edge_mi

    out = []
    for n in ns:
        x, y, true = gaussian_pair(n, 4, 0.5, seed=1)
        # Fixed d' = 4 so every N solves the same 4-D problem (the default rule projects small N).
        est, t = timed(edge_mi, x, y, proj_dim=4, repeat=2)
        out.append({"n": n, "seconds": t, "edge": est, "true": true})
    return out


def bench_ray(n: int) -> dict:
    """Sequential vs Ray-task layer MI on a 6-layer MLP (10 classes, 5 pairs -> 50 estimates):
    grouped into one task per free CPU (the default) and one task per estimate."""
    import ray
    import torch

    from semirobust_ray.mi import layer_mi

    torch.manual_seed(0)
    mods = [torch.nn.Linear(64, 256)] + [torch.nn.Linear(256, 256) for _ in range(4)]
    mods.append(torch.nn.Linear(256, 10))
    seq: list[torch.nn.Module] = []
    for m in mods:
        seq += [m, torch.nn.ReLU()]
    model = torch.nn.Sequential(*seq[:-1]).eval()
    layers = [(str(i), m) for i, m in enumerate(model) if isinstance(m, torch.nn.Linear)]
    x = torch.randn(n, 64)
    y = torch.arange(n) % 10
    result: dict = {"n": n, "pairs": len(layers) - 1, "classes": 10}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for est, kw in [("edge", {"proj_dim": 4}), ("ksg", {"proj_dim": 4})]:
            # Warm the workers (torch import) so the timing is the steady state of a trial.
            layer_mi(model, layers, x, y, first_index=1, use_ray=True, estimator=est, **kw)
            s, t_seq = timed(
                layer_mi, model, layers, x, y, first_index=1, use_ray=False, estimator=est, **kw
            )
            p, t_ray = timed(
                layer_mi, model, layers, x, y, first_index=1, use_ray=True, estimator=est, **kw
            )
            # The former layout, one Ray task per (pair, class) estimate, for comparison.
            q, t_each = timed(
                layer_mi, model, layers, x, y, first_index=1, use_ray=True, estimator=est,
                ray_tasks=10**6, **kw,
            )  # fmt: skip
            result[est] = {
                "sequential_s": t_seq,
                "ray_s": t_ray,
                "speedup": t_seq / t_ray,
                "ray_task_per_estimate_s": t_each,
                "speedup_task_per_estimate": t_seq / t_each,
                "identical": s == p == q,
            }
        result["in_trial"] = _ray_in_trial(ray, model, layers, x, y)
    finally:
        ray.shutdown()
    return result


def _ray_in_trial(ray, model, layers, x, y) -> dict:
    """The same comparison where layer_mi really runs: inside a trial, i.e. a Ray worker holding
    one CPU in a placement group that reserves one more CPU for MI tasks (mi_cpus = 1).

    Ray starts its workers at nice 15, so on a machine shared with other work the driver-level
    figure compares a nice-0 sequential run with nice-15 tasks; here both sides are workers.
    """
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    def trial(net, x, y) -> dict:
        import time

        from semirobust_ray.mi import layer_mi

        model, layers = net  # one argument, so the hooked modules stay those of the model
        out = {}
        for est in ("edge", "ksg"):
            kw = {"first_index": 1, "estimator": est, "proj_dim": 4}
            layer_mi(model, layers, x, y, use_ray=True, **kw)  # warm the MI worker
            times = {}
            for mode, extra in [("sequential", {"use_ray": False}), ("ray", {"use_ray": True})]:
                best = float("inf")
                for _ in range(2):
                    t0 = time.perf_counter()
                    layer_mi(model, layers, x, y, **extra, **kw)
                    best = min(best, time.perf_counter() - t0)
                times[mode] = best
            out[est] = {
                "sequential_s": times["sequential"],
                "ray_s": times["ray"],
                "speedup": times["sequential"] / times["ray"],
            }
        return out

    pg = ray.util.placement_group([{"CPU": 1}, {"CPU": 1}])
    ray.get(pg.ready())
    try:
        strategy = PlacementGroupSchedulingStrategy(
            placement_group=pg,
            placement_group_bundle_index=0,
            placement_group_capture_child_tasks=True,
        )
        remote = ray.remote(num_cpus=1, scheduling_strategy=strategy)(trial)
        return ray.get(remote.remote((model, layers), x, y))
    finally:
        ray.util.remove_placement_group(pg)


def vgg16_layer_mi(n_images: int) -> dict:
    """Full class-conditional layer MI of a VGG16 (all 16 trainable layers, 15 pairs) on the
    shared CIFAR-10 subset. Runs in its own process (see main) so ru_maxrss is its own peak."""
    import torch

    from semirobust_ray.mi import layer_mi

    torch.manual_seed(0)
    try:
        from semirobust_ray.models import create_model, trainable_layers

        model = create_model("vgg16", 10, 32)
        layers = trainable_layers(model)
        source = "semirobust_ray.models.create_model('vgg16', 10, 32)"
    except ImportError:
        import torchvision

        model = torchvision.models.vgg16_bn(num_classes=10)
        model.avgpool = torch.nn.Identity()
        model.classifier = torch.nn.Sequential(
            torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
            torch.nn.ReLU(), torch.nn.Linear(512, 10),
        )  # fmt: skip
        layers = [
            (n, m)
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
        ]
        source = "torchvision vgg16_bn, 32x32 classifier"
    model.eval()
    data = np.load(CIFAR, allow_pickle=False)
    x = torch.from_numpy(data["x_test"][:n_images]).permute(0, 3, 1, 2).float() / 255.0
    y = torch.from_numpy(data["y_test"][:n_images])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter()
    res = layer_mi(model, layers, x, y, first_index=1, batch_size=128)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    biggest = 0
    hook = None

    def size_hook(_m, _i, out):
        nonlocal biggest
        biggest = max(biggest, out[0].numel())

    try:
        hook = [m.register_forward_hook(size_hook) for _, m in layers]
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hook or []:
            h.remove()
    return {
        "model": source,
        "images": int(x.shape[0]),
        "layers": len(layers),
        "pairs": len(res),
        "seconds": seconds,
        "peak_gb": peak,
        "rss_before_mi_gb": rss_before,
        "largest_layer_floats_per_image": biggest,
        "full_activation_gb_if_materialised": biggest * x.shape[0] * 4 / 2**30,
        "bits": {f"{r.j}:{r.next}": round(r.bits, 3) for r in res},
    }


def bench_trial_mi(baseline_epochs: int = 1) -> dict:
    """Where a quickstart trial's MI seconds go: ``trial_mi`` on the quickstart's network
    (``search_spaces/quickstart.yaml``, digits) for every |f_b| = 1..6, each inside a Ray task
    that holds one CPU in a placement group reserving one more for MI (``cpus_per_trial: 1``,
    ``mi_cpus: 1``: a trial of the quickstart), on a fresh 2-CPU Ray instance. Per depth, in
    that order: in-process (``use_ray=False``), Ray tasks (``use_ray=True``: what every trial
    did before the in-process threshold), and the default (``use_ray=None``: Ray only above
    :data:`semirobust_ray.mi.RAY_MIN_WORK`). The baseline is trained for ``baseline_epochs``
    + ``baseline_epochs`` epochs instead of the quickstart's 6 + 6: the MI's cost depends on the
    shapes (images, classes, layers), not on the weights' values.
    """
    import tempfile

    import ray
    import torch
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from semirobust_ray.algorithm1 import semirobust_model, trial_seed
    from semirobust_ray.baseline import get_baseline
    from semirobust_ray.config import config_path, load_config
    from semirobust_ray.experiment import prepare
    from semirobust_ray.mi import RAY_MIN_WORK
    from semirobust_ray.training import predict_adversarial

    config = load_config(
        config_path("quickstart"),
        [
            f"baseline_epochs={baseline_epochs}",
            f"baseline_adv_epochs={baseline_epochs}",
            f"cache_dir={tempfile.mkdtemp(prefix='bench-trial-mi-')}",
        ],
    )
    exp = prepare(config)
    baseline = get_baseline(exp)
    x_test, y_test = exp.eval_split("test")
    nets = []
    for depth in exp.split_depths:
        s = semirobust_model(exp, baseline, depth)
        seed = trial_seed(config.seed, depth, 0)
        x_adv, _ = predict_adversarial(
            s.model, x_test, y_test, attack=exp.eval_attack(s.model, seed),
            batch_size=config.eval_batch, device=exp.device,
        )  # fmt: skip
        nets.append((depth, s, x_adv, seed))

    def trial(exp, depth, s, x_adv, y, seed) -> dict:
        import dataclasses
        import time

        import semirobust_ray.mi as mi_module
        from semirobust_ray.algorithm1 import trial_mi

        original = mi_module.layer_mi
        times, values = {}, {}
        for mode, use_ray in [("in_process", False), ("ray", True), ("default", None)]:
            # trial_mi's own switch is mi_cpus; here the mode is forced through layer_mi.
            def forced(*a, _use_ray=use_ray, **kw):
                return original(*a, **{**kw, "use_ray": _use_ray})

            mi_module.layer_mi = forced
            try:
                t0 = time.perf_counter()
                values[mode] = trial_mi(dataclasses.replace(exp), s, x_adv, y, seed)
                times[mode] = time.perf_counter() - t0
            finally:
                mi_module.layer_mi = original
        same = values["in_process"] == values["ray"] == values["default"]
        return {"depth": depth, "pairs": len(values["ray"]), "identical": same, **times}

    rows = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for depth, s, x_adv, seed in nets:
            pg = ray.util.placement_group([{"CPU": 1}, {"CPU": 1}])
            ray.get(pg.ready())
            strategy = PlacementGroupSchedulingStrategy(
                placement_group=pg,
                placement_group_bundle_index=0,
                placement_group_capture_child_tasks=True,
            )
            remote = ray.remote(num_cpus=1, scheduling_strategy=strategy)(trial)
            rows.append(ray.get(remote.remote(exp, depth, s, x_adv, y_test, seed)))
            ray.util.remove_placement_group(pg)
    finally:
        ray.shutdown()
    classes = int(torch.unique(y_test).numel())
    for r in rows:
        r["work"] = r["pairs"] * len(y_test)  # sum over (pair, class) estimates of class sizes
    total = {m: sum(r[m] for r in rows) for m in ("in_process", "ray", "default")}
    return {
        "test_images": len(y_test),
        "classes": classes,
        "ray_min_work": RAY_MIN_WORK,
        "rows": rows,
        "total": total,
        "ray_over_in_process": total["ray"] / total["in_process"],
        "default_over_in_process": total["default"] / total["in_process"],
        "ray_over_default": total["ray"] / total["default"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: N = 2,000, scaling to 4,000, 64 images"
    )
    ap.add_argument("--json", type=Path, help="write all results to this file")
    ap.add_argument(
        "--reference-edge",
        metavar="PATH",
        help="the reference EDGE_4_4_1.py, to run side by side (default: $EDGE_REFERENCE)",
    )
    ap.add_argument("--vgg-only", type=int, metavar="N", help=argparse.SUPPRESS)
    ap.add_argument(
        "--trial-mi",
        action="store_true",
        help="only the quickstart trials' MI: in-process vs Ray tasks vs the default",
    )
    ap.add_argument(
        "--search-mi",
        action="store_true",
        help="only the quickstart search's MI seconds per trial, Ray tasks vs the default",
    )
    args = ap.parse_args()
    if args.vgg_only:
        print(json.dumps(vgg16_layer_mi(args.vgg_only)))
        return
    if args.trial_mi:
        print_trial_mi(bench_trial_mi(), args.json)
        return
    if args.search_mi:
        print_search_mi(bench_search_mi(), args.json)
        return

    n_acc = 2000 if args.quick else 20000
    ns = [1000, 2000, 4000] if args.quick else [1000, 3000, 10000, 30000, 100000]
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{__import__('os').cpu_count()} CPUs, python {platform.python_version()}",
    }

    ref_path = args.reference_edge or os.environ.get("EDGE_REFERENCE")
    reference = load_reference_edge(Path(ref_path)) if ref_path else None
    seeds = [0] if args.quick else [0, 1, 2]
    acc = bench_accuracy(n_acc, seeds, reference)
    results["accuracy"] = acc
    results["reference_edge_source"] = (
        f"run side by side: {ref_path}" if reference is not None else "quoted from issue 4"
    )
    print(f"\n# Known-MI tasks, N = {n_acc} (bits; seconds; data seed {seeds[0]})")
    print(
        f"{'d':>2} {'r':>5} {'true':>7} {'EDGE':>7} {'t':>7} {'KSG':>7} {'t':>7} {'sk-KSG':>7} "
        f"{'t':>7} {'ref':>7} {'t':>6}   mean |err| over seeds {seeds}: EDGE, ref"
    )
    for row in acc:
        sk = (
            f"{row['sklearn_ksg']:7.3f} {row['sklearn_ksg_s']:7.3f}"
            if "sklearn_ksg" in row
            else " " * 15
        )
        ref = f"{row['reference_edge']:7.3f}" if "reference_edge" in row else " " * 7
        ref += f" {row['reference_edge_s']:6.2f}" if "reference_edge_s" in row else " " * 7
        mae = f"{row['edge_mae']:.4f}"
        if "reference_edge_mae" in row:
            mae += f", {row['reference_edge_mae']:.4f}"
        print(
            f"{row['d']:>2} {row['r']:>5} {row['true']:7.3f} {row['edge']:7.3f} {row['edge_s']:7.3f} "
            f"{row['ksg_ours']:7.3f} {row['ksg_ours_s']:7.3f} {sk} {ref}   {mae}"
        )
    one_d = [r for r in acc if r["d"] == 1]
    results["edge_speedup_vs_thirdparty"] = sum(r["sklearn_ksg_s"] for r in one_d) / sum(
        r["edge_s"] for r in one_d
    )
    if reference is not None:
        ref_seconds = float(np.mean([r["reference_edge_s"] for r in acc]))
        results["reference_edge_seconds"] = ref_seconds
        results["reference_edge_max_abs_err_1d"] = max(
            abs(r["reference_edge"] - r["true"]) for r in one_d
        )
    else:
        ref_seconds = REFERENCE_EDGE_SECONDS
    results["edge_speedup_vs_reference"] = ref_seconds / float(np.mean([r["edge_s"] for r in acc]))
    results["edge_max_abs_err_1d"] = max(abs(r["edge"] - r["true"]) for r in one_d)
    results["sklearn_max_abs_err_1d"] = max(abs(r["sklearn_ksg"] - r["true"]) for r in one_d)
    print(
        f"EDGE speed-up vs scikit-learn KSG (1-D): {results['edge_speedup_vs_thirdparty']:.1f}x; "
        f"vs reference EDGE ({ref_seconds:.2f} s, {results['reference_edge_source']}): "
        f"{results['edge_speedup_vs_reference']:.0f}x"
    )

    scaling = bench_scaling(ns)
    results["scaling"] = scaling
    ln = np.log([s["n"] for s in scaling])
    lt = np.log([s["seconds"] for s in scaling])
    results["scaling_loglog_slope"] = float(np.polyfit(ln[1:], lt[1:], 1)[0])
    print("\n# EDGE time vs N (4-D, r = 0.5)")
    for s in scaling:
        print(f"N={s['n']:>7}: {s['seconds']:.3f} s  ({s['edge']:.3f} bits, true {s['true']:.3f})")
    print(f"log-log slope: {results['scaling_loglog_slope']:.2f} (1 = linear)")

    ray_res = bench_ray(2000 if args.quick else 20000)
    results["ray"] = ray_res
    print(f"\n# layer_mi, sequential vs Ray tasks (2 CPUs), N = {ray_res['n']}")
    for est in ("edge", "ksg"):
        e = ray_res[est]
        print(
            f"{est}: sequential {e['sequential_s']:.2f} s, Ray {e['ray_s']:.2f} s, "
            f"speed-up {e['speedup']:.2f}x (one task per estimate: "
            f"{e['ray_task_per_estimate_s']:.2f} s, {e['speedup_task_per_estimate']:.2f}x), "
            f"identical={e['identical']}"
        )
    for est in ("edge", "ksg"):
        e = ray_res["in_trial"][est]
        print(
            f"{est} inside a trial (1 CPU + 1 reserved for MI): sequential "
            f"{e['sequential_s']:.2f} s, Ray {e['ray_s']:.2f} s, speed-up {e['speedup']:.2f}x"
        )
    results["ray_speedup_edge_in_trial"] = ray_res["in_trial"]["edge"]["speedup"]
    results["ray_speedup_ksg_in_trial"] = ray_res["in_trial"]["ksg"]["speedup"]
    results["ray_speedup_edge"] = ray_res["edge"]["speedup"]
    results["ray_speedup_ksg"] = ray_res["ksg"]["speedup"]

    if CIFAR.exists():
        n_img = 64 if args.quick else 1017
        proc = subprocess.run(
            [sys.executable, __file__, "--vgg-only", str(n_img)],
            capture_output=True,
            text=True,
            check=True,
        )
        vgg = json.loads(proc.stdout.strip().splitlines()[-1])
        results["vgg16"] = vgg
        results["mi_vgg16_peak_gb"] = vgg["peak_gb"]
        results["mi_vgg16_seconds"] = vgg["seconds"]
        print(
            f"\n# VGG16 class-conditional layer MI ({vgg['model']}), {vgg['images']} CIFAR-10 images, "
            f"{vgg['pairs']} pairs: {vgg['seconds']:.1f} s, peak RSS {vgg['peak_gb']:.2f} GB "
            f"(a materialised largest layer alone: {vgg['full_activation_gb_if_materialised']:.2f} GB)"
        )
    else:
        print(f"\n(skipping VGG16: {CIFAR} not found)")

    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")


def bench_search_mi() -> dict:
    """The quickstart search itself (``search_spaces/quickstart.yaml``: bisection, 2 trials per
    probe, MI on, ``test_eval: all`` so every trial measures its MI as before), run twice on
    one local 2-CPU Ray instance with one shared baseline: first with every trial's MI as Ray
    tasks (``RAY_MIN_WORK = 0`` set inside each trial's process: the behaviour before the
    threshold), then with the default threshold. Per trial: its MI, training and evaluation
    seconds as the trial recorded them."""
    import tempfile

    import ray

    from semirobust_ray.config import config_path, load_config
    from semirobust_ray.mi import RAY_MIN_WORK
    from semirobust_ray.ray_search import run_search
    from semirobust_ray.trial import algorithm1_trainable

    def with_threshold(threshold: int):
        def trainable(config, **shared):
            import semirobust_ray.mi as mi_module

            # Set in the trial's own process (a reused one may have run the other search).
            mi_module.RAY_MIN_WORK = threshold
            return algorithm1_trainable(config, **shared)

        return trainable

    root = Path(tempfile.mkdtemp(prefix="bench-search-mi-"))
    config = load_config(
        config_path("quickstart"), [f"cache_dir={root / 'cache'}", "test_eval=all"]
    )
    out: dict = {"ray_min_work": RAY_MIN_WORK}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # before: RAY_MIN_WORK = 0, every trial_mi as Ray tasks (the behaviour before it).
        for label, fn in (("before", with_threshold(0)), ("after", with_threshold(RAY_MIN_WORK))):
            t0 = time.perf_counter()
            outcome = run_search(
                config, storage_path=str(root), name=label, verbose=0, trainable_fn=fn
            )
            trials = sorted(outcome.results["trials"], key=lambda t: (t["fb_layers"], t["trial"]))
            out[label] = {
                "search_seconds": time.perf_counter() - t0,
                "trials": [
                    {
                        k: t[k]
                        for k in (
                            "fb_layers",
                            "trial",
                            "mi_seconds",
                            "train_seconds",
                            "eval_seconds",
                            "seconds",
                        )
                    }  # fmt: skip
                    for t in trials
                ],
                "mi": [t["mi"] for t in trials],
            }
            for key in ("mi_seconds", "train_seconds", "eval_seconds"):
                out[label][key] = sum(t[key] for t in trials)
    finally:
        ray.shutdown()
    out["identical_mi"] = out["before"]["mi"] == out["after"]["mi"]
    out["mi_before_over_after"] = out["before"]["mi_seconds"] / out["after"]["mi_seconds"]
    return out


def print_search_mi(res: dict, json_path: Path | None) -> None:
    b, a = res["before"], res["after"]
    print("\n# quickstart search (bisection, test_eval: all): MI per trial, seconds")
    print("| |f_b| | t | MI, Ray tasks (before) | MI, default (after) | f_b training |")
    print("|---|---|---|---|---|")
    for tb, ta in zip(b["trials"], a["trials"], strict=True):
        print(
            f"| {tb['fb_layers']} | {tb['trial']} | {tb['mi_seconds']:.2f} | "
            f"{ta['mi_seconds']:.2f} | {ta['train_seconds']:.2f} |"
        )
    print(
        f"| all {len(a['trials'])} | | **{b['mi_seconds']:.1f}** | **{a['mi_seconds']:.1f}** | "
        f"{a['train_seconds']:.1f} |\nMI before / after: {res['mi_before_over_after']:.0f}x; "
        f"identical I_j: {res['identical_mi']}; search wall {b['search_seconds']:.0f} s (before, "
        f"baseline included) / {a['search_seconds']:.0f} s (after, baseline cached)"
    )
    if json_path:
        json_path.write_text(json.dumps(res, indent=2))


def print_trial_mi(res: dict, json_path: Path | None) -> None:
    print(
        f"\n# quickstart trial MI ({res['test_images']} test images, {res['classes']} classes), "
        f"inside a trial holding 1 CPU + 1 reserved for MI; RAY_MIN_WORK = {res['ray_min_work']}"
    )
    print("| |f_b| | pairs | work | in-process s | Ray tasks s | default s | identical |")
    print("|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        print(
            f"| {r['depth']} | {r['pairs']} | {r['work']:,} | {r['in_process']:.3f} | "
            f"{r['ray']:.3f} | {r['default']:.3f} | {r['identical']} |"
        )
    t = res["total"]
    print(
        f"| all 6 | | | {t['in_process']:.2f} | {t['ray']:.2f} | {t['default']:.2f} | |\n"
        f"Ray tasks / in-process {res['ray_over_in_process']:.1f}x, "
        f"before (Ray tasks) / after (default) {res['ray_over_default']:.1f}x"
    )
    if json_path:
        json_path.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
