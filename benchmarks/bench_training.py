"""Benchmark of f_b adversarial training (semirobust_ray.training.train_epoch).

Figures (ratios measured in the same process, variants interleaved and medians taken, so they
survive a noisy machine):

* ``at_speedup_vs_naive``: examples/s of our f_b adversarial epoch (PGD ε = 8/255, step 2/255,
  10 steps) over a naive loop written the way the authors' code does it: torchattacks.PGD on the
  whole model, full backward through the whole model, SGD on every parameter, f_a restored from
  its state dict after every step, batches from a DataLoader. Same VGG16-BN (32×32), CIFAR-10
  images, batch size, split depth and attack.
* ``at_ratio_to_limit``: our epoch time over the time of the work no implementation can skip,
  timed separately: per batch K × (forward + input-gradient backward through the whole model)
  + forward of f*_a + forward and backward of f_b.
* ``at_naive_over_limit``: the naive loop over that limit, i.e. the best speed-up ANY exact
  fp32 implementation could reach against it on this machine.
* the same with bf16 autocast / channels_last (options of train_epoch), and a breakdown of
  where the naive loop loses time.
* ``augment_overhead``: median f_b PGD-10 epoch time with training-time augmentation (random
  crop with 4-pixel zero padding + horizontal flip, ``train_epoch(augment=True)``) over the
  same epoch without it, minus 1, the two interleaved; ``augment_call_fraction``: the time of
  the epoch's :func:`semirobust_ray.data.augment_batch` calls alone over the plain epoch's
  (target for both: at most 0.03). ``--no-augment`` skips them, ``--no-speed --no-search``
  runs only them.
* ``--search`` (on in full mode): Algorithm 1 with each trial training method (standard PGD-10,
  fast, free, and standard under bf16) on the shared CIFAR-10 subset (smallcnn): minimal split,
  Acc per depth and compute. About 75 min on 2 CPU cores with ``--threads 2``.

Usage:
    python benchmarks/bench_training.py [--quick] [--search | --no-search] [--no-speed]
        [--no-augment] [--threads N] [--cache-dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semirobust_ray.attacks import create_attack  # noqa: E402
from semirobust_ray.data import augment_batch, load_dataset, to_unit  # noqa: E402
from semirobust_ray.models import create_model, split  # noqa: E402
from semirobust_ray.training import make_optimizer, train_epoch  # noqa: E402

CIFAR = Path("/work/shared/datasets/cifar10_subset.npz")
EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 10
FB_LAYERS = 4  # the paper's minimal robust split for VGG16 / CIFAR-10


# --------------------------------------------------------------------------- the three loops


def naive_epoch(
    model: nn.Module,
    fa_state: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    seed: int,
) -> None:
    """The authors' style: DataLoader, torchattacks.PGD, full backward, restore f_a each step."""
    import torchattacks

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(to_unit(x), y),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    # Every parameter is trained; f_a is put back afterwards.
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    atk = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)
    model.train()
    for xb, yb in loader:
        x_adv = atk(xb, yb)
        loss = F.cross_entropy(model(x_adv), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.load_state_dict(fa_state, strict=False)


def ours_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    seed: int,
    **options: Any,
) -> None:
    attack = create_attack("pgd", model, eps=EPS, alpha=ALPHA, steps=STEPS, seed=seed)
    train_epoch(
        model,
        x,
        y,
        opt,
        batch_size=batch_size,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed),
        attack=attack,
        **options,
    )


def vgg_halves(model: nn.Module, fb_modules: list[str]) -> tuple[nn.Module, nn.Module]:
    """f*_a and f_b of a split VGG as two Sequentials sharing the model's modules."""
    net = model.net
    seq: list[tuple[str, nn.Module]] = [("normalize", model.normalize)]
    seq += [(f"net.features.{i}", m) for i, m in enumerate(net.features)]
    seq += [("net.avgpool", net.avgpool), ("flatten", nn.Flatten())]
    seq += [(f"net.classifier.{i}", m) for i, m in enumerate(net.classifier)]
    cut = next(i for i, (name, _) in enumerate(seq) if name == fb_modules[0])
    return nn.Sequential(*(m for _, m in seq[:cut])), nn.Sequential(*(m for _, m in seq[cut:]))


