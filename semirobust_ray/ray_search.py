"""Assemble and run the Ray Tune search for the minimal robust split.

- ``grid``: every candidate split depth × T trials (the paper's protocol).
- ``bisection``: :class:`BisectionSearcher` probes depths in binary-search order, T trials per
  probed depth, and ends the search once the answer of the ``minimise`` target is established
  (it reaches, the depth beyond it does not), checking its premise on the way.
- ``optuna``: TPE over split depth and learning rate, minimising the target (the robust layers
  a, or |f_b|) subject to reaching Acc* − k (:func:`semirobust_ray.trial.objective`), behind a
  ConcurrencyLimiter.

The baseline is trained once per search, as a Ray task with a trial's resources (a GPU when
trials get one), cached on disk, saved under the search's directory with checksums, and handed to
every trial through ``tune.with_parameters``, with an :class:`~semirobust_ray.trial.AccSrBoard`
actor through which the trials of a depth share its Acc_sr.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher

from semirobust_ray import final_eval
from semirobust_ray.answer import premise, premise_order, premise_violations
from semirobust_ray.baseline import Baseline, baseline_key, get_baseline
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
    SearchDirError,
    experiment_dir,
    holds_search,
    known_acc_sr,
    load_search_baseline,
    resolve_storage_path,
    resume_config,
    save_search_files,
    stored_config,
)
from semirobust_ray.storage import CorruptFileError, Store, first_line, is_uri
from semirobust_ray.training import DeviceError, resolve_device
from semirobust_ray.trial import algorithm1_trainable, start_acc_sr_board

logger = logging.getLogger(__name__)


class SearchError(SearchDirError):
    """A problem with the search set-up (storage, resume, resources); one line."""


class SearchInterrupted(KeyboardInterrupt):
    """Tune stopped early (SIGINT, SIGUSR1) and left trials unfinished: resume to finish them."""


# --- bisection ----------------------------------------------------------------------------


class BisectionSearcher(Searcher):
    """Binary search over the candidate depths for the answer of ``target``, checked as it goes.

    It probes in binary-search order under the target's premise (see
    :mod:`semirobust_ray.answer`; for ``robust_fa``, that a smaller f_b is at least as easy to
    recover, so the depths that reach come first in ascending |f_b|), and ends once the answer
    reaches and the depth just beyond it does not: both sides of the boundary probed. Each probe
    runs T trials; it is decided as soon as one trial reaches (the depth reaches) or all T finish
    without reaching. Trials of a decided probe keep running to completion (ρ is a minimum over
    all T trials).

    With ``parallel_probes`` > 1 (a cluster with room for more than T trials) it probes the
    midpoints of several undecided stretches at once. Outcomes may then contradict the premise
    (a depth reaches beyond one that did not): it says so in the log, probes every undecided depth
    in between, and searches on beyond the reaching depth rather than return an answer its own
    evidence contradicts. The report lists every such contradiction (``premise_violations``).
    """

    def __init__(
        self,
        depths: list[int],
        trials_per_depth: int,
        target: str = "robust_fa",
        parallel_probes: int = 1,
    ) -> None:
        super().__init__(metric="reached", mode="max")
        self.order = premise_order(depths, target)
        self.target = target
        self.trials_per_depth = trials_per_depth
        self.parallel_probes = max(1, int(parallel_probes))
        self.issued: dict[int, int] = {}  # index in order -> trials issued
        self.outcomes: dict[int, list[bool]] = {}  # index -> finished trials' reached flags
        self.live: dict[str, int] = {}
        self.reported: set[tuple[int, int]] = set()

    # -- what the evidence says ------------------------------------------------------------

    def _state(self, i: int) -> bool | None:
        """True: index i reached; False: all T trials missed; None: undecided or untried."""
        outcomes = self.outcomes.get(i, [])
        if any(outcomes):
            return True
        if len(outcomes) >= self.trials_per_depth:
            return False
        return None

    def _bounds(self) -> tuple[int, int]:
        """(r, h): the last reaching index, and the first missed index after it."""
        m = len(self.order)
        r = max((i for i in range(m) if self._state(i) is True), default=-1)
        h = min((i for i in range(r + 1, m) if self._state(i) is False), default=m)
        return r, h

    def _contradicted(self, r: int) -> list[int]:
        """Undecided indices between the first miss before ``r`` and ``r`` (must be probed)."""
        misses = [i for i in range(r) if self._state(i) is False]
        if not misses:
            return []
        return [i for i in range(misses[0] + 1, r) if self._state(i) is None]

    @property
    def finished(self) -> bool:
        r, h = self._bounds()
        return h == r + 1 and not self._contradicted(r)

    @property
    def minimal_depth(self) -> int | None:
        """The answer once :attr:`finished`: the last reaching depth in premise order, or None."""
        if not self.finished:
            return None
        r, _ = self._bounds()
        return self.order[r] if r >= 0 else None

    def _next_index(self) -> int | None:
        """Where to probe next: an undecided depth inside a contradiction first, else the middle
        of the largest untried stretch between the last reach and the first miss after it."""
        r, h = self._bounds()
        untried = [i for i in self._contradicted(r) if i not in self.issued]
        if untried:
            return untried[len(untried) // 2]
        runs: list[list[int]] = [[]]
        for i in range(r + 1, h):
            if i in self.issued:
                runs.append([])
            else:
                runs[-1].append(i)
        best = max(runs, key=len)
        return best[len(best) // 2] if best else None

    # -- Tune's interface ------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.finished:
            return self.FINISHED
        open_probes = [
            i
            for i, n in self.issued.items()
            if self._state(i) is None and n < self.trials_per_depth
        ]
        if not open_probes:
            undecided = sum(1 for i in self.issued if self._state(i) is None)
            index = self._next_index() if undecided < self.parallel_probes else None
            if index is None:
                return None  # wait for the probes in flight
            open_probes = [index]
        index = open_probes[0]
        trial = self.issued.get(index, 0)
        self.issued[index] = trial + 1
        self.live[trial_id] = index
        return {"fb_layers": self.order[index], "trial": trial}

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        index = self.live.pop(trial_id, None)
        if index is None:
            return
        reached = bool(result and not error and result.get("reached"))
        self.outcomes.setdefault(index, []).append(reached)
        self._report_contradictions()

    def _report_contradictions(self) -> None:
        decided = {self.order[i]: self._state(i) for i in self.outcomes}
        evidence = {d: ok for d, ok in decided.items() if ok is not None}
        for v in premise_violations(evidence, self.target):
            for missed in v.missed_before:
                if (v.reached, missed) not in self.reported:
                    self.reported.add((v.reached, missed))
                    logger.warning(
                        f"[bisection] premise contradicted: |f_b| = {v.reached} reached although "
                        f"|f_b| = {missed} did not ({premise(self.target)} does not hold here); "
                        "probing the depths in between"
                    )

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        # Tune's own experiment state is pickled in the same directory; both come from the
        # user's own search directory, which must be trusted (see Tuner.restore's warning).
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


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
    bundles += [{"CPU": 1}] * (c.mi_cpus if c.mi else 0)
    return tune.PlacementGroupFactory(bundles)


def _param_space(exp: Experiment) -> dict[str, Any]:
    c = exp.config
    # Constant settings ride along so TensorBoard's HParams view can compare searches.
    constants = {"epochs": c.epochs, "k": c.k, "lr": c.lr, "batch_size": c.batch_size}
    if c.search == "grid":
        return {
            "fb_layers": tune.grid_search(exp.split_depths),
            "trial": tune.grid_search(list(range(c.seeds))),
            **constants,
        }
    if c.search == "optuna":
        return {
            **constants,
            "fb_layers": tune.choice(exp.split_depths),
            "lr": tune.loguniform(c.lr / 4, c.lr * 4),
        }
    return constants


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
    # Reusing trial processes saves each trial a fresh Python + torch start-up (seconds);
    # every trial reseeds everything it uses, so results do not depend on the process.
    common = {
        "scheduler": scheduler,
        "reuse_actors": True,
        "trial_name_creator": trial_name,
        "trial_dirname_creator": trial_dirname,
    }
    if c.search == "grid":
        return tune.TuneConfig(num_samples=1, max_concurrent_trials=c.max_concurrent, **common)
    if c.search == "bisection":
        # Probes beyond the first use slots that would otherwise idle: T trials fill one.
        searcher = BisectionSearcher(
            exp.split_depths,
            c.seeds,
            target=c.minimise,
            parallel_probes=max(1, trial_slots(c) // c.seeds),
        )
        return tune.TuneConfig(
            search_alg=searcher,
            num_samples=-1,
            max_concurrent_trials=c.max_concurrent,
            **common,
        )
    from ray.tune.search.optuna import OptunaSearch  # imports optuna: only when asked for

    searcher = OptunaSearch(metric="objective", mode="min", seed=c.seed)
    limited = ConcurrencyLimiter(searcher, max_concurrent=c.max_concurrent or 2)
    samples = c.num_samples or max(4, math.ceil(c.seeds * len(exp.split_depths) / 2))
    return tune.TuneConfig(search_alg=limited, num_samples=samples, **common)


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
    _check_device(config)
    exp = prepare(config, device="cpu")  # the driver only schedules; workers resolve the device
    _init_ray(address)
    _check_gpus(config)
    _check_storage_visible(storage)
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
    paths = write_report(results, search)
    return SearchOutcome(
        experiment_dir=exp_dir,
        answer=minimal_split(results),
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


def _check_storage_visible(storage: str) -> None:
    """On a multi-node cluster a local ``storage_path`` must be one every node sees (a shared
    filesystem): Ray Tune requires it, and a trial on a node that cannot see it would fail
    only after the baseline was trained. A marker written here is looked for on every node."""
    if is_uri(storage):
        return
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    marker = Path(storage) / f".semirobust-visible-{os.getpid()}-{time.time_ns()}"
    marker.write_bytes(b"")
    try:
        blind = [
            n for n, seen in zip(nodes, _marker_seen(str(marker), nodes), strict=True) if not seen
        ]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise SearchError(
            f"storage path '{storage}' is local to this machine: {len(blind)} of {len(nodes)} "
            "nodes cannot see it; use shared storage every node mounts (NFS) or a bucket "
            "(--storage-path s3://bucket/runs; docs/cluster.md)"
        )


def _marker_seen(marker: str, nodes: list[str]) -> list[bool]:
    """Whether ``marker`` exists as seen from each node (a zero-CPU task pinned to it)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def seen(path: str) -> bool:
        return os.path.exists(path)

    refs = [
        seen.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(
            marker
        )
        for n in nodes
    ]
    return ray.get(refs, timeout=120)


