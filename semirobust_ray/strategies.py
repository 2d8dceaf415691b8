"""The search strategies, one table: what each ``search`` value samples and which searcher
steers it.

Adding a strategy is one entry of :data:`STRATEGIES` (and, for a searcher of your own, its
class in :mod:`semirobust_ray.searchers`, a Ray Tune ``Searcher``): the config's ``search`` key,
its help text (hence the README's table and ``--help``) and the one-line error for an unknown
name are all written from this table, and ``tests/test_strategies.py`` holds every entry to the
contract below. This module imports no Ray (``ray.tune`` and the searchers are imported inside
the functions), so a config can be read and checked without it.

The contract of an entry (:class:`Strategy`):

- ``space(exp)``: the Tune parameter space it samples beyond the constants every trial carries;
  every trial it yields has an ``fb_layers`` among ``exp.split_depths`` (sampled here, or
  suggested by the searcher) and, where it repeats a depth, a distinct ``trial`` index (the
  trial's seed comes from it);
- ``searcher(exp, slots)``: the Tune search algorithm, or None for Tune's own variant generator;
  ``slots`` is how many trials the cluster runs at once;
- ``num_samples(exp)``: Tune's ``num_samples`` (-1: until the searcher says FINISHED);
- ``ends_itself``: the searcher decides when the search is over, so a Tune loop that ended
  before it did was interrupted (:class:`semirobust_ray.searchers.SearchEnd`);
- ``help``: one line for the config's help text.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from semirobust_ray.experiment import Experiment


def _no_space(exp: Experiment) -> dict[str, Any]:
    return {}


def _until_finished(exp: Experiment) -> int:
    return -1


@dataclass(frozen=True)
class Strategy:
    """How one ``search`` value runs under Tune (the module docstring gives the contract)."""

    help: str
    space: Callable[[Experiment], dict[str, Any]] = _no_space
    searcher: Callable[[Experiment, int], Any] | None = None
    num_samples: Callable[[Experiment], int] = _until_finished
    ends_itself: bool = False


def _adaptive(exp: Experiment, slots: int) -> Any:
    from semirobust_ray.searchers import AdaptiveSearcher

    c = exp.config
    return AdaptiveSearcher(
        exp.split_depths,
        c.minimise,
        c.reach_probability,
        answer_width=c.answer_width,
        max_trials=c.max_trials,
    )


def _grid_space(exp: Experiment) -> dict[str, Any]:
    from ray import tune

    return {
        "fb_layers": tune.grid_search(exp.split_depths),
        "trial": tune.grid_search(list(range(exp.config.trials_per_depth))),
    }


def _bisection(exp: Experiment, slots: int) -> Any:
    from semirobust_ray.searchers import BisectionSearcher

    c = exp.config
    # Probes beyond the first use slots that would otherwise idle: T trials fill one.
    return BisectionSearcher(
        exp.split_depths,
        c.trials_per_depth,
        target=c.minimise,
        parallel_probes=max(1, slots // c.trials_per_depth),
    )


def _optuna_space(exp: Experiment) -> dict[str, Any]:
    from ray import tune

    lr = exp.config.lr
    return {"fb_layers": tune.choice(exp.split_depths), "lr": tune.loguniform(lr / 4, lr * 4)}


def _optuna(exp: Experiment, slots: int) -> Any:
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch  # imports optuna: only when asked for

    c = exp.config
    searcher = OptunaSearch(metric="objective", mode="min", seed=c.seed)
    return ConcurrencyLimiter(searcher, max_concurrent=c.max_concurrent or 2)


def _optuna_samples(exp: Experiment) -> int:
    c = exp.config
    return c.num_samples or max(4, math.ceil(c.trials_per_depth * len(exp.split_depths) / 2))


#: ``search`` value -> its :class:`Strategy`, in the order the help lists them.
STRATEGIES: dict[str, Strategy] = {
    "adaptive": Strategy(
        help="trials where they narrow the answer, until its 90 % interval is `answer_width` "
        "wide or `max_trials` are spent",
        searcher=_adaptive,
        ends_itself=True,
    ),
    "grid": Strategy(
        help="every depth × T (`trials_per_depth`)", space=_grid_space, num_samples=lambda exp: 1
    ),
    "bisection": Strategy(
        help="binary search trusting each probe's T trials; assumes noiseless outcomes",
        searcher=_bisection,
        ends_itself=True,
    ),
    "optuna": Strategy(
        help="TPE over depth and learning rate",
        space=_optuna_space,
        searcher=_optuna,
        num_samples=_optuna_samples,
    ),
}


def strategy(name: str) -> Strategy:
    """The strategy of ``search: name``; an unknown name is a one-line ValueError."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"search: unknown value {name!r}; valid: {', '.join(sorted(STRATEGIES))}"
        ) from None


def strategy_words() -> str:
    """Every strategy with its help, for the config's ``search`` help text."""
    return ", ".join(f"`{name}` ({s.help})" for name, s in STRATEGIES.items())
