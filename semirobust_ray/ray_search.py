"""Assemble and run the Ray Tune search for the minimal robust split.

The search strategies (``adaptive``, ``grid``, ``bisection``, ``optuna``) are the table of
:mod:`semirobust_ray.strategies`, their searchers in :mod:`semirobust_ray.searchers`; this module
puts the Tuner together around them.

The baseline is trained once per search, as a Ray task with a trial's resources (a GPU when
trials get one), cached on disk, saved under the search's directory with checksums, and handed to
every trial through ``tune.with_parameters``, with an :class:`~semirobust_ray.trial.AccSrBoard`
actor through which the trials of a depth share its Acc_sr.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray import tune

from semirobust_ray import final_eval
from semirobust_ray.baseline import Baseline, baseline_key, get_baseline
from semirobust_ray.cluster import (
    SearchError,
    check_device,
    check_gpus,
    check_storage_visible,
    init_ray,
)
from semirobust_ray.config import ExperimentConfig
from semirobust_ray.experiment import Experiment, prepare
from semirobust_ray.logs import configure as configure_logging
from semirobust_ray.logs import level as log_level
from semirobust_ray.models import model_slug
from semirobust_ray.paired import warn_noise_floor
from semirobust_ray.pretrained import BaselineSourceError
from semirobust_ray.report import minimal_split, write_report
from semirobust_ray.results import load_results
from semirobust_ray.searchdir import (
    BASELINE_DIR,
    experiment_dir,
    holds_search,
    known_acc_sr,
    load_search_baseline,
    resolve_storage_path,
    resume_config,
    save_search_files,
    stored_config,
)
from semirobust_ray.searchers import SearchEnd
from semirobust_ray.storage import CorruptFileError, Store
from semirobust_ray.strategies import strategy
from semirobust_ray.training import DeviceError, resolve_device
from semirobust_ray.trial import algorithm1_trainable, start_acc_sr_board

logger = logging.getLogger(__name__)


class SearchInterrupted(KeyboardInterrupt):
    """Tune stopped early (SIGINT, SIGUSR1) and left trials unfinished: resume to finish them."""


class _FinishWatch(tune.Callback):
    """Counts, after every step of Tune's loop, the trials not yet TERMINATED or ERROR.

    After an interrupt Tune stops the running trials and marks them TERMINATED, so only the
    count taken before that tells an interrupted search from a finished one (ASHA-stopped
    trials are TERMINATED too). A class attribute: ``Tuner.restore`` rebuilds the callbacks
    from its pickle, so the instance that runs is not the one created here.
    """

    unfinished = 0

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        type(self).unfinished = sum(t.status not in ("TERMINATED", "ERROR") for t in trials)


# --- the search ---------------------------------------------------------------------------


@dataclass
class SearchOutcome:
    """What a finished search produced and where."""

    experiment_dir: str  # a directory or a storage URI; the report is written there too
    answer: dict[str, Any]  # minimal_split.json: both readings, the premise check, the evidence
    results: dict[str, Any]
    report_paths: dict[str, str]
    seconds: float
    trial_seconds: float

    @property
    def answer_fb_layers(self) -> int | None:
        """|f_b| of the answer to the search's ``minimise`` target (None: no depth reached)."""
        return self.answer["answer"]["fb_layers"]


def _baseline_on_cluster(exp: Experiment) -> Baseline:
    """Train (or fetch from cache) the baseline in a Ray task with one trial's resources."""
    c = exp.config

    def task(e: Experiment, level: int) -> Baseline:
        configure_logging(level)  # the baseline's epoch lines, as the driver would show them
        try:
            device = resolve_device(e.config.device)  # here, on the worker with the GPU
        except DeviceError as err:
            # Say which node lacks CUDA: the driver may well have none, and that is fine.
            context = ray.get_runtime_context()
            raise DeviceError(f"on node {context.get_node_id()}: {err}") from None
        return get_baseline(dataclasses.replace(e, device=device))

    remote = ray.remote(num_cpus=c.cpus_per_trial, num_gpus=c.gpus_per_trial)(task)
    if exp.sources is None:
        logger.info("[search] baseline: regular + adversarial training of the full network (once)")
    else:
        logger.info("[search] baseline: the given robust and regular networks, measured (once)")
    try:
        return ray.get(remote.remote(exp, log_level()))
    # Ray's task error is also an instance of its cause's class.
    except (DeviceError, BaselineSourceError) as err:
        cause = getattr(err, "cause", err)
        sep = " " if isinstance(cause, DeviceError) else ": "  # DeviceError: "on node N: ..."
        raise SearchError(f"the baseline task failed{sep}{cause}") from None


