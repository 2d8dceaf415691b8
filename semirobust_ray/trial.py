"""An Algorithm 1 trial as a Ray Tune function trainable.

The science lives in :func:`semirobust_ray.algorithm1.run_trial`; this module only connects it to
Tune: it reports after every epoch with a checkpoint of f_b alone (a few MB, not the whole
network), resumes from that checkpoint when Tune restarts a failed trial, and finishes with one
report carrying the trial's Acc, whether it reached Acc* − k, and its I_{j,t} per layer pair.

Large objects (the data, the baseline weights) arrive through ``tune.with_parameters``, never
through ``config``: the config holds only the trial's coordinates and the settings worth seeing
in TensorBoard's HParams view.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from semirobust_ray.algorithm1 import EpochRecord, TrialResult, TrialState, run_trial
from semirobust_ray.baseline import Baseline
from semirobust_ray.experiment import Experiment
from semirobust_ray.logs import configure as configure_logging
from semirobust_ray.results import CHECKPOINT_FILE, FINAL_FB_FILE, TRIAL_RESULT_KEY
from semirobust_ray.storage import load_state, save_state
from semirobust_ray.training import DivergenceError, resolve_device

#: Config keys a search may vary per trial; everything else comes from the experiment's config.
TUNABLE_KEYS = ("epochs", "k", "lr", "momentum", "weight_decay", "batch_size")


def objective(fb_layers: int, reached: bool, num_layers: int, target: str = "robust_fa") -> float:
    """What model-based search minimises, plus a penalty of n when Acc* − k is missed.

    ``robust_fa``: the robust layers a = n − |f_b|; ``fb``: |f_b|. Any depth that reaches
    therefore scores below every depth that does not.
    """
    size = num_layers - fb_layers if target == "robust_fa" else fb_layers
    return float(size + (0 if reached else num_layers))


@ray.remote(num_cpus=0)
class AccSrBoard:
    """One per search: each depth's Acc_sr, measured by the first trial of the depth that asks.

    Its owner (a trial index) is remembered, so a trial Tune restarts after a failure before it
    published the value is asked to measure it again instead of waiting for itself.
    """

    def __init__(self, known: dict[int, float] | None = None) -> None:
        self.values: dict[int, float] = dict(known or {})
        self.owners: dict[int, int] = {}

    def claim(self, fb_layers: int, trial: int) -> float | bool:
        if fb_layers in self.values:
            return self.values[fb_layers]
        return self.owners.setdefault(fb_layers, trial) == trial

    def put(self, fb_layers: int, value: float) -> None:
        self.values.setdefault(fb_layers, float(value))

    def get(self, fb_layers: int) -> float | None:
        return self.values.get(fb_layers)


_LOST = object()  # what a call to an unreachable board returns


class RayAccSr:
    """The :class:`semirobust_ray.algorithm1.AccSrShare` of a trial, backed by the board.

    Sharing is only a saving: if the board is unreachable (its actor died with a node), the
    trial measures Acc_sr itself instead of failing.
    """

    def __init__(self, board: Any) -> None:
        self.board = board

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return ray.get(getattr(self.board, method).remote(*args), timeout=60)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return _LOST

    def claim(self, fb_layers: int, trial: int) -> float | bool:
        value = self._call("claim", fb_layers, trial)
        return True if value is _LOST else value

    def put(self, fb_layers: int, value: float) -> None:
        self._call("put", fb_layers, value)

    def wait(self, fb_layers: int, timeout_s: float) -> float | None:
        deadline = time.monotonic() + timeout_s
        while True:
            value = self._call("get", fb_layers)
            if value is _LOST:
                return None
            if value is not None or time.monotonic() >= deadline:
                return value
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))


def start_acc_sr_board(known: dict[int, float]) -> Any:
    """The search's :class:`AccSrBoard`, on the driver's node: it outlives any worker node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return AccSrBoard.options(scheduling_strategy=here).remote(known)


def _trial_index(config: dict[str, Any]) -> int:
    if "trial" in config:
        return int(config["trial"])
    # Model-based searches sample no trial index: derive one from Tune's trial id so that two
    # trials at the same depth still get different seeds.
    trial_id = tune.get_context().get_trial_id() or "0"
    return int(hashlib.sha256(trial_id.encode()).hexdigest()[:6], 16)


def _epoch_metrics(
    record: EpochRecord, fb_layers: int, trial: int, exp: Experiment, baseline: Baseline
) -> dict[str, Any]:
    reached = record.within(exp.config.k)
    return {
        **dataclasses.asdict(record),
        "fb_layers": fb_layers,
        "robust_layers": exp.num_layers - fb_layers,
        "trial": trial,
        "acc_star": baseline.acc_star,
        "acc_star_val": baseline.metrics.acc_star_val,
        "reached": int(reached),
        "objective": objective(fb_layers, reached, exp.num_layers, exp.config.minimise),
        "done": False,
    }


