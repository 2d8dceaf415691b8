"""Deciding under noise: each depth's reach probability, the answer with its interval, and where
the next trial goes.

A trial's outcome (whether one fresh seed, at most E epochs of f_b training, brings the network
within k of Acc*; :mod:`semirobust_ray.paired`) is a coin flip whose probability p(d) depends on
the split depth d = |f_b|. The answer of the default target (``minimise: robust_fa``) is the
LARGEST |f_b| whose p(d) is at least q (``reach_probability``, default 0.5), assuming p is
non-increasing in |f_b| (a smaller f_b is at least as easy to recover); for ``fb`` the smallest,
assuming the mirror image. Everything here works in *premise order* (ascending |f_b| for
``robust_fa``, descending for ``fb``), where p is non-increasing and the answer is the last depth
with p ≥ q. Reading "reached" as "any of the T trials reached" (the paper's best-of-T) makes the
answer drift upward with T (1 − (1 − p)^T → 1); it is kept only as a derived figure.

Why these methods (the field's anchors, ``DESIGN.md`` section 7):

- **The point answer: weighted isotonic regression** of the per-depth reach rates
  (``scipy.optimize.isotonic_regression``, weights = trials), the final pick of BOIN (Liu & Yuan
  2015) and of dose-finding designs in general ("the largest dose whose toxicity probability
  stays below a target" is this problem with depth as the dose). It pools neighbouring depths
  exactly where their rates contradict the premise, so one unlucky depth does not move the
  answer, and it needs no model of how p falls.
- **The interval: one-sided binomial tests on pooled windows**, at level (1 − ``level``) / 4 on
  each side: the window that decides a depth is picked among nested ones after looking at the
  data, and halving each side's level pays for that choice (at (1 − ``level``) / 2 a shallow
  frontier whose boundary depth sits exactly at q was covered 87 % of the time in simulation,
  below the 90 % claimed). Under the premise, the depths of a window starting at d have p no
  larger than p(d), so a window whose pooled count is improbable under p = q shows p(d) > q (a
  "confident reach"); mirrored, a window ending at d shows p(d) < q. The answer lies between
  the last confident reach and the first confident miss. These are the exact (Clopper–Pearson) binomial bounds of
  the pooled counts, the "isotonic regression with binomial intervals" anchor; untried depths
  inherit the bounds of their tried neighbours through the premise, so the interval covers them
  honestly instead of pretending they were seen. The coverage of the 90 % interval, adaptive
  placement included, is measured by ``benchmarks/bench_answer.py`` (BENCHMARKS.md, "Answer").
  A model-based interval (CRM, O'Quigley 1990) would be narrower when its dose-response model
  holds and wrong when it does not; nothing tells us the shape of p(d).
- **Where the next trial goes: probabilistic bisection** (Horstein 1963; Waeber, Frazier &
  Henderson 2013): keep a posterior over the boundary (the last depth with p ≥ q) and query the
  depth that splits its mass in half. Horstein's oracle has a known error rate; ours has not, so
  the posterior is that of a step model (p = p_hi ≥ q up to the boundary, p_lo < q beyond, both
  uniform), integrated in closed form (incomplete beta functions). It only steers: decisions and
  intervals never rest on the step model. Karp & Kleinberg (2007) show O(log n / ε²) trials are
  needed to place a noisy boundary; a deterministic bisection that trusts one probe's T trials
  has no such guarantee (simulated in ``benchmarks/bench_answer.py``). No maintained Python
  package implements BOIN or probabilistic bisection, so this small core is ours.

Everything here is plain Python (no Ray): the Ray Tune searcher
(:class:`semirobust_ray.searchers.AdaptiveSearcher`), the report, the benchmark and a notebook
drive the same :class:`AdaptiveSearch` and :func:`decide`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import special, stats
from scipy.optimize import isotonic_regression

#: Config values of ``minimise``: what the search minimises (the first is the default).
TARGETS: tuple[str, ...] = ("robust_fa", "fb")

#: The interval's confidence level (two-sided; each side's tests run at (1 − LEVEL) / 4, see the
#: module docstring).
LEVEL = 0.9


def check_target(target: str) -> None:
    """Refuse a ``minimise`` value that is not one of :data:`TARGETS`, in one line."""
    if target not in TARGETS:
        raise ValueError(f"minimise: unknown value {target!r}; valid: {', '.join(TARGETS)}")


def premise_order(depths: Iterable[int], target: str) -> list[int]:
    """Depths in the order along which the premise expects p to fall: ascending |f_b| for
    ``robust_fa``, descending for ``fb``. The answer is the LAST depth of this order with
    p ≥ q."""
    check_target(target)
    return sorted(set(depths), reverse=target == "fb")


def default_answer_width(candidates: int) -> int:
    """The ``answer_width`` of a search that sets none: a tenth of the candidate depths, at
    least 1 (n = 6: 1, two neighbouring depths; n = 16: 2; n = 54: 5)."""
    return max(1, round(candidates / 10))


def default_max_trials(candidates: int) -> int:
    """The ``max_trials`` of an adaptive search that sets none: twice the candidates, at least
    16 (n = 6: 16; n = 16: 32; n = 54: 108)."""
    return max(16, 2 * candidates)


# --- the tests behind the interval --------------------------------------------------------


@lru_cache(maxsize=65536)
def _p_above(successes: int, trials: int, q: float) -> float:
    """P(X ≥ successes) for X ~ Binomial(trials, q): small when p > q is shown."""
    return float(stats.binom.sf(successes - 1, trials, q))


@lru_cache(maxsize=65536)
def _p_below(successes: int, trials: int, q: float) -> float:
    """P(X ≤ successes) for X ~ Binomial(trials, q): small when p < q is shown."""
    return float(stats.binom.cdf(successes, trials, q))


def _confident_bounds(
    s: Sequence[int], n: Sequence[int], q: float, alpha: float
) -> tuple[int, int]:
    """(lo, first_miss) in premise-order indices: the last index with a confident reach (−1:
    none) and the first with a confident miss (len(s): none), from pooled windows of tried
    indices (see the module docstring)."""
    tried = [i for i in range(len(s)) if n[i] > 0]
    lo, first_miss = -1, len(s)
    for a, start in enumerate(tried):
        hits = total = 0
        for j in tried[a:]:  # windows starting at `start`: p(start) ≥ every p in them
            hits, total = hits + s[j], total + n[j]
            if _p_above(hits, total, q) <= alpha:
                lo = max(lo, start)
                break
        hits = total = 0
        for j in reversed(tried[: a + 1]):  # windows ending at `start`: p(start) ≤ them all
            hits, total = hits + s[j], total + n[j]
            if _p_below(hits, total, q) <= alpha:
                first_miss = min(first_miss, start)
                break
    return lo, first_miss


def _isotonic(s: Sequence[int], n: Sequence[int]) -> list[float]:
    """The non-increasing weighted least-squares fit of the tried indices' rates (NaN where
    untried)."""
    tried = [i for i in range(len(s)) if n[i] > 0]
    out = [math.nan] * len(s)
    if not tried:
        return out
    rates = np.array([s[i] / n[i] for i in tried])
    fit = isotonic_regression(
        rates, weights=np.array([n[i] for i in tried], float), increasing=False
    )
    for i, v in zip(tried, fit.x, strict=True):
        out[i] = float(v)
    return out


def wilson_interval(successes: int, trials: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of one depth's reach rate (its own trials only)."""
    if trials == 0:
        return 0.0, 1.0
    ci = stats.binomtest(successes, trials).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


