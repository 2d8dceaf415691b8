"""Tests of the dataset registry on real data (digits, the shared CIFAR-10 subset) and bad input.

The contract tests run over every registered dataset, grouped by what its registry entry says
it reads (:data:`DATASET_INFO`): bundled data is loaded and checked, a dataset that reads
``data_path`` or torchvision's files under ``data_root`` must say in one line what is missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from semirobust_ray.config import ConfigError, ExperimentConfig
from semirobust_ray.data import (
    DATASET_INFO,
    DATASETS,
    TEST_SEED,
    DatasetError,
    DataSplits,
    load_dataset,
    stratified_subset,
    to_unit,
)

CIFAR_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10_subset.npz"


def _row_set(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.reshape(len(x), -1)}


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("digits", seed=0)


def test_registry_has_the_issue_datasets() -> None:
    assert {"digits", "npz", "cifar10", "cifar100", "imagenette", "imagefolder"} <= set(DATASETS)
    assert set(DATASET_INFO) == set(DATASETS)


def _reading(reads: str) -> list[str]:
    return [name for name, info in DATASET_INFO.items() if info.reads == reads]


@pytest.mark.parametrize("name", _reading("bundled"))
def test_contract_bundled_datasets_load_as_uint8_splits_offline(name: str) -> None:
    d = load_dataset(name, seed=0, max_train=200, max_test=50)
    assert d.name == name and d.num_classes >= 2
    for x, y in [(d.x_train, d.y_train), (d.x_val, d.y_val), (d.x_test, d.y_test)]:
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.ndim == 4
        assert len(x) == len(y) > 0 and int(y.min()) >= 0 and int(y.max()) < d.num_classes
    assert torch.equal(load_dataset(name, seed=1, max_train=200, max_test=50).x_test, d.x_test)


@pytest.mark.parametrize("name", _reading("data_path"))
def test_contract_path_datasets_need_data_path_and_name_a_missing_one(name, tmp_path) -> None:
    with pytest.raises(ConfigError, match=f"dataset '{name}' needs data_path"):
        ExperimentConfig(dataset=name)
    with pytest.raises(DatasetError) as err:
        load_dataset(name, path=str(tmp_path / "nothing-here"))
    assert "nothing-here" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", _reading("data_root"))
def test_contract_torchvision_datasets_say_how_to_get_them(tmp_path: Path, name: str) -> None:
    ExperimentConfig(dataset=name)  # no data_path needed
    with pytest.raises(DatasetError) as err:
        load_dataset(name, root=str(tmp_path))
    msg = str(err.value)
    label = DATASET_INFO[name].display
    assert label in msg and str(tmp_path) in msg and "download" in msg and "\n" not in msg


def test_digits_shapes_and_ranges(digits: DataSplits) -> None:
    assert digits.name == "digits"
    assert digits.num_classes == 10 and digits.in_channels == 1 and digits.image_size == 8
    total = len(digits.y_train) + len(digits.y_val) + len(digits.y_test)
    assert total == 1797
    assert len(digits.y_test) == round(0.2 * 1797)
    pool = len(digits.y_train) + len(digits.y_val)
    assert len(digits.y_val) == round(0.1 * pool)
    for x, y in [
        (digits.x_train, digits.y_train),
        (digits.x_val, digits.y_val),
        (digits.x_test, digits.y_test),
    ]:
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8) and len(x) == len(y)
        assert set(y.unique().tolist()) == set(range(10))  # stratified: all classes present
    assert int(digits.x_train.max()) == 255 and int(digits.x_train.min()) == 0
    u = to_unit(digits.x_train[:5])
    assert u.dtype == torch.float32 and float(u.max()) <= 1.0 and float(u.min()) >= 0.0


def test_digits_splits_are_disjoint(digits: DataSplits) -> None:
    # Digits holds a few identical images, so a handful of byte-equal rows across splits is
    # expected; a leak of the split itself would give hundreds.
    train, val, test = (_row_set(digits.x_train), _row_set(digits.x_val), _row_set(digits.x_test))
    n_dupes = len(train & test) + len(val & test) + len(train & val)
    assert n_dupes < 20  # only genuine duplicates of the raw data can overlap
    full = load_dataset("digits", val_fraction=0.0)
    assert len(full.y_val) == 0
    assert len(full.y_train) == len(digits.y_train) + len(digits.y_val)
    # Every train/val image of the split load comes from the unsplit pool.
    assert (train | val) <= _row_set(full.x_train)


def test_digits_same_seed_same_split_other_seed_other_split(digits: DataSplits) -> None:
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_val, digits.y_val)
    assert torch.equal(again.x_test, digits.x_test)
    assert not torch.equal(other.x_val, digits.x_val)
    # The test split does not depend on the seed, so seeds are scored on the same images.
    assert torch.equal(other.x_test, digits.x_test)


def test_max_train_max_test_are_seeded_stratified_subsets() -> None:
    a = load_dataset("digits", max_train=200, max_test=50, val_fraction=0.25, seed=3)
    b = load_dataset("digits", max_train=200, max_test=50, val_fraction=0.25, seed=3)
    assert len(a.y_train) + len(a.y_val) == 200 and len(a.y_val) == 50 and len(a.y_test) == 50
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert a.y_train.bincount(minlength=10).min() >= 10  # class balance kept


def test_image_size_resizes(digits: DataSplits) -> None:
    big = load_dataset("digits", image_size=32)
    assert big.image_size == 32 and big.x_train.dtype == torch.uint8
    assert torch.equal(big.y_train, digits.y_train)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"max_train": 0}, "max_train"),
        ({"image_size": 0}, "image_size"),
    ],
)
def test_bad_load_options(kwargs: dict, fragment: str) -> None:
    with pytest.raises(DatasetError, match=fragment):
        load_dataset("digits", **kwargs)


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar-10")
    msg = str(err.value)
    assert "'cifar-10'" in msg and "digits" in msg and "did you mean 'cifar10'" in msg
    assert "\n" not in msg


# --------------------------------------------------------------------------- npz


@pytest.mark.skipif(
    not CIFAR_SUBSET.is_file(), reason=f"shared CIFAR-10 subset not present at {CIFAR_SUBSET}"
)
def test_npz_cifar_subset() -> None:
    d = load_dataset("npz", path=str(CIFAR_SUBSET), seed=0)
    assert d.x_train.dtype == torch.uint8 and d.x_train.shape[1:] == (3, 32, 32)
    assert d.num_classes == 10 and d.class_names[0] == "airplane"
    assert len(d.y_train) + len(d.y_val) == 5085 and len(d.y_test) == 1017
    # HWC → CHW must keep the pixels: compare against the file directly.
    raw = np.load(CIFAR_SUBSET, allow_pickle=False)
    assert torch.equal(d.x_test[0], torch.from_numpy(raw["x_test"][0]).permute(2, 0, 1))


def _write_npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


def _good_arrays(n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (n_train, 8, 8, 3), dtype=np.uint8),
        "y_train": np.arange(n_train) % 4,
        "x_test": rng.integers(0, 256, (n_test, 8, 8, 3), dtype=np.uint8),
        "y_test": np.arange(n_test) % 4,
    }


def test_npz_accepts_chw_grayscale_and_float(tmp_path: Path) -> None:
    a = _good_arrays()
    hwc = load_dataset("npz", path=_write_npz(tmp_path / "hwc.npz", **a))
    chw = {
        **a,
        "x_train": a["x_train"].transpose(0, 3, 1, 2),
        "x_test": a["x_test"].transpose(0, 3, 1, 2),
    }
    d_chw = load_dataset("npz", path=_write_npz(tmp_path / "chw.npz", **chw))
    assert torch.equal(
        torch.sort(hwc.x_test.flatten()).values, torch.sort(d_chw.x_test.flatten()).values
    )
    assert hwc.num_classes == 4 and hwc.x_train.shape[1:] == (3, 8, 8)

    gray = {**a, "x_train": a["x_train"][..., 0], "x_test": a["x_test"][..., 0]}
    d_gray = load_dataset("npz", path=_write_npz(tmp_path / "gray.npz", **gray))
    assert d_gray.in_channels == 1

    flt = {**a, "x_train": a["x_train"] / 255.0, "x_test": a["x_test"] / 255.0}
    d_flt = load_dataset("npz", path=_write_npz(tmp_path / "flt.npz", **flt), val_fraction=0.0)
    d_int = load_dataset("npz", path=_write_npz(tmp_path / "int.npz", **a), val_fraction=0.0)
    assert torch.equal(d_flt.x_train, d_int.x_train)


def test_npz_classes_array_sets_num_classes(tmp_path: Path) -> None:
    a = _good_arrays()
    classes = np.array(["a", "b", "c", "d", "e", "f"])
    d = load_dataset("npz", path=_write_npz(tmp_path / "c.npz", **a, classes=classes))
    assert d.num_classes == 6 and d.class_names == tuple("abcdef")


def _bad(a: dict[str, np.ndarray], **changes: np.ndarray | None) -> dict[str, np.ndarray]:
    out = {**a, **{k: v for k, v in changes.items() if v is not None}}
    for k, v in changes.items():
        if v is None:
            del out[k]
    return out


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("missing_arrays", "missing arrays y_train, x_test"),
        ("bad_ndim", "x_train must have 3 or 4 dimensions"),
        ("no_channel_axis", "cannot find the channel axis"),
        ("length_mismatch", "y_train has 19 labels but x_train has 20 images"),
        ("shape_mismatch", "x_test images are"),
        ("nan", "non-finite"),
        ("float_range", "float pixels must be in [0, 1]"),
        ("int_range", "integer pixels must be in 0..255"),
        ("negative_label", "negative labels"),
        ("label_vs_classes", "labels outside 0..1"),
        ("string_labels", "integer class labels"),
        ("labels_2d", "y_test must be 1-D"),
    ],
)
def test_npz_errors_name_the_problem(tmp_path: Path, case: str, fragment: str) -> None:
    a = _good_arrays()
    f32 = a["x_train"].astype(np.float32) / 255.0
    nan = f32.copy()
    nan[0, 0, 0, 0] = np.nan
    variants = {
        "missing_arrays": _bad(a, y_train=None, x_test=None),
        "bad_ndim": _bad(a, x_train=a["x_train"][:, :, :, 0, None, None]),
        "no_channel_axis": _bad(a, x_train=np.zeros((20, 8, 8, 5), np.uint8)),
        "length_mismatch": _bad(a, y_train=a["y_train"][:-1]),
        "shape_mismatch": _bad(a, x_test=np.zeros((10, 6, 6, 3), np.uint8)),
        "nan": _bad(a, x_train=nan),
        "float_range": _bad(a, x_train=f32 * 2.0),
        "int_range": _bad(a, x_train=a["x_train"].astype(np.int64) * 2),
        "negative_label": _bad(a, y_train=a["y_train"] - 1),
        "label_vs_classes": _bad(a, classes=np.array(["x", "y"])),
        "string_labels": _bad(a, y_train=np.array(["a"] * 20)),
        "labels_2d": _bad(a, y_test=a["y_test"][:, None]),
    }
    path = _write_npz(tmp_path / f"{case}.npz", **variants[case])
    with pytest.raises(DatasetError) as err:
        load_dataset("npz", path=path)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_npz_missing_file_and_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="npz file not found"):
        load_dataset("npz", path=str(tmp_path / "nope.npz"))
    with pytest.raises(DatasetError, match="needs path"):
        load_dataset("npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset("npz", path=str(tmp_path / "junk.npz"))


# --------------------------------------------------------------------------- torchvision


def test_imagenette_reads_a_torchvision_layout_offline(tmp_path: Path) -> None:
    """A tiny tree in torchvision's Imagenette layout goes through the real loading code."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for wnid in ("n01440764", "n03888257"):  # tench, parachute
            d = tmp_path / "imagenette2-160" / split / wnid
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (160, 213, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{wnid}_{i}.JPEG")
    d = load_dataset("imagenette", root=str(tmp_path), image_size=32, val_fraction=0.0)
    assert d.x_train.shape == (6, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    assert d.num_classes == 2 and d.class_names == ("tench", "parachute")
    assert d.y_train.tolist() == [0, 0, 0, 1, 1, 1]


def test_default_root_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMIROBUST_DATA", str(tmp_path / "env_root"))
    with pytest.raises(DatasetError, match="env_root"):
        load_dataset("cifar10")


# --------------------------------------------------------------------------- imagefolder


def _write_tree(root: Path, splits: dict[str, dict[str, int]]) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, classes in splits.items():
        for cls, n in classes.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)  # non-square on purpose
                Image.fromarray(arr).save(d / f"{i}.png")


def test_imagefolder_tree(tmp_path: Path) -> None:
    _write_tree(tmp_path, {"train": {"cat": 6, "dog": 4}, "test": {"cat": 2, "dog": 3}})
    d = load_dataset("imagefolder", path=str(tmp_path), image_size=10, val_fraction=0.2)
    assert d.num_classes == 2 and d.class_names == ("cat", "dog")
    assert d.x_train.shape[1:] == (3, 10, 10) and d.x_train.dtype == torch.uint8
    assert len(d.y_train) + len(d.y_val) == 10 and len(d.y_val) == 2 and len(d.y_test) == 5
    assert sorted(d.y_test.tolist()) == [0, 0, 1, 1, 1]


def test_imagefolder_bad_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("imagefolder", path=str(tmp_path / "absent"))
    _write_tree(tmp_path / "a", {"train": {"cat": 1}})
    with pytest.raises(DatasetError, match="no test"):
        load_dataset("imagefolder", path=str(tmp_path / "a"))
    _write_tree(tmp_path / "b", {"train": {"cat": 1}, "test": {"bird": 1}})
    with pytest.raises(DatasetError, match="not present"):
        load_dataset("imagefolder", path=str(tmp_path / "b"))
    (tmp_path / "c" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "c" / "test" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="contains no images"):
        load_dataset("imagefolder", path=str(tmp_path / "c"))
    with pytest.raises(DatasetError, match="'imagefolder' needs path"):
        load_dataset("imagefolder", root=str(tmp_path / "b"))  # data_root is for torchvision


def test_imagefolder_config_reads_data_path(tmp_path: Path) -> None:
    """The user's route: data_path in the config, through prepare(), with data_root elsewhere."""
    from semirobust_ray.config import ExperimentConfig
    from semirobust_ray.experiment import prepare

    root = tmp_path / "pets"
    classes = {"bird": 3, "cat": 4, "dog": 5}
    _write_tree(root, {"train": classes, "test": {"bird": 1, "cat": 2, "dog": 2}})
    values = {
        "dataset": "imagefolder",
        "data_path": str(root),
        "data_root": str(tmp_path / "torchvision"),  # must not be where the images are read
        "image_size": 8,
        "val_fraction": 0.25,
    }
    exp = prepare(ExperimentConfig.from_dict(values))
    d = exp.data
    assert d.num_classes == 3 and d.class_names == ("bird", "cat", "dog")
    assert d.x_train.shape[1:] == (3, 8, 8) and exp.config.augment_enabled
    assert len(d.y_train) + len(d.y_val) == 12 and len(d.y_val) == 3
    assert (d.y_train.bincount() + d.y_val.bincount()).tolist() == [3, 4, 5]
    assert sorted(d.y_test.tolist()) == [0, 1, 1, 2, 2]
    missing = tmp_path / "no_such_dir"
    with pytest.raises(DatasetError) as err:
        prepare(ExperimentConfig.from_dict({**values, "data_path": str(missing)}))
    msg = str(err.value)
    assert f"image folder {missing} does not exist" in msg and "\n" not in msg


# --------------------------------------------------------------------------- evaluation subsets


def test_stratified_subset_is_seeded_sorted_and_proportional(digits: DataSplits) -> None:
    y = digits.y_test
    a = stratified_subset(y, 50, seed=3)
    assert torch.equal(a, stratified_subset(y, 50, seed=3))
    assert not torch.equal(a, stratified_subset(y, 50, seed=4))
    assert len(a) == 50 and torch.equal(a, torch.sort(a).values) and len(a.unique()) == 50
    assert y[a].bincount(minlength=10).tolist() == [5] * 10  # digits' test split is balanced
    assert torch.equal(stratified_subset(y, len(y) + 5, seed=0), torch.arange(len(y)))
    with pytest.raises(DatasetError, match=r"subset size must be a non-negative integer, got -1"):
        stratified_subset(y, -1, seed=0)


def _class_sorted_npz(path: Path, per_class: int = 10) -> str:
    """Digits with a test split sorted by class, the way torchvision's Imagenette comes."""
    d = load_dataset("digits", val_fraction=0.0)
    keep = torch.cat([torch.nonzero(d.y_test == c).flatten()[:per_class] for c in range(10)])
    return _write_npz(
        path,
        x_train=d.x_train.numpy(),
        y_train=d.y_train.numpy(),
        x_test=d.x_test[keep].numpy(),
        y_test=d.y_test[keep].numpy(),
    )


def test_eval_samples_is_a_class_stratified_test_subset_shared_by_all_seeds(
    tmp_path: Path,
) -> None:
    from semirobust_ray.config import ExperimentConfig
    from semirobust_ray.experiment import prepare

    values = {"dataset": "npz", "data_path": _class_sorted_npz(tmp_path / "sorted.npz")}
    exp = prepare(ExperimentConfig.from_dict({**values, "eval_samples": 30}))
    y_all = exp.data.y_test
    assert y_all.tolist() == sorted(y_all.tolist())  # the first 30 would be classes 0, 1, 2
    x, y = exp.eval_split("test")
    assert y.bincount(minlength=10).tolist() == [3] * 10
    idx = stratified_subset(y_all, 30, TEST_SEED)  # images and labels stay paired
    assert torch.equal(x, exp.data.x_test[idx]) and torch.equal(y, y_all[idx])
    assert exp.eval_split("test")[0] is x  # computed once, reused by the baseline and trials
    for seed in (1, 7):
        other = prepare(ExperimentConfig.from_dict({**values, "eval_samples": 30, "seed": seed}))
        assert torch.equal(other.eval_split("test")[0], x)  # every seed: the same test images
    # eval_samples caps the test images only; val_samples caps the validation images the
    # same way (class-stratified, drawn with the seed).
    assert torch.equal(exp.eval_split("val")[0], exp.data.x_val)
    capped = prepare(ExperimentConfig.from_dict({**values, "val_samples": 30}))
    x_val, y_val = capped.eval_split("val")
    assert len(y_val) == 30 and set(y_val.tolist()) == set(range(10))
    assert torch.equal(x_val, prepare(capped.config).eval_split("val")[0])  # seeded
    assert torch.equal(capped.eval_split("test")[0], capped.data.x_test)
    whole = prepare(ExperimentConfig.from_dict({**values, "eval_samples": 1000}))
    x_cap, y_cap = whole.eval_split("test")
    assert torch.equal(x_cap, whole.data.x_test) and torch.equal(y_cap, whole.data.y_test)
