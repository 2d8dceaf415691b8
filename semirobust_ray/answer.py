"""What a search answers, from whether each split depth reached Acc* − k.

The paper's question, and the default target (``minimise: robust_fa``): the **smallest robust
f*_a**, i.e. the LARGEST |f_b| whose trials, adversarially training f_b alone for at most E
epochs from its regular weights, bring the network within k of Acc*. It is reported as the
number of robust layers a = n − |f_b| and as |f_b|: "the first a of n layers must be robust;
the last |f_b| can be trained in E epochs". The second reading (``minimise: fb``) is the smallest
reaching |f_b|, usually 1 (retraining the classifier on robust features recovers Acc*).

Neither reading needs any assumption when every candidate depth was tried (``grid``). A search
that tries only some depths (``bisection``) assumes a premise, and this module says which and
checks it against the outcomes: for ``robust_fa``, that a smaller f_b (a larger robust f*_a) is
at least as easy to recover, so "reached" holds up to some depth and fails beyond it; for
``fb``, the mirror image, that a larger f_b is at least as easy. The paper states neither.

Everything here works on plain ``{depth: reached}`` mappings, so the searcher (while a search
runs) and the report (from stored results) judge the same evidence the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: Config values of ``minimise``: what the search minimises (the first is the default).
TARGETS: tuple[str, ...] = ("robust_fa", "fb")

_PREMISES = {
    "robust_fa": "a smaller f_b (a larger robust f*_a) is at least as easy to recover",
    "fb": "a larger f_b (more layers trained) is at least as easy to recover",
}


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"minimise: unknown value {target!r}; valid: {', '.join(TARGETS)}")


def premise(target: str) -> str:
    """The monotonicity a partial search over depths assumes for ``target``, in words."""
    _check_target(target)
    return _PREMISES[target]


def premise_order(depths: Iterable[int], target: str) -> list[int]:
    """Depths in the order in which the premise expects every reaching depth to come first.

    ``robust_fa``: ascending |f_b|; ``fb``: descending. The answer is then the LAST reaching
    depth of this order in both cases, the one just before the boundary.
    """
    _check_target(target)
    return sorted(set(depths), reverse=target == "fb")


def answer_depth(reached: Mapping[int, bool], target: str) -> int | None:
    """The answer among the depths tried: the largest reaching |f_b| for ``robust_fa``, the
    smallest for ``fb``; None when no depth reached."""
    _check_target(target)
    hits = [d for d, ok in reached.items() if ok]
    if not hits:
        return None
    return max(hits) if target == "robust_fa" else min(hits)


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


def established(
    reached: Mapping[int, bool], candidates: Iterable[int], target: str
) -> tuple[bool, str]:
    """Whether the evidence pins the answer down without assuming more than the premise, and why.

    It is established when the depth just beyond the answer in premise order was tried and
    missed (or the answer is the last candidate), i.e. both sides of the boundary were probed;
    with no reaching depth, when the first candidate in premise order was tried and missed.
    """
    order = premise_order(candidates, target)
    best = answer_depth(reached, target)
    if best is None:
        first = order[0]
        if first in reached:
            return True, f"|f_b| = {first}, the first candidate in premise order, missed"
        return False, f"|f_b| = {first} was not tried"
    i = order.index(best) if best in order else len(order) - 1
    if i == len(order) - 1:
        return True, f"|f_b| = {best} is the last candidate in premise order"
    beyond = order[i + 1]
    if beyond not in reached:
        return False, f"|f_b| = {beyond}, next to the answer, was not tried"
    return True, f"|f_b| = {best} reached and |f_b| = {beyond} did not"


def statement(target: str, fb_layers: int | None, num_layers: int, epochs: int, k: Any) -> str:
    """The answer of ``target`` in plain words."""
    _check_target(target)
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


def answer_summary(
    reached: Mapping[int, bool],
    candidates: Iterable[int],
    target: str,
    num_layers: int,
    epochs: int,
    k: Any,
) -> dict[str, Any]:
    """Both readings of the answer, the premise, whether it holds, and whether each reading is
    established; JSON-serialisable (``minimal_split.json`` holds it)."""
    candidates = sorted(set(candidates))
    readings = {}
    for t in TARGETS:
        fb = answer_depth(reached, t)
        ok, why = established(reached, candidates, t)
        readings[t] = {
            "fb_layers": fb,
            "robust_layers": None if fb is None else num_layers - fb,
            "statement": statement(t, fb, num_layers, epochs, k),
            "established": ok,
            "why": why,
        }
    return {
        "minimise": target,
        "answer": readings[target],
        "smallest_robust_fa": readings["robust_fa"],
        "smallest_fb": readings["fb"],
        "premise": premise(target),
        "premise_violations": [v.to_dict() for v in premise_violations(reached, target)],
        "candidates": candidates,
    }
