"""The test-set evaluations a report needs, chosen from finished trials (``test_eval``).

Decisions need only the validation check (:mod:`semirobust_ray.paired`); the test-set robust
accuracy (AutoAttack in the paper's configs) and the layer MI are what Table 1 reports, and they
cost most of a search's compute when every trial pays for them. With ``test_eval: best`` (the
default) a trial skips both, and after the search each depth's best trial by validation
accuracy (:func:`semirobust_ray.algorithm1.best_trial`: the highest ``val_acc``, ties the lowest
trial index; the trial Table 1 reports) is evaluated here: f*_a from the baseline with the
trial's final f_b, its Acc under ``eval_attack`` seeded with the trial's seed, its clean
accuracy and its I_{j,t}, exactly what a trial does itself with ``test_eval: all``. So the test
cost of a search grows with its depths, not with its trials.

No Ray here: the runner calls :func:`evaluate_trial` in-process, the Tune search
(:mod:`semirobust_ray.ray_search`) runs :func:`evaluate_stored` as Ray tasks and saves each
result with :func:`save_evaluation` as it completes (``<search>/evaluations/<trial dir>.json``,
atomically, through :class:`~semirobust_ray.storage.Store`), so a search stopped during its
evaluations and resumed redoes none that finished; :func:`semirobust_ray.results.load_results`
merges them into the trials' dicts.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from semirobust_ray.algorithm1 import (
    FinalEvaluation,
    TrialResult,
    best_trial,
    final_test_evaluation,
    semirobust_model,
)
from semirobust_ray.baseline import Baseline
from semirobust_ray.experiment import Experiment
from semirobust_ray.results import (
    FINAL_FB_FILE,
    evaluation_file,
    final_fb_file,
    trial_results,
)
from semirobust_ray.storage import Store
from semirobust_ray.training import resolve_device

logger = logging.getLogger(__name__)

#: Values of the ``test_eval`` key.
TEST_EVAL_MODES = ("best", "all")


def chosen(trials: list[TrialResult], test_eval: str) -> list[TrialResult]:
    """The trials whose test Acc the report needs: each depth's best (``best``) or all."""
    if test_eval not in TEST_EVAL_MODES:
        raise ValueError(f"test_eval must be one of {TEST_EVAL_MODES}, got {test_eval!r}")
    if test_eval == "all":
        return list(trials)
    by_depth: dict[int, list[TrialResult]] = {}
    for t in trials:
        by_depth.setdefault(int(t.fb_layers), []).append(t)
    return [best_trial(by_depth[d]) for d in sorted(by_depth)]


def pending(results: dict[str, Any], test_eval: str) -> list[dict[str, Any]]:
    """The stored trials (dicts of :func:`~semirobust_ray.results.load_results`, evaluations
    already merged) that :func:`chosen` names and that have no test evaluation yet."""
    dicts = results.get("trials", [])
    objects = trial_results(results)
    wanted = {id(t) for t in chosen(objects, test_eval)}
    return [
        d for d, t in zip(dicts, objects, strict=True) if id(t) in wanted and not t.test_evaluated
    ]


def evaluate_network(
    exp: Experiment,
    baseline: Baseline,
    fb_layers: int,
    fb_state: dict[str, torch.Tensor],
    seed: int,
) -> FinalEvaluation:
    """f*_a (the baseline's) with ``fb_state`` as f_b on the test split: Acc, clean Acc, MI."""
    s = semirobust_model(exp, baseline, fb_layers)
    try:
        s.load_fb_state(fb_state)
        return final_test_evaluation(exp, s, seed)
    finally:
        s.release()


def evaluate_trial(exp: Experiment, baseline: Baseline, trial: TrialResult) -> FinalEvaluation:
    """:func:`evaluate_network` of a trial that still holds its final f_b (the runner's)."""
    if not trial.fb_state:
        raise ValueError(f"trial |f_b|={trial.fb_layers} t={trial.trial} holds no final f_b")
    return evaluate_network(exp, baseline, trial.fb_layers, trial.fb_state, trial.seed)


def apply_evaluation(trial: TrialResult, ev: FinalEvaluation) -> None:
    """Record ``ev`` in ``trial`` (in place): Acc, clean Acc, MI and the seconds they took."""
    trial.acc, trial.clean_acc, trial.mi = ev.acc, ev.clean_acc, ev.mi
    trial.eval_seconds += ev.eval_seconds
    trial.mi_seconds += ev.mi_seconds
    trial.test_evaluated = True


def evaluate_stored(
    exp: Experiment, baseline: Baseline, search_uri: str, trial: dict[str, Any]
) -> dict[str, Any]:
    """Evaluate a stored trial of a Tune search (its ``final_fb.pt``) where this runs (a Ray
    task: the device is resolved here); the record :func:`save_evaluation` stores."""
    store = Store(search_uri)
    rel = final_fb_file(store, trial["trial_dir"])
    if rel is None:
        raise FileNotFoundError(f"{store.uri(trial['trial_dir'])} holds no {FINAL_FB_FILE}")
    final = store.load_state(rel)
    exp = dataclasses.replace(exp, device=resolve_device(exp.config.device))
    ev = evaluate_network(exp, baseline, int(final["fb_layers"]), final["fb_state"], final["seed"])
    logger.info(
        f"[test eval] |f_b|={final['fb_layers']} t={final['trial']}: Acc {ev.acc:.4f}, "
        f"clean {ev.clean_acc:.4f}, {ev.eval_seconds + ev.mi_seconds:.1f} s"
    )
    return {
        "trial_dir": trial["trial_dir"],
        "fb_layers": int(final["fb_layers"]),
        "trial": int(final["trial"]),
        "seed": int(final["seed"]),
        **ev.to_dict(),
    }


def save_evaluation(search: Store, record: dict[str, Any]) -> None:
    """Store one trial's evaluation (atomically) where ``load_results`` merges it from."""
    search.write_json(evaluation_file(record["trial_dir"]), record)