def _init_ray(address: str | None) -> None:
    """Join ``address`` (or a running cluster when none is given), else start Ray locally.

    A cluster that refuses this driver's token (token authentication, on by default since Ray
    2.59) is a :class:`SearchError` saying how to get the token, not a start-up of a local Ray.
    """
    if ray.is_initialized():
        return
    if address == "local":
        # "local", not None: ray.init() without an address joins a cluster that `ray start`
        # left on this machine (its /tmp/ray/ray_current_cluster) instead of starting one.
        ray.init(address="local", include_dashboard=False)
        return
    try:
        ray.init(address=address or "auto", log_to_driver=True)
    except Exception as err:
        problem = _join_problem(address, err)
        if problem:
            raise SearchError(problem) from None
        if address or not isinstance(err, (ConnectionError, RuntimeError)):
            raise
        ray.init(address="local", include_dashboard=False)  # no cluster running: start one
        return
    if not address:
        logger.info("[search] joined the running Ray cluster")


def _join_problem(address: str | None, err: Exception) -> str | None:
    """The one-line error for a failed join; None where the launcher may start Ray locally
    (no ``--address`` and no cluster found) or the error is not about joining."""
    target = address or "auto"
    mode = os.environ.get("RAY_AUTH_MODE", "unset")
    get_token = (
        "print the cluster's token on the head with `ray get-auth-token`, then run with "
        "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<token> or RAY_AUTH_TOKEN_PATH=<file holding "
        "it> (docs/cluster.md, 'Token authentication')"
    )
    if _token_refused(err):
        here = "" if mode == "token" else f" (RAY_AUTH_MODE is {mode!r} here)"
        return (
            f"the Ray cluster at {target} requires its authentication token and this driver "
            f"has none or another one{here}; {get_token}"
        )
    if address and isinstance(err, ConnectionError):
        first = first_line(err)
        # A Ray Client (ray://) without RAY_AUTH_MODE=token is not refused, it times out: the
        # refusal cannot be seen from here, so name the likely cause.
        client = target.startswith("ray://") and mode != "token"
        maybe = f"; if it uses token authentication, {get_token}" if client else ""
        return f"cannot join the Ray cluster at {target}: {first}{maybe}"
    return None


