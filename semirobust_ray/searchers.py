"""The Ray edge of the search strategies: the Tune searchers that steer a search.

- :class:`AdaptiveSearcher`: the noise-aware search of :mod:`semirobust_ray.decision` (each trial
  goes where it most narrows the answer; it stops once the answer's 90 % interval is at most
  ``answer_width`` candidate steps wide or ``max_trials`` are spent).
- :class:`BisectionSearcher`: binary search that trusts each probe's T trials as noiseless;
  kept for comparison (README: Searches, what it costs under noise).

Which ``search`` value uses which searcher, and what it samples, is the table of
:mod:`semirobust_ray.strategies` (no Ray there, so the config can list the names). The
searchers' logic is plain Python that tests drive directly (``suggest`` /
``on_trial_complete``).
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

from ray.tune.search import Searcher

from semirobust_ray.answer import premise, premise_order, premise_violations
from semirobust_ray.decision import AdaptiveSearch

logger = logging.getLogger(__name__)


class SearchEnd:
    """Whether one of our searchers ended the search in this process (returned FINISHED).

    Tune's loop also ends on an interrupt, with the trials it has not yet been given never
    created: only the searcher knows the search is not over. A class attribute, as
    ``Tuner.restore`` runs its own unpickled copy of the searcher, not the one built here;
    :func:`semirobust_ray.ray_search.run_search` resets it before each run.
    """

    reached = False


class _DepthSearcher:
    """What our searchers share: their state saved and restored with Tune's checkpoints, and
    how a finished trial is read as an outcome.

    Tune checkpoints a searcher with ``save`` and puts it back with ``restore`` on a resume. The
    state is pickled: Tune's own experiment state is pickled in the same directory, and both
    come from the user's own search directory, which must be trusted (see ``Tuner.restore``'s
    warning).
    """

    live: dict[str, int]  # trial id -> where the searcher placed it (set by each searcher)

    def _outcome(self, trial_id: str, result: dict | None, error: bool) -> tuple[int, bool] | None:
        """(where the trial was placed, whether it reached) of a trial this searcher issued
        (None for one it did not); a trial that errored or diverged counts as not reaching."""
        placed = self.live.pop(trial_id, None)
        if placed is None:
            return None
        return placed, bool(result and not error and result.get("reached"))

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        # A finished search resumed (to rewrite its report) is never asked to suggest again.
        if self.ended:
            SearchEnd.reached = True

    @property
    def ended(self) -> bool:
        """Whether this searcher has nothing more to suggest."""
        raise NotImplementedError


class BisectionSearcher(_DepthSearcher, Searcher):
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
    def ended(self) -> bool:
        return self.finished

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
            SearchEnd.reached = True
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
        outcome = self._outcome(trial_id, result, error)
        if outcome is None:
            return
        index, reached = outcome
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


class AdaptiveSearcher(_DepthSearcher, Searcher):
    """:class:`semirobust_ray.decision.AdaptiveSearch` as a Tune searcher.

    Each suggestion is a (depth, trial index) pair: the depth where the next trial most narrows
    the answer, given the trials still in flight, and the next trial index of that depth (its
    seed). Tune keeps up to ``max_concurrent_trials`` of them running (the cluster's trial slots),
    so trials run in parallel while the search still adapts to every finished one. A trial that
    fails or diverges counts as not reaching. The search ends (``Searcher.FINISHED``) once the
    answer's interval is narrow enough or ``max_trials`` were issued; trials in flight then
    finish and count.

    With several trials in parallel, which depth a suggestion picks depends on which trials
    finished first, so two runs of the same search may try different depths (each trial's own
    numbers stay fixed by its depth, index and the config's seed); ``max_concurrent: 1`` makes
    the whole path reproducible.
    """

    def __init__(
        self,
        depths: list[int],
        target: str = "robust_fa",
        q: float = 0.5,
        answer_width: int | None = None,
        max_trials: int | None = None,
    ) -> None:
        super().__init__(metric="reached", mode="max")
        self.search = AdaptiveSearch(
            depths, target, q, answer_width=answer_width, max_trials=max_trials
        )
        self.live: dict[str, int] = {}  # trial id -> depth
        self.announced = False

    @property
    def ended(self) -> bool:
        return self.search.why is not None

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        nxt = self.search.suggest()
        if nxt is None:
            SearchEnd.reached = True
            if not self.announced:
                self.announced = True
                logger.info(f"[adaptive] no more trials: {self.search.why}")
            return self.FINISHED
        depth, index = nxt
        self.live[trial_id] = depth
        return {"fb_layers": depth, "trial": index}

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        outcome = self._outcome(trial_id, result, error)
        if outcome is None:
            return
        depth, reached = outcome
        self.search.observe(depth, reached)
        d = self.search.decision()
        point = "none" if d.fb_layers is None else d.fb_layers
        ends = ["none" if e is None else e for e in (d.low, d.high)]
        logger.info(
            f"[adaptive] |f_b| = {depth} {'reached' if reached else 'missed'} "
            f"({self.search.hits[depth]}/{self.search.trials[depth]} there); answer |f_b| = "
            f"{point}, {100 * d.level:.0f} % interval {ends[0]}..{ends[1]} ({d.width} step(s), "
            f"{self.search.used}/{self.search.max_trials} trials)"
        )
