"""How often each search strategy gets the answer right when trial outcomes are noisy.

``python benchmarks/bench_answer.py [--quick] [--runs N] [--json FILE]``

Trial outcomes are simulated from a known reach probability p(d) (a trial at depth d reaches
with probability p(d)), so the true answer, the largest |f_b| with p(d) ≥ q = 0.5, is known.
Scenarios: logistic p(d) = 0.1 + 0.8 / (1 + exp((d − c) / s)) (exactly 0.5 at c) for n = 6, 16
and 54 at several slopes s, and two plateaus (ResNet50-like: 0.95 over the first quarter, then
0.7 over most depths, then 0.15, truth at the plateau's end; and the same plateau at 0.3, below
q, truth at the first quarter's end, where "any of T trials reached" is most misleading). Strategies, each run on its own random stream:

- ``grid T=1`` / ``grid T=2``: every depth T times (n or 2n trials);
- ``bisection T=2``: :class:`semirobust_ray.searchers.BisectionSearcher` as the search runs it,
  trusting each probe's two trials as noiseless (its point answer is its own end point);
- ``adaptive @B``: :class:`semirobust_ray.decision.AdaptiveSearch` with ``max_trials = B`` and
  ``answer_width = 0`` (it spends its budget), at the budget of the strategy beside it.

For every run: whether the point answer is within ±1 and ±3 depths of the truth ("no depth" is
counted as |f_b| = 0), whether the 90 % interval of :func:`semirobust_ray.decision.decide` on the
run's outcomes covers the truth, and the trials used. The grid's and the bisection's intervals
are the report's reading of their outcomes (the report applies ``decide`` to every search).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semirobust_ray.decision import AdaptiveSearch, Decision, decide  # noqa: E402
from semirobust_ray.searchers import BisectionSearcher  # noqa: E402

Q = 0.5


def logistic(n: int, centre: float, slope: float) -> dict[int, float]:
    return {d: 0.1 + 0.8 / (1 + math.exp((d - centre) / slope)) for d in range(1, n + 1)}


def plateau(n: int, level: float) -> dict[int, float]:
    """0.95 over the first quarter, ``level`` up to n − 6, 0.15 (0.05 below q) beyond."""
    tail = 0.15 if level >= Q else 0.05
    return {d: 0.95 if d <= n // 4 else level if d <= n - 6 else tail for d in range(1, n + 1)}


SCENARIOS: dict[str, dict[int, float]] = {
    "n=6 logistic s=0.7": logistic(6, 3, 0.7),
    "n=16 logistic s=2": logistic(16, 9, 2),
    "n=54 logistic s=4": logistic(54, 30, 4),
    "n=54 logistic s=8": logistic(54, 30, 8),
    "n=54 plateau 0.7": plateau(54, 0.7),
    "n=54 plateau 0.3": plateau(54, 0.3),
}


def truth(p: dict[int, float]) -> int:
    return max((d for d, v in p.items() if v >= Q), default=0)


Outcomes = dict[int, list[bool]]


def _grid(p: dict[int, float], rng: np.random.Generator, t: int) -> tuple[Outcomes, None]:
    return {d: list(rng.random(t) < p[d]) for d in p}, None


def _bisection(p: dict[int, float], rng: np.random.Generator) -> tuple[Outcomes, int]:
    searcher = BisectionSearcher(sorted(p), 2)
    outcomes: Outcomes = {}
    for i in range(10 * len(p)):
        config = searcher.suggest(f"t{i}")
        if config == searcher.FINISHED or config is None:
            break
        reached = bool(rng.random() < p[config["fb_layers"]])
        outcomes.setdefault(config["fb_layers"], []).append(reached)
        searcher.on_trial_complete(f"t{i}", {"reached": int(reached)})
    return outcomes, searcher.minimal_depth or 0


def _adaptive(p: dict[int, float], rng: np.random.Generator, budget: int) -> tuple[Outcomes, None]:
    search = AdaptiveSearch(sorted(p), max_trials=budget, answer_width=0)
    outcomes: Outcomes = {}
    while (nxt := search.suggest()) is not None:
        reached = bool(rng.random() < p[nxt[0]])
        outcomes.setdefault(nxt[0], []).append(reached)
        search.observe(nxt[0], reached)
    return outcomes, None


def _score(p: dict[int, float], outcomes: Outcomes, point: int | None) -> tuple[int, int, int, int]:
    """(within ±1, within ±3, interval covers, trials) of one run."""
    decision: Decision = decide(outcomes, p, q=Q)
    answer = point if point is not None else decision.fb_layers or 0
    t = truth(p)
    low = 0 if decision.low is None else decision.low
    high = 0 if decision.high is None else decision.high
    return (
        abs(answer - t) <= 1,
        abs(answer - t) <= 3,
        low <= t <= high,
        sum(len(o) for o in outcomes.values()),
    )


def _strategy(
    name: str, run: Callable[[np.random.Generator], tuple[Outcomes, int | None]], p, runs, seed
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    scores = np.array([_score(p, *run(rng)) for _ in range(runs)], dtype=float)
    return {
        "strategy": name,
        "within_1": scores[:, 0].mean(),
        "within_3": scores[:, 1].mean(),
        "coverage": scores[:, 2].mean(),
        "trials": scores[:, 3].mean(),
    }


def scenario(name: str, p: dict[int, float], runs: int) -> list[dict[str, Any]]:
    """Every strategy on one scenario; adaptive at the grid budgets and at bisection's."""
    n = len(p)
    rows = [
        _strategy("grid T=1", lambda r: _grid(p, r, 1), p, runs, 1),
        _strategy("grid T=2", lambda r: _grid(p, r, 2), p, runs, 2),
        _strategy("bisection T=2", lambda r: _bisection(p, r), p, runs, 3),
    ]
    bisection_budget = max(1, round(rows[-1]["trials"]))
    for budget in sorted({bisection_budget, n, 2 * n}):
        rows.append(
            _strategy(f"adaptive @{budget}", lambda r, b=budget: _adaptive(p, r, b), p, runs, 4)
        )
    for row in rows:
        row["scenario"], row["truth"] = name, truth(p)
    return rows


def run(quick: bool = False, runs: int | None = None) -> dict[str, Any]:
    runs = runs or (40 if quick else 300)
    start = time.perf_counter()
    rows = []
    for name, p in SCENARIOS.items():
        rows += scenario(name, p, runs)
        print(f"[bench_answer] {name}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    return {"runs": runs, "rows": rows, "seconds": time.perf_counter() - start}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| scenario (truth) | strategy | within ±1 | within ±3 | 90 % interval covers | trials |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['scenario']} ({r['truth']}) | {r['strategy']} | {r['within_1']:.2f} | "
            f"{r['within_3']:.2f} | {r['coverage']:.2f} | {r['trials']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="40 runs per cell instead of 300")
    ap.add_argument("--runs", type=int, help="runs per cell")
    ap.add_argument("--json", type=Path, help="write the figures to this file")
    args = ap.parse_args()
    result = run(args.quick, args.runs)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