def _token_refused(err: BaseException) -> bool:
    """Whether ``ray.init`` failed on token authentication: an ``AuthenticationError`` (no token
    here while RAY_AUTH_MODE=token), or a ``ConnectionError`` whose chain holds the cluster's
    rejection (Ray 2.60 retries, then wraps it as text in a RuntimeError)."""
    from ray.exceptions import AuthenticationError

    seen: BaseException | None = err
    for _ in range(8):  # a chain is a few links long; the bound only guards against a cycle
        if seen is None:
            break
        if isinstance(seen, AuthenticationError) or "InvalidAuthToken" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _check_device(c: ExperimentConfig) -> None:
    """Refuse ``device: cuda`` without a GPU per trial: Ray would reserve no GPU for the trials,
    so they would land on CPU-only nodes (and fail there) or share GPUs nobody scheduled."""
    if c.device == "cuda" and c.gpus_per_trial <= 0:
        raise SearchError(
            "device: cuda but gpus_per_trial is 0, so Ray would reserve no GPU for the trials; "
            "pass --gpus-per-trial 1 (or a fraction such as 0.5), or use device: auto or cpu"
        )


def _check_gpus(c: ExperimentConfig) -> None:
    """Refuse a GPU request no node can satisfy, instead of waiting for it forever."""
    if c.gpus_per_trial <= 0:
        return
    per_node = [n.get("Resources", {}).get("GPU", 0) for n in ray.nodes() if n.get("Alive")]
    best = max(per_node, default=0)
    if best < c.gpus_per_trial and not _autoscaling():
        if c.device == "cuda" and best == 0:
            raise SearchError(
                f"device: cuda with gpus_per_trial={c.gpus_per_trial:g}, but no node of this "
                "Ray cluster has a GPU and no autoscaler can add one; join a cluster with GPU "
                "nodes (--address), or run on the CPU with device: cpu --gpus-per-trial 0"
            )
        raise SearchError(
            f"gpus_per_trial={c.gpus_per_trial:g} but the largest node has {best:g} GPUs "
            f"(cluster total {ray.cluster_resources().get('GPU', 0):g}); "
            f"lower --gpus-per-trial or add GPU nodes"
        )


def _autoscaling() -> bool:
    """Whether an autoscaler can still add nodes (then missing GPUs may appear later)."""
    return bool(os.environ.get("RAY_AUTOSCALER_ENABLED")) or os.path.exists(
        os.path.expanduser("~/ray_bootstrap_config.yaml")
    )