# --- the answer ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DepthReach:
    """One candidate depth: its trials, how many reached, the rate with its own interval, the
    monotone fit (NaN where untried), and the paper's best-of-T figure 1 − (1 − p)^T."""

    fb_layers: int
    trials: int
    reached: int
    rate: float
    low: float
    high: float
    fit: float
    best_of_t: float

    def to_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        for key in ("rate", "fit", "best_of_t"):
            d[key] = None if math.isnan(d[key]) else d[key]
        return d


@dataclass(frozen=True)
class Decision:
    """The answer of one target under noise.

    ``fb_layers`` is the point answer (the last depth in premise order whose monotone fit is at
    least q; None when none is), ``low`` and ``high`` the interval's ends as |f_b| in premise
    order (``low`` None: "no depth" is inside the interval), ``width`` the number of candidate
    steps between them, ``contradicted`` whether a confident reach lies beyond a confident miss
    (the premise fails; the interval is then the span of both).
    """

    target: str
    q: float
    level: float
    fb_layers: int | None
    low: int | None
    high: int | None
    width: int
    contradicted: bool
    depths: tuple[DepthReach, ...]
    candidates: tuple[int, ...]

    def robust_layers_interval(self, num_layers: int) -> tuple[int, int]:
        """The interval as robust layers a = n − |f_b|, low first (a None end, "no depth
        reaches", is a = n)."""
        lo, hi = sorted(num_layers if d is None else num_layers - d for d in (self.low, self.high))
        return lo, hi

    def to_dict(self) -> dict[str, Any]:
        return {
            "fb_layers": self.fb_layers,
            "interval": {"low": self.low, "high": self.high, "level": self.level},
            "width": self.width,
            "contradicted": self.contradicted,
            "reach_probability": self.q,
            "depths": [d.to_dict() for d in self.depths],
        }


