"""The Python API, for notebooks and scripts: ``import semirobust_ray as sr``.

- :func:`search` runs a search with Ray Tune (what ``launch/search.py`` runs) and returns a
  :class:`SearchResult`; running the same cell again returns the stored search instead of
  starting it twice, and an interrupted search says how to resume it.
- :func:`load` reads any finished or interrupted search (or the runner's ``results.json``) from
  its storage path, local or ``s3://``.
- :func:`run_algorithm1` runs Algorithm 1 in this process, without Ray.

A config is given as an :class:`~semirobust_ray.config.ExperimentConfig`, a mapping of config
keys, a YAML file, the name of a bundled search space (``"quickstart"``,
``"paper_vgg16_cifar10"``) or None (the quickstart); keyword overrides replace keys of it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from semirobust_ray.config import ExperimentConfig, config_path, config_values, current_names
from semirobust_ray.logs import ensure_visible
from semirobust_ray.results import RESULTS_FILE, load_results, trial_results
from semirobust_ray.storage import Store, is_uri

logger = logging.getLogger(__name__)

ConfigLike = ExperimentConfig | Mapping[str, Any] | str | os.PathLike | None


def as_config(config: ConfigLike = None, **overrides: Any) -> ExperimentConfig:
    """``config`` (see the module docstring) with ``overrides`` applied, validated."""
    if isinstance(config, ExperimentConfig):
        return config.replace(**overrides) if overrides else config
    values = _given_keys(config) if config is not None else config_values(config_path(None))
    return ExperimentConfig.from_dict({**values, **current_names(overrides)})


def _given_keys(config: ConfigLike) -> dict[str, Any]:
    """The keys ``config`` names itself (not the defaults it leaves to the schema)."""
    if config is None:
        return {}
    if isinstance(config, ExperimentConfig):
        return config.to_dict()
    if isinstance(config, Mapping):
        return current_names(config)
    return config_values(config_path(os.fspath(config)))


class SearchResult:
    """A search read from its storage: the answer, the frontier, Table 1, every trial.

    ``results`` is the search's results dict, as :func:`semirobust_ray.results.load_results`
    reads it (or as the runner returns it); every other attribute is computed from it, the way
    the report files are.
    """

    def __init__(self, results: dict[str, Any], path: str | None = None) -> None:
        from semirobust_ray.report import minimal_split

        self.results = results
        #: The search's experiment directory or URI (None: an in-memory runner result).
        self.path = path
        #: ``minimal_split.json``: both readings of the answer, the evidence, the cost.
        self.answer: dict[str, Any] = minimal_split(results)

    @property
    def config(self) -> dict[str, Any]:
        """The config the search ran with (as stored)."""
        return self.results["config"]

    @property
    def num_layers(self) -> int:
        """n: the network's trainable layers."""
        return int(self.results["num_layers"])

    @property
    def fb_layers(self) -> int | None:
        """|f_b| of the point answer to the config's ``minimise`` target (the last depth whose
        fitted reach probability is at least q); None if none is. See :attr:`interval`."""
        return self.answer["answer"]["fb_layers"]

    @property
    def robust_layers(self) -> int | None:
        """a = n − |f_b|: how many leading layers f*_a must be robust; None if no depth reached."""
        return self.answer["answer"]["robust_layers"]

    @property
    def interval(self) -> tuple[int, int]:
        """The 90 % interval of a (robust layers) for ``robust_fa``, of |f_b| for ``fb``, low
        first; a = n stands for "no depth reaches"."""
        key = "robust_layers" if self.answer["minimise"] == "robust_fa" else "fb_layers"
        ends = self.answer["answer"]["interval"][key]
        if None in ends:  # fb: "none reaches" sits beyond the largest |f_b|
            return (min(e for e in ends if e is not None), self.num_layers)
        return (min(ends), max(ends))

    @property
    def determined(self) -> bool:
        """Whether the interval is at most ``answer_width`` candidate steps wide."""
        return bool(self.answer["answer"]["determined"])

    @property
    def reach(self) -> pd.DataFrame:
        """Each depth tried: trials, how many reached, the rate with its Wilson interval, the
        monotone fit p(d) the answer is read from, and the best-of-T figure."""
        return pd.DataFrame(self.answer["answer"]["reach"])

    @property
    def acc_star(self) -> float | None:
        """Acc*: the fully robust network's robust test accuracy."""
        return self.answer["acc_star"]

    @property
    def frontier(self) -> pd.DataFrame:
        """``frontier.csv``: one row per trial and one per depth's best, every depth tried."""
        from semirobust_ray.frontier import frontier_table

        return frontier_table(self.results, self.answer)

    @property
    def table1(self) -> pd.DataFrame:
        """``table1.csv``: the paper's Table 1 (Acc*, Acc_sr, Acc, Diff, ρ) per depth."""
        from semirobust_ray.report import table1

        return table1(self.results, self.answer)

    @property
    def trials(self) -> pd.DataFrame:
        """Every finished trial's history: one row per epoch of f_b training, with the trial's
        ``fb_layers``, ``trial``, ``seed`` and final ``acc``, ``diff`` and ``reached``."""
        rows = [
            {
                "fb_layers": t.fb_layers,
                "trial": t.trial,
                "seed": t.seed,
                **epoch,
                "acc": t.acc,
                "diff": t.diff,
                "reached": t.reached,
            }
            for t in trial_results(self.results)
            for epoch in t.history
        ]
        return pd.DataFrame(rows)

    @cached_property
    def finished(self) -> bool:
        """Whether the search had run to its end when it was read: no trial is left unfinished
        and, for a Tune search, its report was written (only once every trial is done)."""
        if self.results.get("unfinished"):
            return False
        if self.path is None or not _holds_tune_search(self.path):
            return True
        return Store.of(self.path).is_file("minimal_split.json")

    def frontier_figure(self) -> Any:
        """``frontier.png`` as a matplotlib Figure: Diff against |f_b|, the k band, ρ_{a+1}."""
        from semirobust_ray.frontier import frontier_plot

        return frontier_plot(self.results)

    def rho_figure(self) -> Any:
        """``rho_vs_depth.png`` as a matplotlib Figure: the paper's Fig. 1."""
        from semirobust_ray.report import rho_vs_depth_plot

        return rho_vs_depth_plot(self.results)

    def resume(self, **changes: Any) -> SearchResult:
        """Continue this search where it stopped (a finished one just rewrites its report).

        ``changes`` may set only the keys a resume may change (``max_concurrent``,
        ``max_failures``, ...); the others are refused in one line.
        """
        if self.path is None or not _holds_tune_search(self.path):
            raise ValueError(
                f"{self.path or 'this result'} is not a Tune search directory; only a search "
                "started with sr.search() or launch/search.py can be resumed"
            )
        storage_path, _, name = self.path.rstrip("/").rpartition("/")
        return _run(
            as_config(self.config),
            name=name,
            storage_path=storage_path or ".",
            address=None,
            resume=True,
            changes=changes,
            verbose=1,
        )

    def __repr__(self) -> str:
        from semirobust_ray.report import answer_lines

        state = "" if self.finished else ", unfinished: resume() continues it"
        head = f"SearchResult({self.path or 'in memory'}{state})"
        return "\n".join([head, *answer_lines(self.answer)])


