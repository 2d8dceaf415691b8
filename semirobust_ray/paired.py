"""Whether a trial came within k of Acc*: the one predicate, a paired check, and its noise floor.

Every place that decides "within k" (the per-epoch stop of a trial, a trial's recorded outcome,
the stop-attack benchmark) calls :func:`within_k`. It compares whole images, not float
fractions: a gap of ``g`` images on ``n`` validation images is within k when
``g <= floor(k * n)`` (:func:`k_images`). With floats, 0.21 − 0.19 in float32 is 0.019999996 and
a gap of exactly 2 points passed k = 0.02 by rounding, or failed it, depending on the numbers.

**The paired check** (:func:`paired_check`). Trial and baseline are scored on the same
validation images, in the same order, under the same attack randomness (the stop attack seeded
with the config's ``seed``, batches of ``eval_batch``): per image i, ``base_i`` and ``trial_i``
say whether each network classified the attacked image correctly. The gap in images is
``sum(base_i) − sum(trial_i) = sum(d_i)`` with ``d_i = base_i − trial_i`` ∈ {−1, 0, 1}. Its
standard error, in images, is ``sqrt(n · var(d))``, with ``var`` the sample variance
(``ddof=1``; 0 for n < 2): the images are a sample from the distribution the accuracy stands
for, and the paired differences carry all of the comparison's sampling noise. Images on which
both networks agree contribute d_i = 0, so the paired standard error is smaller than that of two
independent measurements whenever the networks agree on most images (they share f*_a).

**The noise floor** (:func:`noise_floor`), said before any trial runs, from the validation size
N and Acc*_val = p alone: ``se = sqrt(p (1 − p) / N)`` is the standard error of one robust
accuracy on these images. A check whose k is below ``2 · se`` cannot tell a trial that reached
from one that missed by a point or two; the warning names the number of validation images (or
the k) that would resolve it. The paired standard error measured on each trial (``gap_se``) is
reported beside every outcome and may well be smaller than this floor, since trial and baseline
agree on most images; the floor is the conservative figure available before any trial ran.

**Storage.** Per-image correctness is stored compactly in JSON (:func:`pack_correct`): the
string ``"<n>:<base64 of numpy.packbits(bits)>"`` (big-endian bit order within each byte, as
``packbits`` writes it, padded with zero bits to a whole byte); 1,000 images take 172 characters.
"""

from __future__ import annotations

import base64
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Absorbs the float error of ``k * n`` (0.02 × 100 = 2.0000000000000004 or 1.9999999999999998).
_EPS = 1e-9


def k_images(n_images: int, k: float) -> int:
    """The tolerance k in whole images on ``n_images``: ``floor(k · n + 1e-9)``.

    0.02 × 100 is 2 images (not 1.9999...); 0.02 × 250 = 5; 0.05 × 73 = 3.65 → 3.
    """
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    return math.floor(k * n_images + _EPS)


def within_k(gap_images: int, n_images: int, k: float) -> bool:
    """Whether a gap of ``gap_images`` images (Acc*_val's correct minus the trial's) on
    ``n_images`` validation images is within k: ``gap_images <= k_images(n_images, k)``.

    The one predicate of "reached": exact integers, so there are no float ties.
    """
    return int(gap_images) <= k_images(n_images, k)


def _bool_vector(v: Any, name: str) -> np.ndarray:
    """A flat boolean numpy vector from a torch tensor, numpy array or sequence."""
    if hasattr(v, "detach"):  # a torch tensor, without importing torch here
        v = v.detach().cpu().numpy()
    arr = np.asarray(v)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D per-image vector, got shape {arr.shape}")
    return arr.astype(bool)


@dataclass(frozen=True)
class PairedCheck:
    """A trial's network against the baseline's on the same validation images and attack.

    ``gap_images`` = ``baseline_correct − correct`` (positive: the trial is behind), and
    ``se_images`` the standard error of that gap in images from the paired per-image outcomes
    (``sqrt(n · var(d_i))``, sample variance with ddof=1; see the module docstring).
    """

    n_images: int
    baseline_correct: int
    correct: int
    gap_images: int
    se_images: float

    @property
    def gap(self) -> float:
        """The gap as a fraction of the images (Acc*_val − the trial's validation accuracy)."""
        return self.gap_images / self.n_images if self.n_images else math.nan

    @property
    def se(self) -> float:
        """The gap's standard error as a fraction."""
        return self.se_images / self.n_images if self.n_images else math.nan

    @property
    def accuracy(self) -> float:
        """The trial network's robust accuracy on these images."""
        return self.correct / self.n_images if self.n_images else math.nan

    def within(self, k: float) -> bool:
        """:func:`within_k` of this check."""
        return within_k(self.gap_images, self.n_images, k)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gap": self.gap, "se": self.se}


def paired_se_images(d: np.ndarray) -> float:
    """Standard error, in images, of ``sum(d)`` for per-image differences ``d``:
    ``sqrt(n · var(d, ddof=1))``; 0 for fewer than two images."""
    n = len(d)
    if n < 2:
        return 0.0
    return math.sqrt(n * float(np.var(d.astype(np.float64), ddof=1)))


