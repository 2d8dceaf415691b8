"""Every benchmark of the project side by side in one process, with one JSON of figures.

Usage:
    python benchmarks/run.py [--quick] [--search] [--json FILE] [--only training|mi|search ...]

``--quick`` is a smoke run: every benchmark at its smallest honest size (one batch of 16 and two
repeats for the training figures; N = 2,000 and 64 VGG16 images for MI; smallcnn's 6 depths,
T = 1, and one overhead trial for the search). It checks that every figure is computed, not
what it is worth. Measured: 3 min 51 s on this 2-core CPU (2026-12-07, ``nice -n 10``, other
jobs keeping the load average at 3-7): training 85 s, MI 45 s, search 99 s. The full mode
produces the tables in BENCHMARKS.md. The top level of the JSON holds the headline figures under the names
the issues use (``at_speedup_vs_naive``, ``at_ratio_to_limit``, ``edge_speedup_vs_thirdparty``,
``mi_vgg16_peak_gb``, ...); each benchmark's full output sits under its own key.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

HEADLINE = (
    "at_speedup_vs_naive",
    "at_ratio_to_limit",
    "at_naive_over_limit",
    "at_speedup_vs_naive_bf16",
    "at_ratio_to_limit_bf16",
    "augment_overhead",
    "augment_call_fraction",
    "edge_speedup_vs_thirdparty",
    "mi_vgg16_peak_gb",
    "search_epoch_ratio",
    "search_wall_ratio",
    "ray_overhead_fraction",
)


SEARCH: bool | None = None  # --search: the trial-method search in quick mode too


def run_training(quick: bool) -> dict[str, Any]:
    import bench_training

    results = bench_training.run(quick=quick, search=SEARCH)
    bench_training.report(results)
    return results


def run_mi(quick: bool) -> dict[str, Any]:
    """bench_mi computes its figures inside main(); run that and read back its JSON."""
    import bench_mi

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mi.json"
        argv = sys.argv
        sys.argv = ["bench_mi.py", *(["--quick"] if quick else []), "--json", str(out)]
        try:
            bench_mi.main()
        finally:
            sys.argv = argv
        return json.loads(out.read_text())


def run_search(quick: bool) -> dict[str, Any]:
    import bench_search

    return bench_search.run(quick=quick)


BENCHMARKS = {"training": run_training, "mi": run_mi, "search": run_search}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run, every benchmark at its smallest size: 3 min 51 s measured on a 2-core "
        "CPU at load average 3-7",
    )
    ap.add_argument("--json", type=Path, help="write every figure to this file")
    ap.add_argument(
        "--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these benchmarks"
    )
    ap.add_argument(
        "--search", action="store_true", help="also run bench_training's search in quick mode"
    )
    args = ap.parse_args()
    global SEARCH
    SEARCH = True if args.search else None
    figures: dict[str, Any] = {"mode": "quick" if args.quick else "full"}
    for name in args.only or list(BENCHMARKS):
        t0 = time.perf_counter()
        print(f"\n======== {name} ({figures['mode']}) ========", flush=True)
        figures[name] = BENCHMARKS[name](args.quick)
        figures[name]["benchmark_seconds"] = time.perf_counter() - t0
        for key in HEADLINE:
            if key in figures[name]:
                figures[key] = figures[name][key]
    print("\n======== figures ========")
    for key in HEADLINE:
        if key in figures:
            print(f"{key}: {figures[key]:.3f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