def final_metrics(
    result: TrialResult, num_layers: int, target: str = "robust_fa"
) -> dict[str, Any]:
    """The last report of a trial: scalars for Tune/TensorBoard plus the full result as JSON."""
    best_val = max((h["val_robust_acc"] for h in result.history), default=float("nan"))
    metrics: dict[str, Any] = {
        "fb_layers": result.fb_layers,
        "robust_layers": num_layers - result.fb_layers,
        "trial": result.trial,
        "acc": result.acc,
        "acc_sr": result.acc_sr,
        "acc_star": result.acc_star,
        "clean_acc": result.clean_acc,
        "diff": result.diff,
        "val_robust_acc": best_val,
        # The outcome: the final network's paired check (the gap in images, its SE a fraction).
        "val_acc": result.val_acc,
        "gap_images": result.gap_images,
        "val_images": result.val_images,
        "gap_se": result.gap_se,
        "test_evaluated": int(result.test_evaluated),
        "reached": int(result.reached),
        "epochs_run": result.epochs_run,
        "epoch": result.epochs_run,
        "objective": objective(result.fb_layers, result.reached, num_layers, target),
        "train_seconds": result.train_seconds,
        "eval_seconds": result.eval_seconds,
        "mi_seconds": result.mi_seconds,
        "done": True,
        TRIAL_RESULT_KEY: json.dumps(result.to_dict()),
    }
    for pair in result.mi:
        metrics[f"I_j/{pair['j']:02d}"] = pair["bits"]
    return metrics


def diverged_metrics(
    fb_layers: int, trial: int, reason: str, num_layers: int, target: str = "robust_fa"
) -> dict[str, Any]:
    """The last report of a trial whose loss became NaN or infinite."""
    return {
        "fb_layers": fb_layers,
        "trial": trial,
        "reached": 0,
        "diverged": 1,
        "failure": f"diverged: {reason}",
        "objective": objective(fb_layers, False, num_layers, target),
        "done": True,
    }


#: Ray's loggers that announce every persisted checkpoint (Train v1 and v2 storage).
CHECKPOINT_LOGGERS = ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage")


def algorithm1_trainable(
    config: dict[str, Any],
    *,
    experiment: Experiment,
    baseline: Baseline,
    acc_sr_board: Any = None,
    checkpoint_logs: bool = False,
    log_level: int = logging.INFO,
) -> None:
    """Tune entry point: run (or resume) trial ``config["trial"]`` at depth ``config["fb_layers"]``.

    ``acc_sr_board`` (an :class:`AccSrBoard` handle) shares each depth's Acc_sr between its
    trials; without one every trial measures it. ``checkpoint_logs`` keeps Ray's "Checkpoint
    successfully created at ..." line after every epoch (half of a search's output otherwise).
    ``log_level``: the driver's, for the trial's own lines (Tune prefixes them with the trial).
    """
    configure_logging(log_level)
    level = logging.INFO if checkpoint_logs else logging.WARNING
    for logger in CHECKPOINT_LOGGERS:
        logging.getLogger(logger).setLevel(level)
    exp = _trial_experiment(experiment, config)
    fb_layers, trial = int(config["fb_layers"]), _trial_index(config)
    state = _checkpointed_state()
    latest = {"state": state}
    # Where it runs, in every report, so a multi-node search can be audited from its results
    # alone (a trial retried after a node loss shows the move).
    node = {"node_id": ray.get_runtime_context().get_node_id(), "resumed": int(state is not None)}

    def on_epoch(record: EpochRecord, st: TrialState) -> None:
        latest["state"] = st
        with tempfile.TemporaryDirectory() as d:
            save_state(Path(d) / CHECKPOINT_FILE, st.to_dict())
            tune.report(
                {**_epoch_metrics(record, fb_layers, trial, exp, baseline), **node},
                checkpoint=tune.Checkpoint.from_directory(d),
            )

    try:
        result = run_trial(
            exp,
            baseline,
            fb_layers,
            trial,
            state=state,
            on_epoch=on_epoch,
            acc_sr=RayAccSr(acc_sr_board) if acc_sr_board is not None else None,
        )
    except DivergenceError as err:
        # Retrying a diverged trial would diverge again: end it as failed, with the reason,
        # and let the search go on (it counts as not reaching Acc* - k).
        target = exp.config.minimise
        tune.report(diverged_metrics(fb_layers, trial, str(err), exp.num_layers, target))
        return
    _report_final(
        result,
        latest["state"],
        {**final_metrics(result, exp.num_layers, exp.config.minimise), **node},
    )


def _trial_experiment(experiment: Experiment, config: dict[str, Any]) -> Experiment:
    """The search's experiment with this trial's tuned keys (``TUNABLE_KEYS``) and device."""
    overrides = {k: config[k] for k in TUNABLE_KEYS if k in config}
    return dataclasses.replace(
        experiment,
        config=experiment.config.replace(**overrides) if overrides else experiment.config,
        # Resolved here, on the worker: the driver may be a CPU-only head node.
        device=resolve_device(experiment.config.device),
    )


def _checkpointed_state() -> TrialState | None:
    """The state of Tune's last checkpoint of this trial (a retried or resumed one), or None."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return TrialState.from_dict(load_state(Path(d) / CHECKPOINT_FILE))


def _report_final(result: TrialResult, state: TrialState, metrics: dict[str, Any]) -> None:
    """The trial's last report: ``metrics`` with a checkpoint of its final f_b."""
    with tempfile.TemporaryDirectory() as d:
        # The last epoch's state goes with it: a trial restored from this checkpoint (the
        # driver stopped before recording the final result) continues, it does not restart.
        save_state(Path(d) / CHECKPOINT_FILE, state.to_dict())
        save_state(
            Path(d) / FINAL_FB_FILE,
            {
                "fb_state": result.fb_state,
                "fb_layers": result.fb_layers,
                "trial": result.trial,
                "seed": result.seed,
                "acc": result.acc,
            },
        )
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