def paired_check(baseline_correct: Any, correct: Any) -> PairedCheck:
    """The paired comparison of two per-image correctness vectors (booleans, same images in the
    same order): the baseline's (f*_a + f*_b) and a trial's network's.

    Raises ValueError when the lengths differ (the vectors cannot be about the same images).
    """
    base = _bool_vector(baseline_correct, "baseline_correct")
    mine = _bool_vector(correct, "correct")
    if len(base) != len(mine):
        raise ValueError(
            f"paired check needs the same images: baseline has {len(base)} per-image outcomes, "
            f"the trial {len(mine)}"
        )
    d = base.astype(np.int64) - mine.astype(np.int64)
    b, c = int(base.sum()), int(mine.sum())
    return PairedCheck(
        n_images=len(base),
        baseline_correct=b,
        correct=c,
        gap_images=b - c,
        se_images=paired_se_images(d),
    )


def accuracy_se(p: float, n_images: int) -> float:
    """Standard error of one accuracy ``p`` measured on ``n_images``: ``sqrt(p (1 − p) / n)``,
    a fraction (inf for no images)."""
    return math.sqrt(p * (1.0 - p) / n_images) if n_images > 0 else math.inf


def unpaired_se(p1: float, p2: float, n_images: int) -> float:
    """Standard error of ``p1 − p2``, two accuracies on ``n_images`` each with nothing pairing
    their images: ``sqrt((p1 q1 + p2 q2) / n)``, a fraction. Two networks attacked on the same
    images usually agree on most of them, so this is an upper bound on the paired error."""
    return math.hypot(accuracy_se(p1, n_images), accuracy_se(p2, n_images))


def count_check(acc_star_val: float, n_images: int, correct: int) -> PairedCheck:
    """The fallback for a baseline stored without per-image outcomes: counts only.

    The baseline's correct count is recovered from Acc*_val (``round(p · n)``); the standard
    error is that of two independent accuracies, ``sqrt(n (p1 q1 + p2 q2))`` in images, since
    nothing pairs the images.
    """
    b = round(acc_star_val * n_images)
    p1 = b / n_images if n_images else 0.0
    p2 = correct / n_images if n_images else 0.0
    se = n_images * unpaired_se(p1, p2, n_images) if n_images else 0.0
    return PairedCheck(n_images, b, int(correct), b - int(correct), se)


def images_needed(p: float, k: float) -> int | None:
    """The smallest N with ``k >= 2 · sqrt(p (1 − p) / N)``, i.e. ``ceil(4 p (1 − p) / k²)``;
    None for k = 0 (no finite N resolves it unless p is 0 or 1)."""
    if k <= 0:
        return None if 0.0 < p < 1.0 else 1
    return max(1, math.ceil(4.0 * p * (1.0 - p) / (k * k) - _EPS))


def noise_floor(acc_star_val: float, val_images: int, k: float) -> dict[str, Any]:
    """How well ``val_images`` validation images at Acc*_val = p resolve a gap of k.

    Returns ``val_images``, ``acc_star_val``, ``se`` (``sqrt(p (1 − p) / N)``, the standard
    error of one robust accuracy on these images, a fraction), ``k``, ``resolved``
    (``k >= 2 · se``), ``images_needed`` (the smallest N that resolves k at this p),
    ``k_needed`` (``2 · se``) and ``warning``: None when resolved, else one line saying what
    would resolve it. Each trial's own paired standard error (``gap_se``) is reported beside its
    outcome and is usually smaller (trial and baseline agree on most images).
    """
    p, n = float(acc_star_val), int(val_images)
    se = accuracy_se(p, n)
    k_needed = 2.0 * se
    resolved = k >= k_needed - _EPS
    needed = images_needed(p, k)
    warning = None
    if not resolved:
        warning = (
            f"the check cannot resolve k: k = {k:g} is below twice the check's standard error "
            f"({100 * se:.1f} points on {n:,} validation images at Acc*_val {100 * p:.1f} %): "
            + (f"use >= {needed:,} validation images or " if needed else "use ")
            + f"k >= {_ceil_to(k_needed, 3):g} to resolve it"
        )
    return {
        "val_images": n,
        "acc_star_val": p,
        "se": se,
        "k": float(k),
        "resolved": bool(resolved),
        "images_needed": needed,
        "k_needed": k_needed,
        "warning": warning,
    }


def warn_noise_floor(acc_star_val: float, val_images: int, k: float) -> dict[str, Any]:
    """:func:`noise_floor`, with its warning logged once (a search calls it after measuring
    the baseline, before any trial runs)."""
    floor = noise_floor(acc_star_val, val_images, k)
    if floor["warning"]:
        logger.warning(f"[noise floor] {floor['warning']}")
    return floor


def _ceil_to(x: float, digits: int) -> float:
    """``x`` rounded up at ``digits`` decimals (0.0459 → 0.046)."""
    f = 10**digits
    return math.ceil(x * f - _EPS) / f


def pack_correct(correct: Any) -> str:
    """Per-image correctness as ``"<n>:<base64 of numpy.packbits>"`` (module docstring)."""
    bits = _bool_vector(correct, "correct")
    return f"{len(bits)}:" + base64.b64encode(np.packbits(bits).tobytes()).decode("ascii")


def unpack_correct(packed: str) -> np.ndarray:
    """The boolean vector :func:`pack_correct` stored."""
    try:
        n_text, data = packed.split(":", 1)
        n = int(n_text)
        raw = np.frombuffer(base64.b64decode(data.encode("ascii"), validate=True), np.uint8)
    except (ValueError, AttributeError) as err:
        raise ValueError(f"not a packed correctness vector: {str(packed)[:40]!r}") from err
    if n < 0 or len(raw) != (n + 7) // 8:
        raise ValueError(f"packed correctness vector says {n} images but holds {len(raw)} bytes")
    return np.unpackbits(raw, count=n).astype(bool)
