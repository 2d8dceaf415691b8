"""The one "within k" predicate, the paired check, the noise floor and the packed outcomes."""

import math

import numpy as np
import pytest
import torch

from semirobust_ray.paired import (
    count_check,
    k_images,
    noise_floor,
    pack_correct,
    paired_check,
    unpack_correct,
    within_k,
)


def test_k_in_whole_images_has_no_float_ties():
    # 0.02 * 100 is 2.0000000000000004 in floats, 0.07 * 100 is 7.000000000000001 and
    # 0.29 * 100 is 28.999999999999996: all exact numbers of images.
    assert k_images(100, 0.02) == 2
    assert k_images(100, 0.29) == 29
    assert k_images(100, 0.07) == 7
    assert k_images(250, 0.02) == 5
    assert k_images(73, 0.05) == 3  # 3.65 images: a gap of 4 is not within k
    assert k_images(100, 0.0) == 0
    # The float32 case from the ResNet50 reproduction: 0.21 - 0.19 = 0.019999996 passed
    # k = 0.02 by rounding. In images: 21 - 19 = 2 of 100, exactly k, within (<=).
    assert float(np.float32(0.21) - np.float32(0.19)) < 0.02
    assert within_k(21 - 19, 100, 0.02)
    assert not within_k(3, 100, 0.02)
    # k * n not an integer: 0.05 * 73 = 3.65 -> 3 images.
    assert within_k(3, 73, 0.05) and not within_k(4, 73, 0.05)
    assert within_k(-5, 73, 0.0) and within_k(0, 73, 0.0) and not within_k(1, 73, 0.0)


def test_paired_check_counts_and_standard_error_on_known_vectors():
    base = torch.tensor([1, 1, 0, 0, 1, 1], dtype=torch.bool)
    mine = np.array([1, 0, 1, 0, 0, 1], dtype=bool)
    c = paired_check(base, mine)
    assert (c.n_images, c.baseline_correct, c.correct, c.gap_images) == (6, 4, 3, 1)
    # d = base - mine = [0, 1, -1, 0, 1, 0]: mean 1/6, sample variance (ddof=1) 17/30.
    assert c.se_images == pytest.approx(math.sqrt(6 * 17 / 30))
    assert c.gap == pytest.approx(1 / 6) and c.se == pytest.approx(math.sqrt(6 * 17 / 30) / 6)
    assert c.accuracy == pytest.approx(0.5)
    assert c.within(1 / 6) and not c.within(0.1)
    d = c.to_dict()
    assert d["gap_images"] == 1 and d["gap"] == pytest.approx(1 / 6) and "se" in d
    # Identical outcomes: no gap and no noise, however many images.
    same = paired_check(base, base)
    assert same.gap_images == 0 and same.se_images == 0.0
    # Disagreement on half the images, in both directions: gap 0 but a large SE.
    swap = paired_check([1, 0] * 50, [0, 1] * 50)
    assert swap.gap_images == 0 and swap.se_images == pytest.approx(math.sqrt(100 * 100 / 99))


def test_paired_check_refuses_vectors_of_other_images():
    with pytest.raises(ValueError, match=r"baseline has 3 .* the trial 4"):
        paired_check([1, 0, 1], [1, 0, 1, 1])


def test_count_check_is_the_unpaired_fallback():
    c = count_check(0.8, 100, 78)
    assert (c.baseline_correct, c.correct, c.gap_images) == (80, 78, 2)
    assert c.se_images == pytest.approx(math.sqrt(100 * (0.8 * 0.2 + 0.78 * 0.22)))


def test_noise_floor_numbers_and_warning():
    # AlexNet's reproduction: 250 validation images, Acc*_val 15.6 %, k = 0.02.
    f = noise_floor(0.156, 250, 0.02)
    assert f["se"] == pytest.approx(math.sqrt(0.156 * 0.844 / 250))  # 2.3 points
    assert f["k_needed"] == pytest.approx(2 * f["se"])
    assert not f["resolved"]
    assert f["images_needed"] == 1317  # ceil(4 p (1 - p) / k^2) = ceil(1316.6)
    se_at = {n: math.sqrt(0.156 * 0.844 / n) for n in (1316, 1317)}
    assert 2 * se_at[1317] <= 0.02 < 2 * se_at[1316]
    assert f["warning"] == (
        "the check cannot resolve k: k = 0.02 is below twice the check's standard error "
        "(2.3 points on 250 validation images at Acc*_val 15.6 %): use >= 1,317 validation "
        "images or k >= 0.046 to resolve it"
    )
    assert "\n" not in f["warning"]
    # 5,000 validation images (full CIFAR-10, val_fraction 0.1) resolve k = 0.02 at p = 0.2.
    ok = noise_floor(0.2, 5000, 0.02)
    assert ok["resolved"] and ok["warning"] is None and ok["images_needed"] == 1600
    assert set(ok) == {
        "val_images",
        "acc_star_val",
        "se",
        "k",
        "resolved",
        "images_needed",
        "k_needed",
        "warning",
    }
    # k = 0 is resolved by no number of images.
    zero = noise_floor(0.5, 100, 0.0)
    assert zero["images_needed"] is None and "use k >= 0.1 " in zero["warning"]


def test_warn_noise_floor_logs_one_line_only_when_unresolved(logs):
    from semirobust_ray.paired import warn_noise_floor

    warn_noise_floor(0.2, 5000, 0.02)
    assert not logs
    warn_noise_floor(0.156, 250, 0.02)
    assert len(logs) == 1 and "1,317 validation images" in logs[0]


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1001])
def test_pack_unpack_round_trip(n):
    rng = np.random.default_rng(n)
    bits = rng.random(n) < 0.3
    packed = pack_correct(torch.from_numpy(bits))
    assert packed.startswith(f"{n}:") and packed.isascii()
    back = unpack_correct(packed)
    assert back.dtype == bool and back.shape == (n,) and np.array_equal(back, bits)
    if n == 1001:
        assert len(packed) < 200  # 1,001 images in under 200 characters of JSON


def test_unpack_refuses_garbage():
    with pytest.raises(ValueError):
        unpack_correct("12:AAAA")  # 3 bytes for 12 images (needs 2)
    with pytest.raises(ValueError):
        unpack_correct("not packed")
