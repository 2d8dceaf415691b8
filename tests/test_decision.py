"""The decision core on simulated trial outcomes with a known reach probability p(d).

A test of a statistical procedure has to be a test over many seeds: the 90 % interval must cover
the true answer in about 90 % of searches (or more), the point answer must land near it, and
the search must stop for the reason it says.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from semirobust_ray.decision import (
    AdaptiveSearch,
    boundary_posterior,
    decide,
    default_answer_width,
    default_max_trials,
    next_index,
)


def logistic(n: int, centre: float, slope: float) -> dict[int, float]:
    """p(d) = 0.1 + 0.8 / (1 + exp((d − centre) / slope)): exactly 0.5 at the centre."""
    return {d: 0.1 + 0.8 / (1 + math.exp((d - centre) / slope)) for d in range(1, n + 1)}


def truth(p: dict[int, float], q: float = 0.5) -> int | None:
    return max((d for d, v in p.items() if v >= q), default=None)


def covers(decision, d: int | None) -> bool:
    """Whether the interval (ends in premise order, robust_fa) holds depth ``d``."""
    if decision.high is None:
        return d is None
    low = 0 if decision.low is None else decision.low
    return low <= (0 if d is None else d) <= decision.high


def run_adaptive(p: dict[int, float], rng: np.random.Generator, **kw) -> AdaptiveSearch:
    search = AdaptiveSearch(sorted(p), **kw)
    while (nxt := search.suggest()) is not None:
        search.observe(nxt[0], bool(rng.random() < p[nxt[0]]))
    return search


def test_grid_interval_covers_the_truth_at_its_level() -> None:
    """T = 4 trials at each of 16 depths, 300 simulated grids: the 90 % interval holds the
    true answer in at least 90 % of them, and the point answer is within ±2 in most."""
    p = logistic(16, 9, 2)
    rng = np.random.default_rng(0)
    covered = near = 0
    for _ in range(300):
        outcomes = {d: list(rng.random(4) < p[d]) for d in p}
        decision = decide(outcomes, p)
        covered += covers(decision, truth(p))
        near += decision.fb_layers is not None and abs(decision.fb_layers - truth(p)) <= 2
    assert covered / 300 >= 0.9
    assert near / 300 >= 0.8


def test_adaptive_search_finds_a_shallow_boundary_and_covers_it() -> None:
    """n = 16, a shallow frontier: with its default budget (32 trials) the adaptive search's
    interval covers the truth at its level and the point answer lands within ±2 of it."""
    p = logistic(16, 9, 2)
    rng = np.random.default_rng(1)
    runs = [run_adaptive(p, rng, answer_width=0) for _ in range(60)]
    assert all(s.used == default_max_trials(16) == 32 for s in runs)
    decisions = [s.decision() for s in runs]
    assert sum(covers(d, 9) for d in decisions) / 60 >= 0.88
    assert sum(d.fb_layers is not None and abs(d.fb_layers - 9) <= 2 for d in decisions) >= 48


def test_adaptive_search_stops_once_the_interval_is_narrow() -> None:
    """A sharp boundary (p = 0.95 up to |f_b| = 3, 0.05 beyond): the search stops well before
    its budget, because its interval shrank to answer_width, and says so."""
    p = {d: 0.95 if d <= 3 else 0.05 for d in range(1, 7)}
    search = run_adaptive(p, np.random.default_rng(2))
    decision = search.decision()
    assert search.answer_width == default_answer_width(6) == 1
    assert search.used < search.max_trials == 16
    assert decision.width <= 1 and "interval" in search.why and "wide" in search.why
    assert covers(decision, 3) and decision.fb_layers in (3, 4)
    # Its trials went to the boundary, not evenly over the depths.
    assert search.trials.get(3, 0) + search.trials.get(4, 0) > search.used / 2


def test_adaptive_search_out_of_budget_is_undetermined() -> None:
    """p = 0.5 at every depth: no interval can close, the budget ends the search."""
    p = dict.fromkeys(range(1, 7), 0.5)
    search = run_adaptive(p, np.random.default_rng(3), max_trials=12)
    assert search.used == 12 and search.why.startswith("max_trials = 12 spent")
    assert search.decision().width > search.answer_width
    assert search.suggest() is None  # nothing more to issue


def test_parallel_suggestions_spread_and_count_against_the_budget() -> None:
    """Trials in flight are placed at different quantiles of the boundary posterior, and a
    search never issues more than max_trials, however many are in flight."""
    search = AdaptiveSearch(list(range(1, 55)), max_trials=5)
    first = [search.suggest() for _ in range(3)]
    assert len({d for d, _ in first}) == 3  # median, then the quartiles
    assert first[0][0] in (27, 28)  # no evidence yet: the middle, as a bisection would
    assert [search.suggest() for _ in range(3)][-1] is None
    assert search.used == 5


def test_trial_indices_count_per_depth() -> None:
    """A depth tried again gets the next trial index (its next seed)."""
    search = AdaptiveSearch([1, 2, 3], max_trials=40, answer_width=0)
    seen: dict[int, list[int]] = {}
    for _ in range(12):
        depth, index = search.suggest()
        seen.setdefault(depth, []).append(index)
        search.observe(depth, depth == 1)
    assert all(v == list(range(len(v))) for v in seen.values())


def test_monotone_fit_pools_depths_that_contradict_the_premise() -> None:
    """Rates 1.0, 0.0, 1.0, 0.0 over 4 depths (2 trials each): the non-increasing fit pools
    depths 2 and 3 to 0.5; a depth's own rate and its Wilson interval stay as measured."""
    outcomes = {1: [1, 1], 2: [0, 0], 3: [1, 1], 4: [0, 0]}
    d = decide(outcomes, [1, 2, 3, 4])
    assert [r.fit for r in d.depths] == pytest.approx([1.0, 0.5, 0.5, 0.0])
    assert [r.rate for r in d.depths] == [1.0, 0.0, 1.0, 0.0]
    assert d.fb_layers == 3  # the last depth whose fit is at least q = 0.5
    assert d.depths[1].low == 0.0 and 0.5 < d.depths[1].high < 0.6
    # The best-of-T figure: 1 − (1 − p)^T with the fit p.
    assert d.depths[1].best_of_t == pytest.approx(0.75)
    # At q = 0.6 the pooled depths fall below it.
    assert decide(outcomes, [1, 2, 3, 4], q=0.6).fb_layers == 1