def decide(
    outcomes: Mapping[int, Sequence[bool]] | Mapping[int, tuple[int, int]],
    candidates: Iterable[int],
    target: str = "robust_fa",
    *,
    q: float = 0.5,
    level: float = LEVEL,
    trials_per_depth: int | None = None,
) -> Decision:
    """The answer of ``target`` from every trial's outcome.

    ``outcomes`` maps a depth to its trials' outcomes (a list of booleans, or a pair
    ``(reached, trials)``); ``candidates`` are all depths the search may answer (untried ones
    widen the interval, see the module docstring). ``trials_per_depth`` is the T of the derived
    best-of-T figure (default: each depth's own trial count).
    """
    order = premise_order(set(candidates) | set(outcomes), target)
    s, n = [], []
    for d in order:
        hits, total = _counts(outcomes.get(d, ()))
        s.append(hits)
        n.append(total)
    alpha = (1 - level) / 4  # per side, halved for the choice among nested windows
    lo, first_miss = _confident_bounds(s, n, q, alpha)
    hi = first_miss - 1
    contradicted = lo > hi
    if contradicted:
        lo, hi = hi, lo
    fit = _isotonic(s, n)
    # The fit's answer, not moved into the interval: the two differ only where the premise is
    # contradicted, and then the reading says so.
    point = max((i for i, v in enumerate(fit) if not math.isnan(v) and v >= q), default=-1)
    depth = order.__getitem__
    reach = []
    for i, d in enumerate(order):
        if n[i] == 0:
            continue
        low, high = wilson_interval(s[i], n[i], level)
        t = trials_per_depth or n[i]
        best = math.nan if math.isnan(fit[i]) else 1 - (1 - fit[i]) ** t
        reach.append(DepthReach(d, n[i], s[i], s[i] / n[i], low, high, fit[i], best))
    return Decision(
        target=target,
        q=q,
        level=level,
        fb_layers=depth(point) if point >= 0 else None,
        low=depth(lo) if lo >= 0 else None,
        high=depth(hi) if hi >= 0 else None,
        width=hi - lo,
        contradicted=contradicted,
        depths=tuple(sorted(reach, key=lambda r: r.fb_layers)),
        candidates=tuple(sorted(order)),
    )


def _counts(outcome: Sequence[bool] | tuple[int, int]) -> tuple[int, int]:
    """(reached, trials) from a list of booleans or an already counted pair."""
    if isinstance(outcome, tuple) and len(outcome) == 2 and not isinstance(outcome[0], bool):
        return int(outcome[0]), int(outcome[1])
    flags = [bool(o) for o in outcome]
    return sum(flags), len(flags)


# --- where the next trial goes ------------------------------------------------------------


def boundary_posterior(s: Sequence[int], n: Sequence[int], q: float) -> np.ndarray:
    """P(boundary = b) for b = −1 (no depth reaches), 0, ..., m − 1 under the step model (module
    docstring), with a uniform prior over b."""
    s = np.asarray(s, float)
    f = np.asarray(n, float) - s
    hit_before = np.concatenate([[0.0], np.cumsum(s)])  # successes at indices < b + 1
    miss_before = np.concatenate([[0.0], np.cumsum(f)])
    total_s, total_f = hit_before[-1], miss_before[-1]
    logs = []
    for cut in range(len(s) + 1):  # indices < cut are on the reaching side (b = cut - 1)
        a_s, a_f = hit_before[cut], miss_before[cut]
        b_s, b_f = total_s - a_s, total_f - a_f
        logs.append(_log_side(a_s, a_f, q, above=True) + _log_side(b_s, b_f, q, above=False))
    logs = np.array(logs)
    post = np.exp(logs - logs.max())
    return post / post.sum()


