"""Training-time augmentation: random crop with 4-pixel zero padding and horizontal flip.

The batched implementation is checked exactly against a per-image reference written the plain
way (pad, slice, mirror), on real digits and CIFAR-10 images and on noise (where only one
crop/flip can explain an output, so the drawn offsets can be read back).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

import semirobust_ray.algorithm1 as algorithm1
import semirobust_ray.baseline as baseline_module
from semirobust_ray.attacks import create_attack
from semirobust_ray.config import ExperimentConfig
from semirobust_ray.data import (
    DATASET_AUGMENT,
    DATASETS,
    augment_batch,
    load_dataset,
    to_unit,
)
from semirobust_ray.experiment import prepare
from semirobust_ray.models import create_model
from semirobust_ray.training import TRAIN_METHODS, make_optimizer, seed_everything, train_epoch

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10_subset.npz"
PAD = 4
CANDIDATES = list(itertools.product(range(2 * PAD + 1), range(2 * PAD + 1), (False, True)))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def reference(img: np.ndarray, dy: int, dx: int, flip: bool) -> np.ndarray:
    """torchvision's RandomCrop(padding=4) at offset (dy, dx), then an optional mirror."""
    c, h, w = img.shape
    padded = np.zeros((c, h + 2 * PAD, w + 2 * PAD), img.dtype)
    padded[:, PAD : PAD + h, PAD : PAD + w] = img
    crop = padded[:, dy : dy + h, dx : dx + w]
    return crop[:, :, ::-1] if flip else crop


def explanations(src: torch.Tensor, out: torch.Tensor) -> list[list[tuple[int, int, bool]]]:
    """For every image, the (dy, dx, flip) whose reference equals the augmented image."""
    a, b = src.numpy(), out.numpy()
    return [
        [cand for cand in CANDIDATES if np.array_equal(reference(a[i], *cand), b[i])]
        for i in range(len(a))
    ]


def test_shape_dtype_device_and_range_are_kept(digits):
    for x in (digits.x_train[:100], to_unit(digits.x_train[:100])):
        out = augment_batch(x, torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    out = augment_batch(to_unit(digits.x_train), torch.Generator().manual_seed(0))
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_same_generator_state_same_batch_other_state_other_batch(digits):
    x = to_unit(digits.x_train[:256])
    a = augment_batch(x, torch.Generator().manual_seed(5))
    b = augment_batch(x, torch.Generator().manual_seed(5))
    c = augment_batch(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # uint8 and float pixels are augmented identically (train_epoch augments the uint8 batch)
    u = augment_batch(digits.x_train[:256], torch.Generator().manual_seed(5))
    assert torch.equal(to_unit(u), a)


def test_every_image_is_a_shifted_zero_filled_possibly_flipped_copy(digits):
    x = to_unit(digits.x_train[:64])
    out = augment_batch(x, torch.Generator().manual_seed(1))
    assert all(explanations(x, out))  # digits have blank borders: several may fit, one must
    if CIFAR.is_file():
        cifar = to_unit(load_dataset("npz", path=str(CIFAR), max_train=200).x_train[:64])
        assert all(explanations(cifar, augment_batch(cifar, torch.Generator().manual_seed(1))))


def test_offsets_cover_the_range_and_about_half_are_flipped():
    g = torch.Generator().manual_seed(0)
    x = 0.1 + 0.9 * torch.rand(1000, 3, 8, 8, generator=g)  # noise: no zero pixel, no symmetry
    found = explanations(x, augment_batch(x, torch.Generator().manual_seed(2)))
    assert all(len(f) == 1 for f in found)  # exactly one crop and flip explains each image
    dy, dx, flip = (np.array(v) for v in zip(*(f[0] for f in found), strict=True))
    assert set(dy) == set(dx) == set(range(2 * PAD + 1))  # shifts of -4..4 pixels, all drawn
    assert 0.43 < flip.mean() < 0.57, flip.mean()  # Binomial(1000, 1/2): ±4.4 standard deviations


@pytest.mark.parametrize("method", ["regular", *TRAIN_METHODS])
def test_train_epoch_attacks_and_trains_on_the_augmented_batch(digits, method):
    """The first network input of an epoch is the augmented first batch (within ε for attacks
    with a random start), for regular training and every adversarial method."""
    eps, batch = 0.1, 64
    torch.manual_seed(0)
    model = create_model("smallcnn", 10, 8, 1)
    opt = make_optimizer(list(model.parameters()), 0.05, 0.9, 5e-4)
    seen: list[torch.Tensor] = []

    class FirstInput(Exception):
        pass

    def grab(_module, args):
        seen.append(args[0].detach().clone())
        raise FirstInput

    attack = None
    if method != "regular":
        attack = create_attack("pgd", model, eps=eps, alpha=eps / 4, steps=2, seed=0)
    handle = model.register_forward_pre_hook(grab)
    try:
        for augment in (False, True):
            with pytest.raises(FirstInput):
                train_epoch(
                    model, digits.x_train, digits.y_train, opt, batch_size=batch,
                    device=torch.device("cpu"), generator=seed_everything(0), attack=attack,
                    method="standard" if method == "regular" else method, augment=augment,
                )  # fmt: skip
    finally:
        handle.remove()
    g = torch.Generator().manual_seed(0)
    clean = digits.x_train[torch.randperm(len(digits.y_train), generator=g)[:batch]]
    augmented = to_unit(augment_batch(clean, g))
    plain_input, augmented_input = seen
    tol = 0.0 if method in ("regular", "free") else eps + 1e-6  # free starts from δ = 0
    assert (plain_input - to_unit(clean)).abs().max() <= tol
    assert (augmented_input - augmented).abs().max() <= tol
    assert (augmented_input - to_unit(clean)).abs().max() > 0.5  # it really is another batch


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"dataset": "digits"}, False),
        ({"dataset": "cifar10"}, True),
        ({"dataset": "cifar100"}, True),
        ({"dataset": "imagenette"}, True),
        ({"dataset": "npz", "data_path": "x.npz"}, True),
        ({"dataset": "imagefolder", "data_path": "images"}, True),
        ({"dataset": "cifar10", "augment": False}, False),
        ({"dataset": "digits", "augment": True}, True),
    ],
)
def test_augment_resolves_to_the_dataset_default_unless_set(values, expected):
    assert ExperimentConfig.from_dict(values).augment_enabled is expected


def test_every_registered_dataset_has_an_augment_default():
    assert set(DATASET_AUGMENT) == set(DATASETS)


def test_baseline_and_trials_train_with_the_resolved_setting(tmp_path, monkeypatch):
    """Both baseline loops (regular, adversarial) and the trial's f_b epochs get ``augment``."""
    calls: list[tuple[str, bool]] = []
    original = train_epoch

    def spy(where):
        def wrapped(*args, **kwargs):
            calls.append((where, kwargs.get("augment", False)))
            return original(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(baseline_module, "train_epoch", spy("baseline"))
    monkeypatch.setattr(algorithm1, "train_epoch", spy("trial"))
    config = ExperimentConfig.from_dict(
        dict(dataset="digits", max_train=200, max_test=50, steps=1, batch_size=64,
             baseline_epochs=1, baseline_adv_epochs=1, epochs=1, trials_per_depth=1, mi=False,
             cache_dir=str(tmp_path), augment=True)
    )  # fmt: skip
    exp = prepare(config)
    base = baseline_module.get_baseline(exp)
    algorithm1.run_trial(exp, base, 1, 0)
    assert calls == [("baseline", True), ("baseline", True), ("trial", True)]