def test_contradiction_is_marked_and_the_interval_spans_it() -> None:
    """A confident miss at |f_b| = 2 below a confident reach at |f_b| = 5."""
    outcomes = {1: [1] * 8, 2: [0] * 8, 5: [1] * 8, 6: [0] * 8}
    d = decide(outcomes, range(1, 7))
    assert d.contradicted
    assert (d.low, d.high) == (1, 5)


def test_the_fb_target_is_the_mirror_image() -> None:
    """``fb``: p is non-decreasing in |f_b|; the answer is the smallest depth that reaches."""
    outcomes = {1: [0] * 6, 2: [0] * 6, 3: [1] * 6, 4: [1] * 6}
    d = decide(outcomes, [1, 2, 3, 4], "fb")
    assert d.fb_layers == 3 and (d.low, d.high) == (3, 3) and d.width == 0
    # Read for robust_fa, the same evidence contradicts that premise: sure misses below sure
    # reaches. The interval spans both, from "no depth" to |f_b| = 4.
    robust = decide(outcomes, [1, 2, 3, 4], "robust_fa")
    assert robust.contradicted and (robust.low, robust.high) == (None, 4)


def test_untried_depths_stay_inside_the_interval() -> None:
    """Nothing tried between |f_b| = 2 (sure reach) and 8 (sure miss): 3..7 may be the answer."""
    d = decide({2: [1] * 8, 8: [0] * 8}, range(1, 11))
    assert (d.low, d.high) == (2, 7) and d.width == 5 and d.fb_layers == 2


def test_boundary_posterior_and_first_probe() -> None:
    """No evidence: a uniform posterior and a probe in the middle. Sharp evidence: the
    posterior concentrates on the boundary between the reaching and the missing depths."""
    assert boundary_posterior([0] * 5, [0] * 5, 0.5) == pytest.approx([1 / 6] * 6)
    assert next_index([0] * 9, [0] * 9, 0.5) == 4
    post = boundary_posterior([6, 6, 6, 0, 0, 0], [6] * 6, 0.5)
    assert post.sum() == pytest.approx(1.0)
    assert int(np.argmax(post)) - 1 == 2  # b = index 2: the last reaching depth
    assert post[3] > 0.99


def test_unknown_target_is_one_line() -> None:
    with pytest.raises(ValueError, match="minimise: unknown value 'x'; valid: robust_fa, fb"):
        decide({}, [1, 2], "x")