def _log_side(hits: float, misses: float, q: float, *, above: bool) -> float:
    """log of the mean of p^hits (1 − p)^misses over p uniform on [q, 1] (``above``) or [0, q)."""
    if hits == 0 and misses == 0:
        return 0.0
    tail = special.betaincc if above else special.betainc
    mass = float(tail(hits + 1, misses + 1, q))
    width = 1 - q if above else q
    return float(special.betaln(hits + 1, misses + 1)) + math.log(max(mass, 1e-300) / width)


#: The posterior quantiles a trial is placed at: the median first (the probabilistic bisection),
#: then the quartiles and eighths for trials started while others are in flight, so parallel
#: trials cover the boundary's likely range instead of piling onto one depth.
_QUANTILES = (0.5, 0.25, 0.75, 0.375, 0.625, 0.125, 0.875)


def next_index(s: Sequence[int], n: Sequence[int], q: float, in_flight: Iterable[int] = ()) -> int:
    """The premise-order index the next trial should probe: the depth whose "p ≥ q?" splits the
    boundary posterior at its median, or, where a trial is already in flight there, at the
    first quantile of :data:`_QUANTILES` whose depth has none in flight."""
    post = boundary_posterior(s, n, q)
    # P(boundary ≥ i) for i = 0..m-1: a trial at index i asks exactly this.
    at_least = np.cumsum(post[::-1])[::-1][1:]
    busy = set(in_flight)
    tie_break = 1e-9 * np.arange(len(at_least))
    picks = [int(np.argmin(np.abs(at_least - t) + tie_break)) for t in _QUANTILES]
    return next((i for i in picks if i not in busy), picks[0])


@dataclass
class AdaptiveSearch:
    """The adaptive, noise-aware search over split depths, without Ray.

    :meth:`suggest` gives the next depth to try (None: finished, or wait for trials in flight
    when ``max_parallel`` are), :meth:`observe` takes a finished trial's outcome, :meth:`decision`
    is the current answer with its interval. It stops once the interval is at most
    ``answer_width`` candidate steps wide or ``max_trials`` trials were issued (:attr:`why`).
    """

    candidates: Sequence[int]
    target: str = "robust_fa"
    q: float = 0.5
    level: float = LEVEL
    answer_width: int | None = None
    max_trials: int | None = None
    order: list[int] = field(init=False)
    hits: dict[int, int] = field(init=False, default_factory=dict)
    trials: dict[int, int] = field(init=False, default_factory=dict)
    pending: dict[int, int] = field(init=False, default_factory=dict)
    issued: dict[int, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.order = premise_order(self.candidates, self.target)
        if self.answer_width is None:
            self.answer_width = default_answer_width(len(self.order))
        if self.max_trials is None:
            self.max_trials = default_max_trials(len(self.order))

    @property
    def used(self) -> int:
        """Trials issued so far (finished or in flight)."""
        return sum(self.issued.values())

    def decision(self) -> Decision:
        """The current answer with its interval, from the finished trials."""
        counts = {d: (self.hits.get(d, 0), self.trials.get(d, 0)) for d in self.trials}
        return decide(counts, self.order, self.target, q=self.q, level=self.level)

    @property
    def why(self) -> str | None:
        """Why the search is over (None while it is not)."""
        width = self.decision().width
        if width <= self.answer_width:
            return (
                f"the {100 * self.level:.0f} % interval is {width} step(s) wide "
                f"(answer_width {self.answer_width})"
            )
        if self.used >= self.max_trials:
            return f"max_trials = {self.max_trials} spent; the interval is {width} step(s) wide"
        return None

    def suggest(self) -> tuple[int, int] | None:
        """(depth, trial index at that depth) of the next trial, or None when finished."""
        if self.why is not None:
            return None
        s = [self.hits.get(d, 0) for d in self.order]
        n = [self.trials.get(d, 0) for d in self.order]
        busy = [i for i, d in enumerate(self.order) if self.pending.get(d, 0) > 0]
        depth = self.order[next_index(s, n, self.q, busy)]
        index = self.issued.get(depth, 0)
        self.issued[depth] = index + 1
        self.pending[depth] = self.pending.get(depth, 0) + 1
        return depth, index

    def observe(self, depth: int, reached: bool) -> None:
        """A finished trial at ``depth`` (a failed one counts as not reaching)."""
        if self.pending.get(depth, 0) > 0:
            self.pending[depth] -= 1
        else:  # a trial the search did not issue (a resumed grid's, say): count it too
            self.issued[depth] = self.issued.get(depth, 0) + 1
        self.trials[depth] = self.trials.get(depth, 0) + 1
        self.hits[depth] = self.hits.get(depth, 0) + int(bool(reached))