def _resources(c: ExperimentConfig) -> tune.PlacementGroupFactory:
    bundles = [{"CPU": c.cpus_per_trial, "GPU": c.gpus_per_trial}]
    # CPUs for MI tasks only where trials measure MI: with test_eval: best the test-set
    # evaluation and the MI of each depth's best trial run after the trials, as their own tasks.
    trials_measure_mi = c.mi and c.test_eval == "all"
    bundles += [{"CPU": 1}] * (c.mi_cpus if trials_measure_mi else 0)
    return tune.PlacementGroupFactory(bundles)


def _param_space(exp: Experiment) -> dict[str, Any]:
    c = exp.config
    # Constant settings ride along so TensorBoard's HParams view can compare searches.
    constants = {"epochs": c.epochs, "k": c.k, "lr": c.lr, "batch_size": c.batch_size}
    return {**constants, **strategy(c.search).space(exp)}


def trial_slots(c: ExperimentConfig) -> int:
    """How many trials the cluster can run at once (its CPUs and GPUs over a trial's bundles),
    capped by ``max_concurrent``."""
    total = ray.cluster_resources()
    bundle = _resources(c).required_resources
    slots = min(int(total.get(kind, 0) // need) for kind, need in bundle.items() if need > 0)
    return max(1, min(slots, c.max_concurrent or slots))


def trial_name(trial: Any) -> str:
    """``fb04-t1``: a trial by its |f_b| and its index among the T trials of that depth (Tune's
    id where the search samples no index, as optuna does); what Tune's status table shows."""
    fb, index = trial.config.get("fb_layers"), trial.config.get("trial")
    return f"fb{fb:02d}-" + (f"t{index}" if index is not None else trial.trial_id)


def trial_dirname(trial: Any) -> str:
    """``fb04-t1-<Tune's id>``: sortable by depth in TensorBoard's run list, and unique."""
    return f"{trial_name(trial)}-{trial.trial_id}"


def _tune_config(exp: Experiment) -> tune.TuneConfig:
    c = exp.config
    scheduler = None
    if c.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            time_attr="epoch",
            metric="val_robust_acc",
            mode="max",
            max_t=c.epochs,
            grace_period=1,
        )
    chosen = strategy(c.search)
    searcher = chosen.searcher(exp, trial_slots(c)) if chosen.searcher else None
    # Tune keeps one trial pending for a custom searcher unless max_concurrent_trials is set
    # (it then wraps the searcher in a ConcurrencyLimiter): the adaptive search asks for one
    # trial per slot, so trials run side by side.
    limit = c.max_concurrent or (trial_slots(c) if c.search == "adaptive" else None)
    return tune.TuneConfig(
        search_alg=searcher,
        num_samples=chosen.num_samples(exp),
        max_concurrent_trials=None if c.search == "optuna" else limit,
        scheduler=scheduler,
        # Reusing trial processes saves each trial a fresh Python + torch start-up (seconds);
        # every trial reseeds everything it uses, so results do not depend on the process.
        reuse_actors=True,
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_dirname,
    )


def default_name(config: ExperimentConfig) -> str:
    """A search's name when none is given: MODEL-DATASET-SEARCH."""
    # The slug: a timm:NAME or package.module:factory spec would put ':' in a directory name.
    return f"{model_slug(config.model)}-{config.dataset}-{config.search}"


def search_location(
    config: ExperimentConfig, name: str | None, storage_path: str
) -> tuple[str, str, str]:
    """(the resolved storage path, the search's name, its experiment directory) of a search of
    ``config`` under ``storage_path`` (default name: :func:`default_name`)."""
    storage = resolve_storage_path(storage_path)
    name = name or default_name(config)
    return storage, name, experiment_dir(storage, name)


def run_search(
    config: ExperimentConfig,
    *,
    storage_path: str = "results",
    name: str | None = None,
    address: str | None = None,
    resume: bool = False,
    changes: dict[str, Any] | None = None,
    verbose: int = 1,
    trainable_fn: Callable[..., None] = algorithm1_trainable,
) -> SearchOutcome:
    """Validate, start or join Ray, train the baseline once, run the trials, write the report.

    Everything the search writes goes under ``storage_path/name`` (a directory or a URI such as
    ``s3://bucket/runs``). With ``resume`` the config and the baseline come from there, and
    ``changes`` (the keys a ``--config`` file and ``--set`` name; default: every key of
    ``config``) may alter only :data:`~semirobust_ray.searchdir.RESUME_MAY_CHANGE`; ``config``
    names the search when ``name`` is None. ``trainable_fn`` replaces the
    Tune function (same keyword arguments as :func:`semirobust_ray.trial.algorithm1_trainable`),
    e.g. to inject faults in tests.
    """
    start = time.perf_counter()
    storage, name, exp_dir = search_location(config, name, storage_path)
    search = Store(exp_dir)
    config = _search_config(config, exp_dir, search, resume, changes)
    check_device(config)
    exp = prepare(config, device="cpu")  # the driver only schedules; workers resolve the device
    init_ray(address)
    check_gpus(config)
    check_storage_visible(storage)
    baseline, acc_sr_known = _stored_baseline(exp, search) if resume else (None, {})
    if baseline is None:
        baseline = _baseline_on_cluster(exp)
        save_search_files(search, exp.config, exp.num_layers, baseline)
    logger.info(f"[search] Acc* = {baseline.acc_star:.4f}; candidate |f_b|: {exp.split_depths}")
    warn_noise_floor(baseline.metrics.acc_star_val, len(exp.eval_split("val")[1]), config.k)

    trainable = tune.with_resources(
        tune.with_parameters(
            trainable_fn,
            experiment=exp,
            baseline=baseline,
            acc_sr_board=start_acc_sr_board(acc_sr_known),  # each depth's Acc_sr, measured once
            checkpoint_logs=verbose >= 2,
            log_level=log_level(),
        ),
        _resources(config),
    )
    _FinishWatch.unfinished = 0
    SearchEnd.reached = False
    if resume:
        tuner = tune.Tuner.restore(exp_dir, trainable=trainable, resume_errored=True)
        _apply_resume_settings(tuner, config)
    else:
        tuner = _new_tuner(exp, trainable, name, storage, verbose)
    tuner.fit()
    if _FinishWatch.unfinished:
        # Tune handles the first SIGINT itself: fit() returns normally, with the trials it
        # stopped or never started marked TERMINATED. That search is not finished, and a report
        # written now would look final.
        raise SearchInterrupted(f"{_FinishWatch.unfinished} trial(s) unfinished")
    if strategy(config.search).ends_itself and not SearchEnd.reached:
        raise SearchInterrupted(f"the {config.search} search had not ended")
    _test_evaluations(exp, baseline, search)
    return _report(search, exp_dir, start)


def _test_evaluations(exp: Experiment, baseline: Baseline, search: Store) -> None:
    """The test-set evaluations the report still needs (``test_eval``; see
    :mod:`semirobust_ray.final_eval`), as Ray tasks with one trial's resources, each stored as
    it completes: a search stopped here and resumed redoes none that finished."""
    c = exp.config
    todo = final_eval.pending(load_results(search), c.test_eval)
    if not todo:
        return
    logger.info(f"[search] test-set evaluation of {len(todo)} trial(s) (test_eval: {c.test_eval})")
    task = ray.remote(num_cpus=c.cpus_per_trial, num_gpus=c.gpus_per_trial)(
        final_eval.evaluate_stored
    )
    exp_ref, baseline_ref = ray.put(exp), ray.put(baseline)
    refs = {task.remote(exp_ref, baseline_ref, search.uri(), t): t for t in todo}
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        refs.pop(done[0])
        final_eval.save_evaluation(search, ray.get(done[0]))


def _search_config(
    config: ExperimentConfig,
    exp_dir: str,
    search: Store,
    resume: bool,
    changes: dict[str, Any] | None,
) -> ExperimentConfig:
    """The config the search runs with: ``config`` for a new search (refused where a search
    already is), the stored one with ``changes`` for a resume."""
    if resume:
        if not tune.Tuner.can_restore(exp_dir):
            raise SearchError(f"--resume: '{exp_dir}' holds no search to resume")
        # The search resumes with the settings it started with, not today's config file.
        given = config.to_dict() if changes is None else changes
        return resume_config(stored_config(search), given)
    if holds_search(search):
        raise SearchError(
            f"'{exp_dir}' already holds a search: pass --resume to continue it, "
            "or --name to start a new one"
        )
    return config


def _stored_baseline(exp: Experiment, search: Store) -> tuple[Baseline | None, dict[int, float]]:
    """A resumed search's baseline (None when it must be recomputed) and the Acc_sr its finished
    trials measured."""
    acc_sr_known = known_acc_sr(search)
    try:
        baseline = load_search_baseline(search)
    except CorruptFileError as err:
        logger.warning(f"[search] stored baseline unusable, recomputing it: {err}")
        return None, acc_sr_known
    if baseline is None:
        return None, acc_sr_known
    current_key = baseline_key(exp)
    if baseline.key != current_key:
        logger.info(
            f"[search] keeping the search's stored baseline {baseline.key} (this version of "
            f"the code would key it {current_key}): its finished trials used this Acc*"
        )
    logger.info(f"[search] baseline from {search.uri(BASELINE_DIR)} (not retrained)")
    return baseline, acc_sr_known


def _new_tuner(
    exp: Experiment, trainable: Any, name: str, storage: str, verbose: int
) -> tune.Tuner:
    config = exp.config
    return tune.Tuner(
        trainable,
        param_space=_param_space(exp),
        tune_config=_tune_config(exp),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            # Tune snapshots the experiment state whenever a trial has written num_to_keep
            # checkpoints since the last snapshot: 1 would force a snapshot every epoch. f_b
            # checkpoints are small, so keeping 3 costs little.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
            callbacks=[_FinishWatch()],
            verbose=verbose,
        ),
    )