def load(path: str | os.PathLike) -> SearchResult:
    """The search stored at ``path``: an experiment directory (``STORAGE/NAME``) or URI
    (``s3://bucket/runs/NAME``), or a runner's ``results.json`` or its directory.

    Raises :class:`~semirobust_ray.results.ReportError` (one line) when ``path`` holds none.
    """
    where = os.fspath(path)
    return SearchResult(load_results(where), where if is_uri(where) else str(Path(where)))


def search(
    config: ConfigLike = None,
    *,
    name: str | None = None,
    storage_path: str = "results",
    address: str | None = None,
    resume: bool = False,
    verbose: int = 1,
    **overrides: Any,
) -> SearchResult:
    """Find the minimal robust subnetwork with Ray Tune; what ``launch/search.py`` does.

    The search is stored under ``storage_path/name`` (default name: MODEL-DATASET-SEARCH).
    ``address``: a Ray cluster to join (``"auto"``, ``"ray://host:10001"``) or ``"local"``;
    None joins a running cluster if there is one, else starts Ray here. ``verbose``: Tune's
    output (0 silent, 1 status table, 2 also every checkpoint); the package's own progress
    lines go through ``logging`` (:mod:`semirobust_ray.logs`). ``resume=True`` continues the
    search stored under that name (``overrides`` may change only the keys a resume may change).

    If ``storage_path/name`` already holds a search with the same settings (a notebook cell
    run twice), that search is returned as it is, with a note; other settings are refused with
    a one-line :class:`~semirobust_ray.ray_search.SearchError`. Interrupting the search (Ctrl-C, a
    notebook's stop button) raises :class:`~semirobust_ray.ray_search.SearchInterrupted`, whose
    message says how to resume it; finished trials are kept.
    """
    ensure_visible()
    cfg = as_config(config, **overrides)
    if not resume:
        existing = _existing(cfg, name, storage_path)
        if existing is not None:
            return existing
    return _run(
        cfg,
        name=name,
        storage_path=storage_path,
        address=address,
        resume=resume,
        # A resume runs with the stored config; only the keys given here may change it.
        changes={**_given_keys(config), **current_names(overrides)} if resume else None,
        verbose=verbose,
    )