def limit_epoch(
    model: nn.Module,
    fa: nn.Module,
    fb: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    bf16: bool = False,
) -> None:
    """Only the unskippable work: K × (forward + input-gradient backward), f*_a forward, f_b
    forward + backward. No projection, no optimizer step, no bookkeeping."""
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    params = list(model.parameters())
    fb_params = [p for p in fb.parameters() if p.requires_grad]
    for start in range(0, len(y), batch_size):
        xb, yb = to_unit(x[start : start + batch_size]), y[start : start + batch_size]
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        model.eval()
        for _ in range(STEPS):
            xa = xb.detach().requires_grad_(True)
            with amp:
                out = model(xa)
            torch.autograd.grad(F.cross_entropy(out.float(), yb, reduction="sum"), xa)
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
        model.train()
        with torch.no_grad(), amp:
            h = fa(xb)
        with amp:
            out = fb(h)
        loss = F.cross_entropy(out.float(), yb)
        torch.autograd.grad(loss, fb_params)


# --------------------------------------------------------------------------- measurement


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cifar_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uint8 training images and labels of the shared CIFAR-10 subset."""
    data = load_dataset("npz", path=str(CIFAR), max_train=n + n // 9 + 10, val_fraction=0.1)
    return data.x_train[:n], data.y_train[:n]


def bench_epochs(batch_size: int, n_batches: int, repeats: int, fb_layers: int) -> dict:
    """Interleaved epochs of every variant; medians of ``repeats`` timings each."""
    n = batch_size * n_batches
    x, y = _cifar_images(n)
    torch.manual_seed(0)
    base = create_model("vgg16", 10, 32)

    # Naive: the whole model trains, f_a is restored from its state dict after every step.
    naive_model = copy.deepcopy(base)
    ref = split(copy.deepcopy(base), fb_layers)
    fa_state = {
        k: v.clone() for k, v in naive_model.state_dict().items() if k not in set(ref.fb_state())
    }

    def ours_model(**kw: Any) -> tuple[nn.Module, torch.optim.Optimizer]:
        s = split(copy.deepcopy(base), fb_layers)
        if kw.get("channels_last"):
            s.model.to(memory_format=torch.channels_last)
        return s.model, make_optimizer(s.fb_parameters(), 0.01, 0.9, 5e-4)

    ours_m, ours_opt = ours_model()
    bf_m, bf_opt = ours_model()
    lim = split(copy.deepcopy(base), fb_layers)
    fa, fb = vgg_halves(lim.model, lim.fb_modules)

    variants: dict[str, Callable[[int], None]] = {
        "naive": lambda r: naive_epoch(naive_model, fa_state, x, y, batch_size, r),
        "ours": lambda r: ours_epoch(ours_m, ours_opt, x, y, batch_size, r),
        "limit": lambda r: limit_epoch(lim.model, fa, fb, x, y, batch_size),
        "ours_bf16": lambda r: ours_epoch(bf_m, bf_opt, x, y, batch_size, r, bf16=True),
        "limit_bf16": lambda r: limit_epoch(lim.model, fa, fb, x, y, batch_size, bf16=True),
    }
    for fn in variants.values():  # warm-up: allocator, oneDNN primitive caches
        fn(0)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(repeats):
        for name, fn in variants.items():
            times[name].append(_timed(lambda fn=fn, r=r: fn(r + 1)))
    # The minimum over interleaved repeats: on a CPU shared with other jobs, noise only ever
    # adds time, so the fastest repeat is the best estimate of each variant's own cost.
    med = {k: min(v) for k, v in times.items()}
    return {
        "examples": n,
        "batch_size": batch_size,
        "fb_layers": fb_layers,
        "repeats": repeats,
        "seconds_min": med,
        "seconds_median": {k: statistics.median(v) for k, v in times.items()},
        "seconds_all": times,
        "examples_per_s": {k: n / v for k, v in med.items()},
        "at_speedup_vs_naive": med["naive"] / med["ours"],
        "at_ratio_to_limit": med["ours"] / med["limit"],
        "at_naive_over_limit": med["naive"] / med["limit"],
        "at_speedup_vs_naive_bf16": med["naive"] / med["ours_bf16"],
        "at_ratio_to_limit_bf16": med["ours_bf16"] / med["limit_bf16"],
    }


def bench_augment(batch_size: int, n_batches: int, repeats: int, fb_layers: int) -> dict:
    """What training-time augmentation costs an f_b PGD-10 epoch (VGG16-BN, CIFAR-10 images).

    Two epochs that differ only in ``augment`` run interleaved ``repeats`` times each (each on
    its own copy of the split model, so neither inherits the other's optimizer state); then the
    epoch's augmentation calls alone (the same batch sizes, a generator like the epoch's) are
    timed many times, since one call is a few milliseconds against seconds of attack.
    """
    n = batch_size * n_batches
    x, y = _cifar_images(n)
    torch.manual_seed(0)
    base = create_model("vgg16", 10, 32)
    runs: dict[str, tuple[nn.Module, torch.optim.Optimizer, bool]] = {}
    for name, augment in (("pgd", False), ("pgd_augment", True)):
        s = split(copy.deepcopy(base), fb_layers)
        runs[name] = (s.model, make_optimizer(s.fb_parameters(), 0.01, 0.9, 5e-4), augment)

    def epoch(name: str, r: int) -> None:
        model, opt, augment = runs[name]
        ours_epoch(model, opt, x, y, batch_size, r, augment=augment)

    for name in runs:  # warm-up
        epoch(name, 0)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(repeats):
        # Alternate which variant goes first, so a slow spell of the shared CPU hits both.
        for name in runs if r % 2 == 0 else reversed(list(runs)):
            times[name].append(_timed(lambda name=name, r=r: epoch(name, r + 1)))
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}

    def augment_calls(r: int) -> None:
        g = torch.Generator().manual_seed(r)
        for start in range(0, n, batch_size):
            augment_batch(x[start : start + batch_size], g)

    augment_calls(0)
    call_reps = 50
    call_times = [_timed(lambda r=r: augment_calls(r)) for r in range(call_reps)]
    call_s = statistics.median(call_times)
    return {
        "examples": n,
        "batch_size": batch_size,
        "fb_layers": fb_layers,
        "repeats": repeats,
        "seconds_median": med,
        "seconds_min": low,
        "seconds_all": times,
        "augment_calls_seconds_per_epoch_median": call_s,
        "augment_calls_repeats": call_reps,
        "augment_overhead": med["pgd_augment"] / med["pgd"] - 1,
        "augment_overhead_min": low["pgd_augment"] / low["pgd"] - 1,
        "augment_call_fraction": call_s / med["pgd"],
    }


def bench_parts(batch_size: int, repeats: int, fb_layers: int) -> dict:
    """Where the naive loop spends its extra time: one PGD-10 attack and one weight update."""
    import torchattacks

    torch.manual_seed(0)
    base = create_model("vgg16", 10, 32)
    x = torch.rand(batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (batch_size,))
    naive = copy.deepcopy(base)
    s = split(copy.deepcopy(base), fb_layers)
    fa_state = {k: v.clone() for k, v in naive.state_dict().items() if k not in s.fb_state()}
    opt_all = torch.optim.SGD(naive.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    opt_fb = make_optimizer(s.fb_parameters(), 0.01, 0.9, 5e-4)
    ta = torchattacks.PGD(naive, eps=EPS, alpha=ALPHA, steps=STEPS)
    ours = create_attack("pgd", s.model, eps=EPS, alpha=ALPHA, steps=STEPS, seed=0)
    cl = split(copy.deepcopy(base), fb_layers).model.to(memory_format=torch.channels_last)
    ours_cl = create_attack("pgd", cl, eps=EPS, alpha=ALPHA, steps=STEPS, seed=0)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def naive_update() -> None:
        naive.train()
        loss = F.cross_entropy(naive(x), y)
        opt_all.zero_grad()
        loss.backward()
        opt_all.step()
        naive.load_state_dict(fa_state, strict=False)

    def ours_update() -> None:
        s.model.train()
        loss = F.cross_entropy(s.model(x), y)
        opt_fb.zero_grad(set_to_none=True)
        loss.backward()
        opt_fb.step()

    parts = {
        "attack_torchattacks": lambda: ta(x, y),
        "attack_ours": lambda: ours(x, y),
        "attack_ours_channels_last": lambda: ours_cl(x_cl, y),
        "update_naive_full_backward_restore": naive_update,
        "update_ours_fb_only": ours_update,
    }
    for fn in parts.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in parts}
    for _ in range(repeats):
        for k, fn in parts.items():
            times[k].append(_timed(fn))
    return {k: min(v) for k, v in times.items()}


# --------------------------------------------------------------------------- trial methods


#: Trial training arms compared: (train_method, precision). The bf16 arm is standard PGD-10 under
#: bf16 autocast, to show whether the opt-in speed flag changes what the search finds; precision
#: is part of the baseline key, so that arm trains (and is measured against) its own bf16 baseline.
SEARCH_ARMS: dict[str, tuple[str, str]] = {
    "standard": ("standard", "fp32"),
    "fast": ("fast", "fp32"),
    "free": ("free", "fp32"),
    "standard_bf16": ("standard", "bf16"),
}


def _log_arm(arm: str, message: str) -> None:
    print(f"[{arm}] {message}", flush=True)


def bench_search(quick: bool, cache_dir: str | None = None) -> dict:
    """Algorithm 1 on the CIFAR-10 subset with each trial training arm (fp32 arms share a baseline).

    Every arm's k-stop and Acc use the same strong attack (PGD-10, fp32), so the arms differ only
    in how f_b is trained. ``cache_dir`` lets a rerun reuse the baseline (its key covers every
    option the baseline depends on).
    """
    from semirobust_ray.config import ExperimentConfig
    from semirobust_ray.runner import run_algorithm1

    cache = cache_dir or tempfile.mkdtemp(prefix="bench_training_cache_")
    if quick:
        scale = dict(max_train=1000, max_test=500, eval_samples=300, baseline_epochs=8,
                     baseline_adv_epochs=8, epochs=3, trials_per_depth=1, k=0.05)  # fmt: skip
    else:
        # The whole subset and 1,000 attacked test images (standard error ~1.4 points at
        # Acc* ~ 0.27), so a tolerance of 2 points is meaningful; T = 2 trials per depth.
        scale = dict(max_train=None, max_test=None, eval_samples=1000, baseline_epochs=10,
                     baseline_adv_epochs=10, epochs=3, trials_per_depth=2, k=0.02)  # fmt: skip
    base = dict(
        model="smallcnn", dataset="npz", data_path=str(CIFAR), attack="pgd", eps=EPS,
        alpha=ALPHA, steps=STEPS, batch_size=128, lr=0.05, mi=False, device="cpu",
        cache_dir=cache, seed=0, **scale,
    )  # fmt: skip
    grads_per_batch = {"standard": STEPS + 1, "fast": 2, "free": 4}
    out: dict[str, Any] = {"scale": {k: v for k, v in base.items() if k != "cache_dir"}}
    for arm, (method, precision) in SEARCH_ARMS.items():
        config = ExperimentConfig.from_dict(
            {**base, "train_method": method, "precision": precision}
        )
        _log_arm(arm, f"train_method={method}, precision={precision}")
        t0 = time.perf_counter()
        res = run_algorithm1(config)
        wall = time.perf_counter() - t0
        trials = res["trials"]
        out[arm] = {
            "train_method": method,
            "precision": precision,
            "smallest_robust_fa_fb_layers": res["answer"]["smallest_robust_fa"]["fb_layers"],
            "smallest_fb_layers": res["answer"]["smallest_fb"]["fb_layers"],
            "acc_star": res["baseline"]["acc_star"],
            "acc_by_depth": {d["fb_layers"]: round(d["acc"], 4) for d in res["depths"]},
            "reached_by_depth": {d["fb_layers"]: d["reached"] for d in res["depths"]},
            "epochs_by_depth": {d["fb_layers"]: d["epochs"] for d in res["depths"]},
            "trial_epochs": sum(t["epochs_run"] for t in trials),
            "trial_seconds": sum(t["seconds"] for t in trials),
            "train_seconds": sum(h["seconds"] for t in trials for h in t["history"]),
            "gradient_computations_per_batch_epoch": grads_per_batch[method],
            "wall_seconds_incl_baseline": wall,
        }
    std = out["standard"]
    for arm in SEARCH_ARMS:
        if arm == "standard":
            continue
        m = out[arm]
        m["same_answers_as_pgd"] = all(
            m[key] == std[key] for key in ("smallest_robust_fa_fb_layers", "smallest_fb_layers")
        )
        m["trial_seconds_fraction_of_pgd"] = m["trial_seconds"] / std["trial_seconds"]
        m["train_seconds_fraction_of_pgd"] = m["train_seconds"] / std["train_seconds"]
        m["max_abs_acc_diff_vs_pgd"] = max(
            abs(m["acc_by_depth"][d] - std["acc_by_depth"][d]) for d in std["acc_by_depth"]
        )
    return out


# --------------------------------------------------------------------------- entry points

SPEED_FIGURES = (
    "at_speedup_vs_naive",
    "at_ratio_to_limit",
    "at_naive_over_limit",
    "at_speedup_vs_naive_bf16",
    "at_ratio_to_limit_bf16",
)


AUGMENT_FIGURES = ("augment_overhead", "augment_call_fraction")


def run(
    quick: bool = False,
    search: bool | None = None,
    threads: int = 1,
    cache_dir: str | None = None,
    speed: bool = True,
    augment: bool = True,
) -> dict:
    """All training figures; ``search`` defaults to on in full mode, off in quick mode.

    One intra-op thread by default: on a machine whose cores other jobs also use, OpenMP
    barriers across two threads turn any preemption into a stall (we saw the same op take 3x
    longer), while one thread degrades gracefully. Ratios are what this benchmark reports.
    ``speed=False`` skips the epoch-speed figures, ``augment=False`` the augmentation-cost ones.
    """
    torch.set_num_threads(threads)
    if search is None:
        search = not quick
    if quick:  # a smoke run: one batch of 16, the minimum of two repeats (ratios are noisy)
        batch_size, n_batches, repeats = 16, 1, 2
    else:
        batch_size, n_batches, repeats = 32, 3, 5
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {'CUDA' if torch.cuda.is_available() else 'no GPU'}",
        "device": "cpu",
        "threads": threads,
    }
    if speed:
        epochs = bench_epochs(batch_size, n_batches, repeats, FB_LAYERS)
        results["epochs"] = epochs
        for key in SPEED_FIGURES:
            results[key] = epochs[key]
        results["parts_seconds"] = bench_parts(batch_size, repeats, FB_LAYERS)
    if augment:
        # More repeats than the speed figures: the effect sought is a few percent (a smoke run
        # only checks that the figure is computed).
        aug = bench_augment(batch_size, n_batches, repeats + (0 if quick else 2), FB_LAYERS)
        results["augment"] = aug
        for key in AUGMENT_FIGURES:
            results[key] = aug[key]
    if search:
        results["search"] = bench_search(quick, cache_dir)
    return results


def report(results: dict) -> None:
    if "epochs" in results:
        report_speed(results)
    if "augment" in results:
        a = results["augment"]
        print(
            f"\n# augmentation (crop, 4-px zero padding + flip), f_b PGD-10 epoch, VGG16-BN "
            f"32x32, |f_b| = {a['fb_layers']}, {a['examples']} images, batch {a['batch_size']} "
            f"(median of {a['repeats']}, {results['threads']} thread(s))"
        )
        for k, v in a["seconds_median"].items():
            print(f"{k:>20}: {v:7.2f} s (min {a['seconds_min'][k]:.2f} s)")
        print(f"augment calls alone: {a['augment_calls_seconds_per_epoch_median'] * 1e3:.2f} ms")
        for k in (*AUGMENT_FIGURES, "augment_overhead_min"):
            print(f"{k}: {a[k]:+.3%}")
    if "search" in results:
        s = results["search"]
        print(f"\n# Algorithm 1 by trial training arm ({s['scale']})")
        for arm in SEARCH_ARMS:
            print(f"{arm}: {json.dumps(s[arm])}")


def report_speed(results: dict) -> None:
    e = results["epochs"]
    print(
        f"\n# f_b adversarial epoch, VGG16-BN 32x32, |f_b| = {e['fb_layers']}, "
        f"{e['examples']} CIFAR-10 images, batch {e['batch_size']}, PGD-10 (min of "
        f"{e['repeats']}, {results['threads']} thread(s))"
    )
    for k, v in e["seconds_min"].items():
        print(f"{k:>20}: {v:7.2f} s  {e['examples_per_s'][k]:6.1f} ex/s")
    for k in SPEED_FIGURES:
        print(f"{k}: {results[k]:.3f}")
    print(
        "parts (s, one batch): "
        + ", ".join(f"{k} {v:.3f}" for k, v in results["parts_seconds"].items())
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: one batch, two repeats, no search"
    )
    ap.add_argument(
        "--search",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the trial-method search (default: in full mode only); --no-search skips it",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument(
        "--cache-dir",
        help="baseline cache of the trial-method search (default: a fresh temporary directory)",
    )
    ap.add_argument(
        "--no-speed",
        dest="speed",
        action="store_false",
        help="skip the epoch-speed figures (run only the trial-method search)",
    )
    ap.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="skip the augmentation-cost figures (augment_overhead, augment_call_fraction)",
    )
    ap.add_argument("--json", type=Path, help="write all results to this file")
    args = ap.parse_args()
    results = run(
        quick=args.quick,
        search=args.search,
        threads=args.threads,
        cache_dir=args.cache_dir,
        speed=args.speed,
        augment=args.augment,
    )
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
