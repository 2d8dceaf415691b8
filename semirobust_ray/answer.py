"""What a search answers, in words, from every trial's outcome.

The paper's question, and the default target (``minimise: robust_fa``): the **smallest robust
f*_a**, i.e. the LARGEST |f_b| that adversarially training f_b alone for at most E epochs from
its regular weights brings within k of Acc*. It is reported as the number of robust layers
a = n − |f_b| and as |f_b|: "the first a of n layers must be robust; the last |f_b| can be
trained in E epochs". The second reading (``minimise: fb``) is the smallest such |f_b|, usually
1 (retraining the classifier on robust features recovers Acc*).

A trial's outcome is noisy (one seed, a finite validation set), so "reaches" is a probability:
a depth reaches when one trial's probability p(d) of coming within k is at least q
(``reach_probability``) under a monotone fit, and every answer comes with its 90 % interval
(:mod:`semirobust_ray.decision` says how and why). The premise behind the fit, for
``robust_fa``: a smaller f_b (a larger robust f*_a) is at least as easy to recover; for ``fb``
the mirror image. The paper states neither, so the depths whose own reach rate contradicts it
are listed (the fit pools them), and an interval whose confident reach lies beyond a confident
miss is marked contradicted.

:func:`answer_summary` works on plain ``{depth: [reached, ...]}`` mappings, so the runner, the
report (from stored results) and a notebook judge the same evidence the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from semirobust_ray.decision import (
    LEVEL,
    TARGETS,
    Decision,
    check_target,
    decide,
    default_answer_width,
    default_max_trials,
    premise_order,
)
from semirobust_ray.names import current_keys

__all__ = ["TARGETS", "premise_order", "answer_summary", "statement", "premise"]

_NAMES = {"robust_fa": "smallest robust f*_a", "fb": "smallest f_b"}
_PREMISES = {
    "robust_fa": "a smaller f_b (a larger robust f*_a) is at least as easy to recover",
    "fb": "a larger f_b (more layers trained) is at least as easy to recover",
}


def premise(target: str) -> str:
    """The monotonicity the answer of ``target`` assumes, in words."""
    check_target(target)
    return _PREMISES[target]


@dataclass(frozen=True)
class Violation:
    """A depth that reached beyond (in premise order) depths that did not: the premise fails."""

    reached: int
    missed_before: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"reached": self.reached, "missed_before": list(self.missed_before)}


def premise_violations(reached: Mapping[int, bool], target: str) -> list[Violation]:
    """Every reaching depth that lies beyond a missing one in premise order, with those misses.

    For ``robust_fa``: a larger |f_b| reached where a smaller one did not.
    """
    out: list[Violation] = []
    missed: list[int] = []
    for d in premise_order(reached, target):
        if not reached[d]:
            missed.append(d)
        elif missed:
            out.append(Violation(d, tuple(missed)))
    return out


def statement(target: str, fb_layers: int | None, num_layers: int, epochs: int, k: Any) -> str:
    """The answer of ``target`` in plain words."""
    check_target(target)
    n = num_layers
    epochs = f"{epochs} epoch" + ("" if epochs == 1 else "s")
    if fb_layers is None:
        return f"no candidate |f_b| brought the network within k = {k} of Acc* in {epochs}"
    a = n - fb_layers
    layers = "layer" if fb_layers == 1 else "layers"
    if target == "robust_fa":
        if a == 0:
            return (
                f"smallest robust f*_a: none of the {n} layers needs to be robust: adversarially "
                f"training all {n} from their regular weights for at most {epochs} comes "
                f"within k = {k} of Acc*"
            )
        return (
            f"smallest robust f*_a: the first {a} of {n} layers must be robust; the last "
            f"{fb_layers} {layers} can be trained in {epochs} to come within k = {k} of Acc*"
        )
    return (
        f"smallest f_b: adversarially training only the last {fb_layers} {layers} on top of the "
        f"first {a} robust layers comes within k = {k} of Acc* in {epochs}"
    )


def _words(decision: Decision, num_layers: int) -> str:
    """The interval of a reading in words ("90 % interval: between 2 and 5 of the 6 layers must
    be robust")."""
    n, level = num_layers, f"{100 * decision.level:.0f} % interval"
    if decision.target == "robust_fa":
        lo, hi = decision.robust_layers_interval(n)
        if lo == hi:
            return f"{level}: exactly {lo} of the {n} layers must be robust"
        return f"{level}: between {lo} and {hi} of the {n} layers must be robust"
    if decision.high is None:
        return f"{level}: no |f_b| reaches"
    if decision.low is None:
        return f"{level}: |f_b| of at least {decision.high}, or none reaches"
    lo, hi = sorted((decision.low, decision.high))
    return f"{level}: |f_b| = {lo}" if lo == hi else f"{level}: |f_b| between {lo} and {hi}"


def _reading(
    decision: Decision, num_layers: int, epochs: int, k: Any, answer_width: int
) -> dict[str, Any]:
    """One reading of the answer (:func:`answer_summary`)."""
    n, fb = num_layers, decision.fb_layers
    determined = decision.width <= answer_width and not decision.contradicted
    interval = {
        "fb_layers": [decision.low, decision.high],
        "robust_layers": list(decision.robust_layers_interval(n)),
        "level": decision.level,
    }
    if decision.contradicted:
        why = "the premise is contradicted: a confident reach lies beyond a confident miss"
    elif determined:
        why = f"the interval spans {decision.width} candidate step(s) (answer_width {answer_width})"
    else:
        why = (
            f"undetermined: the interval spans {decision.width} candidate steps, more than "
            f"answer_width {answer_width}; more trials near the boundary (or more validation "
            "images, see noise_floor) would narrow it"
        )
    return {
        "fb_layers": fb,
        "robust_layers": None if fb is None else n - fb,
        "statement": (
            statement(decision.target, fb, n, epochs, k)
            if fb is not None or not decision.contradicted
            else f"{_NAMES[decision.target]}: not read, its trials contradict its premise "
            f"({premise(decision.target)})"
        ),
        "interval": interval,
        "interval_statement": _words(decision, n),
        "width": decision.width,
        "determined": determined,
        "contradicted": decision.contradicted,
        "why": why,
        "reach": [d.to_dict() for d in decision.depths],
    }


def answer_summary(
    outcomes: Mapping[int, Sequence[bool]],
    candidates: Iterable[int],
    target: str,
    num_layers: int,
    epochs: int,
    k: Any,
    *,
    q: float = 0.5,
    answer_width: int | None = None,
    trials_per_depth: int | None = None,
) -> dict[str, Any]:
    """Both readings of the answer with their intervals, the premise and the depths whose own
    reach rate contradicts it; JSON-serialisable (``minimal_split.json`` holds it).

    ``outcomes`` maps each depth tried to its trials' outcomes; ``candidates`` are every depth
    the search could answer. ``answer_width`` (default: a tenth of the candidates) is how narrow
    the interval must be to call the answer determined; ``trials_per_depth`` the T of the
    best-of-T figure.
    """
    candidates = sorted(set(candidates) | set(outcomes))
    width = default_answer_width(len(candidates)) if answer_width is None else answer_width
    readings = {}
    for t in TARGETS:
        decision = decide(
            outcomes, candidates, t, q=q, level=LEVEL, trials_per_depth=trials_per_depth
        )
        readings[t] = _reading(decision, num_layers, epochs, k, width)
    rates = {d: sum(map(bool, o)) / len(o) >= q for d, o in outcomes.items() if len(o)}
    return {
        "minimise": target,
        "reach_probability": q,
        "level": LEVEL,
        "answer_width": width,
        "answer": readings[target],
        "smallest_robust_fa": readings["robust_fa"],
        "smallest_fb": readings["fb"],
        "premise": premise(target),
        "premise_violations": [v.to_dict() for v in premise_violations(rates, target)],
        "candidates": candidates,
    }


def outcomes_of(results: Mapping[str, Any]) -> dict[int, list[bool]]:
    """Every trial outcome of stored ``results`` by depth: each finished trial's ``reached``,
    and each failed trial (a diverged loss) as not reaching."""
    out: dict[int, list[bool]] = {}
    for t in results.get("trials", []):
        out.setdefault(int(t["fb_layers"]), []).append(bool(t["reached"]))
    for f in results.get("failed", []):
        if f.get("fb_layers") is not None:
            out.setdefault(int(f["fb_layers"]), []).append(False)
    return dict(sorted(out.items()))


def search_answer(results: Mapping[str, Any], candidates: Iterable[int]) -> dict[str, Any]:
    """:func:`answer_summary` of stored ``results`` (a results dict: ``config``,
    ``num_layers``, ``trials``, ``failed``), with ``stop``: why the search ended."""
    config = current_keys(results["config"])  # also a search stored with old key names
    outcomes = outcomes_of(results)
    summary = answer_summary(
        outcomes,
        candidates,
        config.get("minimise", "robust_fa"),
        int(results["num_layers"]),
        config.get("epochs"),
        config.get("k"),
        q=config.get("reach_probability", 0.5),
        answer_width=config.get("answer_width"),
        trials_per_depth=config.get("trials_per_depth"),
    )
    trials = sum(len(o) for o in outcomes.values())
    summary["stop"] = stop_reason(config, summary["answer"], trials, len(summary["candidates"]))
    return summary


def stop_reason(
    config: Mapping[str, Any], reading: Mapping[str, Any], trials: int, candidates: int
) -> str:
    """Why a search with ``config`` ended, given its answer's ``reading`` and ``trials``."""
    search = config.get("search", "grid")
    if search == "adaptive":
        budget = config.get("max_trials") or default_max_trials(candidates)
        if reading["determined"]:
            return f"adaptive: {reading['why']}, after {trials} trials"
        return f"adaptive: max_trials = {budget} spent ({trials} trials); {reading['why']}"
    if search == "grid":
        t = config.get("trials_per_depth")
        return f"grid: every candidate depth tried (T = {t}), {trials} trials"
    if search == "bisection":
        return (
            f"bisection: its probes decided the boundary ({trials} trials); it trusts each "
            "probe's T trials as noiseless, so read the interval, not its end point"
        )
    return f"{search}: its sample budget spent ({trials} trials)"