def run_algorithm1(
    config: ConfigLike = None, out_dir: str | os.PathLike | None = None, **overrides: Any
) -> SearchResult:
    """Algorithm 1 in this process, without Ray: the baseline, then T trials at every candidate
    depth in turn (:func:`semirobust_ray.runner.run_algorithm1`). With ``out_dir`` the results
    are also written there as ``results.json``, which :func:`load` reads."""
    from semirobust_ray.runner import run_algorithm1 as run

    ensure_visible()
    results = run(as_config(config, **overrides), out_dir)
    return SearchResult(results, None if out_dir is None else str(Path(out_dir) / RESULTS_FILE))


# --------------------------------------------------------------------------------------------


def _holds_tune_search(path: str) -> bool:
    from semirobust_ray.searchdir import holds_search

    try:
        return holds_search(Store.of(path))
    except (OSError, ValueError):
        return False


def _existing(cfg: ExperimentConfig, name: str | None, storage_path: str) -> SearchResult | None:
    """The search already stored where ``cfg`` would go, if its settings are ``cfg``'s."""
    from semirobust_ray.ray_search import SearchError, search_location
    from semirobust_ray.searchdir import holds_search, measured_differently, stored_config

    _, _, exp_dir = search_location(cfg, name, storage_path)
    store = Store.of(exp_dir)
    if not holds_search(store):
        return None
    differences = measured_differently(stored_config(store), cfg)
    if differences:
        raise SearchError(
            f"'{exp_dir}' already holds a search with other settings of {differences}; pass "
            "another name= for a new search, or read that one with sr.load(...)"
        )
    result = load(exp_dir)
    how = "" if result.finished else "; result.resume() continues it"
    logger.info(f"[search] '{exp_dir}' already holds this search: returning it as stored{how}")
    return result


def _run(
    cfg: ExperimentConfig,
    *,
    name: str | None,
    storage_path: str,
    address: str | None,
    resume: bool,
    changes: dict[str, Any] | None,
    verbose: int,
) -> SearchResult:
    from semirobust_ray.ray_search import SearchInterrupted, run_search, search_location

    _, name, exp_dir = search_location(cfg, name, storage_path)
    try:
        outcome = run_search(
            cfg,
            storage_path=storage_path,
            name=name,
            address=address,
            resume=resume,
            changes=changes,
            verbose=verbose,
        )
    except KeyboardInterrupt:
        from ray import tune

        if tune.Tuner.can_restore(exp_dir):
            how = (
                f"finished trials are kept; continue with sr.load({exp_dir!r}).resume() or "
                f"sr.search(..., name={name!r}, resume=True)"
            )
        else:
            how = "nothing of the trials was stored yet; run the same call again"
        raise SearchInterrupted(f"search '{name}' interrupted: {how}") from None
    return SearchResult(outcome.results, outcome.experiment_dir)