def _report(search: Store, exp_dir: str, start: float) -> SearchOutcome:
    """Read every finished trial (this run's and earlier runs') and write the report."""
    results = load_results(search)
    answer = minimal_split(results)  # once: the report's files and the outcome share it
    paths = write_report(results, search, answer)
    return SearchOutcome(
        experiment_dir=exp_dir,
        answer=answer,
        results=results,
        report_paths=paths,
        seconds=time.perf_counter() - start,
        trial_seconds=sum(t.get("seconds", 0.0) for t in results["trials"]),
    )


def _apply_resume_settings(tuner: tune.Tuner, c: ExperimentConfig) -> None:
    """Carry a resume's ``max_concurrent`` and ``max_failures`` into the restored Tuner.

    ``Tuner.restore`` takes neither a TuneConfig nor a RunConfig: it unpickles the ones the
    search started with. Both settings are plain attributes of the restored tuner, set here;
    should a Ray version rename them, the search still resumes, with its old settings, and
    says so.
    """
    try:
        internal = tuner._local_tuner
        internal._tune_config.max_concurrent_trials = c.max_concurrent
        internal._run_config.failure_config.max_failures = c.max_failures
    except AttributeError:
        logger.warning(
            "[search] note: this Ray version keeps max_concurrent and max_failures on resume"
        )
