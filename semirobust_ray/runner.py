"""Algorithm 1 end to end in one process, without Ray: ``python -m semirobust_ray.runner``.

Runs the baseline, then T trials for every candidate split depth in turn, and writes
``results.json`` (baseline metrics, every trial, every depth's summary, the minimal split). The
Ray Tune launcher (``launch/search.py``) schedules the same trials in parallel; this runner is
the reference it is checked against and a way to use the science without a cluster.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from semirobust_ray.algorithm1 import (
    LocalAccSr,
    TrialResult,
    run_trial,
    summarise_depth,
)
from semirobust_ray.answer import search_answer
from semirobust_ray.baseline import get_baseline
from semirobust_ray.config import ExperimentConfig, config_path, load_config
from semirobust_ray.experiment import prepare
from semirobust_ray.final_eval import apply_evaluation, chosen, evaluate_trial
from semirobust_ray.options import add_config_options, error, standalone
from semirobust_ray.paired import warn_noise_floor
from semirobust_ray.storage import write_json

logger = logging.getLogger(__name__)


def run_algorithm1(config: ExperimentConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Baseline + T trials per split depth, sequentially; returns (and writes) the results.

    Every candidate depth is tried T times (the ``grid`` protocol); ``results["answer"]`` holds
    both readings of the answer with their 90 % intervals
    (:func:`semirobust_ray.answer.search_answer`). With ``test_eval: best`` each depth's best
    trial by validation accuracy is evaluated on the test split once the depth's trials are
    done (:mod:`semirobust_ray.final_eval`).
    """
    start = time.perf_counter()
    exp = prepare(config)
    baseline = get_baseline(exp)
    warn_noise_floor(baseline.metrics.acc_star_val, len(exp.eval_split("val")[1]), config.k)
    trials: list[TrialResult] = []
    summaries = []
    acc_sr = LocalAccSr()  # each depth's Acc_sr is measured by its first trial, once
    for depth in exp.split_depths:
        depth_trials = [
            run_trial(exp, baseline, depth, t, acc_sr=acc_sr)
            for t in range(config.trials_per_depth)
        ]
        # test_eval: best: the depth's best trial by validation, on the test split, here.
        for t in chosen(depth_trials, config.test_eval):
            if not t.test_evaluated:
                apply_evaluation(t, evaluate_trial(exp, baseline, t))
        for t in depth_trials:
            t.fb_state = {}  # results.json holds numbers; T x depths f_b copies would pile up
        trials += depth_trials
        summaries.append(summarise_depth(depth_trials))
        s = summaries[-1]
        logger.info(
            f"[split |f_b|={depth}] Acc = {s.acc:.4f} (Acc* {s.acc_star:.4f}), "
            f"{sum(t.reached for t in depth_trials)} of {len(depth_trials)} trials within k"
        )
    results = {
        "config": config.to_dict(),
        "num_layers": exp.num_layers,
        "baseline": {"key": baseline.key, **asdict(baseline.metrics)},
        "trials": [t.to_dict() for t in trials],
        "depths": [s.to_dict() for s in summaries],
        "seconds": time.perf_counter() - start,
    }
    # Read as the report reads any search: each depth's reach probability, the 90 % interval.
    results["answer"] = search_answer(results, exp.split_depths)
    if out_dir is not None:
        write_json(Path(out_dir) / "results.json", results)
    return results


#: ``semirobust run``: one line, for the command list.
SUMMARY = "run Algorithm 1 in this process, without Ray (every depth, T trials each)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--config``, ``--set``, ``--out``."""
    add_config_options(p, default="the built-in defaults (smallcnn on digits)")
    p.add_argument("--out", default="results/runner", help="directory for results.json")


def run(args: argparse.Namespace) -> int:
    """Run Algorithm 1 from parsed options; print both readings of the answer."""
    try:
        path = None if args.config is None else config_path(args.config)
        results = run_algorithm1(load_config(path, args.overrides), args.out)
    except ValueError as err:  # every user-facing error class derives from ValueError
        return error(err)
    answer = results["answer"]
    for reading in ("smallest_robust_fa", "smallest_fb"):
        print(f"{answer[reading]['statement']}; {answer[reading]['interval_statement']}")
    print(f"results: {Path(args.out) / 'results.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m semirobust_ray.runner`` (the same as ``semirobust run``)."""
    return standalone("python -m semirobust_ray.runner", __doc__, (add_arguments, run), argv)


if __name__ == "__main__":
    sys.exit(main())
