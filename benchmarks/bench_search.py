"""Search-level cost: bisection against grid, and what Ray Tune adds on top of the trials.

``python benchmarks/bench_search.py [--quick] [--json FILE]``

- ``search_epoch_ratio``: trial-epochs spent by the ``bisection`` search divided by those of the
  ``grid`` search on the same problem (12 candidate depths of the 12-layer ``smallvgg`` on the
  digits data), for the default target (the smallest robust f*_a), both required to find the
  same answer; the wall-time ratio beside it, grid's outcome per depth (``grid_reached``,
  reached/trials) with the number of depths that contradict bisection's premise, and the 90 %
  interval the report reads from each search's trials.
- ``ray_overhead_fraction``: (search wall time − time spent inside trials) / search wall time for
  a search of sequential trials lasting ≥ 30 s each, Ray's start-up included. The baseline is
  taken from a warm cache first, so the figure is Ray's cost, not stage 1's.

``--quick`` is a smoke run (about 100 s on 2 cores): the comparison on smallcnn's 6 depths with
a smaller baseline, and one overhead trial of one epoch, shorter than 30 s, so its overhead
fraction is overstated. It checks that the figures are computed, not what they are worth.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from semirobust_ray.baseline import get_baseline
from semirobust_ray.config import ExperimentConfig
from semirobust_ray.experiment import prepare
from semirobust_ray.ray_search import run_search

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10_subset.npz"
DIGITS = dict(
    dataset="digits",
    attack="pgd",
    eps=0.1,
    alpha=0.03,
    batch_size=64,
    lr=0.05,
    mi=False,
    baseline_epochs=4,
    baseline_adv_epochs=4,
)


def _quiet() -> None:
    """The package's progress lines off (it logs through ``logging``, logger ``semirobust_ray``):
    the benchmark prints its figures only."""
    logging.getLogger("semirobust_ray").setLevel(logging.WARNING)


def _trial_epochs(outcome) -> int:
    return sum(t["epochs_run"] for t in outcome.results["trials"])


def search_epoch_ratio(root: Path, quick: bool) -> dict[str, Any]:
    """Run grid and bisection over the same 12 depths; compare their cost and answer."""
    config = ExperimentConfig.from_dict(
        {
            **DIGITS,
            # quick: the 6 depths of smallcnn, a smoke run of the same comparison
            "model": "smallcnn" if quick else "smallvgg",
            "steps": 3,
            "split_depths": list(range(1, 7 if quick else 13)),
            "epochs": 3,
            "k": 0.05,
            "trials_per_depth": 1 if quick else 2,
            "cache_dir": str(root / "cache"),
            # quick: a smoke run on a third of the digits with a shorter baseline
            **({"max_train": 500, "baseline_epochs": 2, "baseline_adv_epochs": 2} if quick else {}),
        }
    )
    get_baseline(prepare(config))  # both searches then share the cached baseline
    outcomes = {}
    for algo in ("grid", "bisection"):
        t0 = time.perf_counter()
        outcomes[algo] = run_search(
            config.replace(search=algo),
            storage_path=str(root),
            name=f"ratio-{algo}",
            verbose=0,
            address="local",  # never join a cluster someone else started on this machine
        )
        outcomes[algo].seconds = time.perf_counter() - t0
    grid, bis = outcomes["grid"], outcomes["bisection"]
    return {
        "search_epoch_ratio": _trial_epochs(bis) / _trial_epochs(grid),
        "search_wall_ratio": bis.seconds / grid.seconds,
        "grid_trial_epochs": _trial_epochs(grid),
        "bisection_trial_epochs": _trial_epochs(bis),
        "grid_trials": len(grid.results["trials"]),
        "bisection_trials": len(bis.results["trials"]),
        "target": config.minimise,
        "grid_answer_fb_layers": grid.answer_fb_layers,
        "bisection_answer_fb_layers": bis.answer_fb_layers,
        "same_answer": grid.answer_fb_layers == bis.answer_fb_layers,
        # The 90 % interval the report reads from each search's own trials (|f_b|, ends in
        # premise order; None: "no depth").
        "grid_answer_interval": grid.answer["answer"]["interval"]["fb_layers"],
        "bisection_answer_interval": bis.answer["answer"]["interval"]["fb_layers"],
        # Depths of grid's outcome table that contradict bisection's premise (none: monotone).
        "grid_premise_violations": len(grid.answer["premise_violations"]),
        "grid_reached": " ".join(f"{e['reached']}/{e['trials']}" for e in grid.answer["evidence"]),
        "candidate_depths": len(config.split_depths),
        "trials_per_depth": config.trials_per_depth,
    }


def ray_overhead_fraction(root: Path, quick: bool) -> dict[str, Any]:
    """Sequential trials of >= 30 s each; the share of wall time not spent inside trials.

    Uses the shared CIFAR-10 subset: on digits a trial reaches Acc* in seconds, far shorter
    than the trials of a real search, which last minutes to hours.
    """
    config = ExperimentConfig.from_dict(
        {
            **DIGITS,
            "model": "smallcnn",
            "dataset": "npz",
            "data_path": str(CIFAR),
            "eps": 8 / 255,
            "alpha": 2 / 255,
            "steps": 10,
            "max_train": 2000,
            "max_test": 500,
            # quick: one trial of one epoch (shorter than the figure's 30 s, so the fraction is
            # overstated; a smoke run checks that it is computed)
            "split_depths": [5] if quick else [2, 4, 5, 6],
            "epochs": 1 if quick else 3,
            **(
                {"max_train": 1000, "baseline_epochs": 1, "baseline_adv_epochs": 1} if quick else {}
            ),
            "k": 0.0,
            "trials_per_depth": 1,
            "max_concurrent": 1,
            "cache_dir": str(root / "cache-overhead"),
        }
    )
    get_baseline(prepare(config))
    if ray.is_initialized():
        ray.shutdown()  # Ray's start-up counts: a user's search pays it too
    t0 = time.perf_counter()
    outcome = run_search(
        config, storage_path=str(root), name="overhead", verbose=0, address="local"
    )
    wall = time.perf_counter() - t0
    inside = sum(t["seconds"] for t in outcome.results["trials"])
    return {
        "ray_overhead_fraction": (wall - inside) / wall,
        "overhead_wall_s": wall,
        "overhead_trial_s": inside,
        "overhead_trials": len(outcome.results["trials"]),
        "overhead_min_trial_s": min(t["seconds"] for t in outcome.results["trials"]),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Both figures, side by side in one process."""
    _quiet()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        figures = search_epoch_ratio(root, quick)
        ray.shutdown()
        figures.update(ray_overhead_fraction(root, quick))
        ray.shutdown()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: smallcnn's 6 depths, T = 1, less data, one overhead trial",
    )
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    figures = run(args.quick)
    for key, value in figures.items():
        print(f"{key:32s} {value:.4g}" if isinstance(value, float) else f"{key:32s} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
