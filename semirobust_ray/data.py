"""Dataset registry: train / validation / test splits as uint8 image tensors.

Every dataset is loaded into memory as ``uint8`` tensors of shape N×C×H×W (pixel values 0..255)
with ``int64`` labels. Keeping pixels as uint8 makes the full CIFAR-10 training set 150 MB instead
of 600 MB and keeps the object cheap to ship to Ray workers; :func:`to_unit` converts a batch to
float in [0, 1], the space every model and attack of this project works in (normalisation lives
inside the models).

The validation split is always carved out of the training set (never out of the test set), with
a seeded, class-stratified permutation, so the early stopping of Algorithm 1 never looks at the
test set. The test split does not depend on ``seed``: runs with different seeds are scored on the
same images.

Adding a dataset is one decorated function (``docs/extending.md``)::

    @register_dataset("mydata", reads="data_path")  # augment=False if a flip changes the class
    def _load_mydata(opts: LoadOptions) -> RawDataset:
        ...

What it reads (``reads``: bundled data, the config's ``data_path`` or torchvision files under
``data_root``) is registry metadata: the config's help texts, its check that ``data_path`` is
set, and the contract tests (``tests/test_data.py``) read it from :data:`DATASET_INFO`.

Loaders only return the raw train pool and test set; :func:`load_dataset` does the splitting,
subsetting and resizing the same way for every dataset. Training batches are augmented with
:func:`augment_batch` (random crop with zero padding, horizontal flip) unless the dataset was
registered with ``augment=False`` or the config's ``augment`` key says otherwise.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from semirobust_ray.names import did_you_mean

__all__ = [
    "AUGMENT_PADDING",
    "DATASETS",
    "DATASET_AUGMENT",
    "DATASET_INFO",
    "DatasetInfo",
    "DataSplits",
    "DatasetError",
    "LoadOptions",
    "RawDataset",
    "TEST_SEED",
    "augment_batch",
    "default_data_root",
    "load_dataset",
    "register_dataset",
    "stratified_subset",
    "to_unit",
]

#: Environment variable that overrides the default data root.
DATA_ROOT_ENV = "SEMIROBUST_DATA"

#: Fraction of the digits data held out as its test split (digits ships without one).
DIGITS_TEST_FRACTION = 0.2

#: Default side length for datasets whose images must be resized (Imagenette, image folders).
DEFAULT_IMAGENETTE_SIZE = 160
DEFAULT_IMAGEFOLDER_SIZE = 64

#: Seed of every test-split / test-subset selection (``max_test``, the ``eval_samples`` subset);
#: fixed so every run seed is scored on the same test images.
TEST_SEED = 0

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


class DatasetError(ValueError):
    """A user error while loading a dataset; the message is one line that says what to fix."""


# eq=False: a generated __eq__ would compare tensors and raise; identity is what callers need.
@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train / validation / test splits of one dataset, held in memory.

    ``x_*`` are ``uint8`` tensors N×C×H×W with pixel values 0..255 (use :func:`to_unit` to get
    float images in [0, 1]); ``y_*`` are ``int64`` label tensors with values in
    ``0..num_classes-1``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str
    class_names: tuple[str, ...] = field(default=())

    @property
    def in_channels(self) -> int:
        """Number of image channels (1 for grayscale, 3 for RGB)."""
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        """Side length H of the (square) images."""
        return int(self.x_train.shape[2])

    def __repr__(self) -> str:  # tensors would flood the log otherwise
        return (
            f"DataSplits(name={self.name!r}, train={len(self.y_train)}, val={len(self.y_val)}, "
            f"test={len(self.y_test)}, shape={tuple(self.x_train.shape[1:])}, "
            f"num_classes={self.num_classes})"
        )


@dataclass(frozen=True, eq=False)
class RawDataset:
    """What a registered loader returns: the full training pool and the test set.

    Arrays follow the :class:`DataSplits` conventions (uint8 N×C×H×W, int64 labels).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadOptions:
    """Options handed to every registered loader (a loader ignores those it does not need)."""

    name: str
    root: Path
    path: str | None
    download: bool
    image_size: int | None


Loader = Callable[[LoadOptions], RawDataset]

#: Where a registered dataset's images come from: shipped with a package (``bundled``), the
#: file or directory the config's ``data_path`` names, or torchvision's files under
#: ``data_root`` (``download: true`` fetches them).
Reads = Literal["bundled", "data_path", "data_root"]
READS: tuple[str, ...] = ("bundled", "data_path", "data_root")


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry knows of a dataset besides its loader (:func:`register_dataset`)."""

    augment: bool
    reads: str
    display: str  # how reports name it (CIFAR-10)
    note: str = ""  # a few words for the help text

    @property
    def needs_path(self) -> bool:
        """Whether a config must set ``data_path`` for it."""
        return self.reads == "data_path"


#: Registry of dataset loaders by name; fill it with :func:`register_dataset`.
DATASETS: dict[str, Loader] = {}

#: Each registered dataset's metadata, by name.
DATASET_INFO: dict[str, DatasetInfo] = {}

#: Whether training augments each registered dataset when the config's ``augment`` is null.
DATASET_AUGMENT: dict[str, bool] = {}

#: Zero pixels added on each side before the random crop (torchvision's ``RandomCrop(32,
#: padding=4)``, the CIFAR adversarial-training recipe and the authors' code).
AUGMENT_PADDING = 4


def register_dataset(
    name: str,
    *,
    reads: Reads,
    augment: bool = True,
    display: str | None = None,
    note: str = "",
) -> Callable[[Loader], Loader]:
    """Decorator that registers a loader ``fn(opts: LoadOptions) -> RawDataset`` under ``name``.

    ``augment`` is the dataset's default for the config key of the same name: whether training
    batches get a random crop and horizontal flip (:func:`augment_batch`). Keep it True for
    natural images; set it False where a flipped or shifted image is another class (digits).
    ``reads`` says where its images come from (:data:`READS`): ``data_path`` makes the config
    refuse a search without one; ``data_root`` means torchvision's files under ``data_root``.
    ``display`` is how reports name it (default: ``name``); ``note`` a few words for the
    config's help text.
    """
    if not isinstance(augment, bool):
        raise TypeError(f"augment must be True or False, got {augment!r}")
    if reads not in READS:
        raise TypeError(f"reads must be one of {', '.join(READS)}, got {reads!r}")

    def decorator(fn: Loader) -> Loader:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = fn
        DATASET_AUGMENT[name] = augment
        DATASET_INFO[name] = DatasetInfo(augment, reads, display or name, note)
        return fn

    return decorator


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Convert uint8 pixels (0..255) to float32 in [0, 1]."""
    return x.float() / 255.0


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, *, padding: int = AUGMENT_PADDING
) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip of every image of a batch.

    The batched equivalent of torchvision's ``RandomCrop(H, padding=padding)`` followed by
    ``RandomHorizontalFlip()``: each image of the N×C×H×W batch ``x`` is padded with ``padding``
    zero pixels on every side, cropped back to H×W at a random offset in [0, 2·padding] per axis
    (a shift of at most ``padding`` pixels, zero-filled), and mirrored left-right with
    probability 1/2. It works on any dtype (uint8 pixels or [0, 1] floats; zero is black in
    both) and on any device; the result has ``x``'s shape, dtype and device, and every value
    in it is one of ``x``'s pixels or zero.

    The offsets and flips (3 numbers per image) are drawn on the CPU from ``generator``, so the
    same generator state always gives the same batch, whatever the device.
    """
    if x.ndim != 4:
        raise ValueError(f"augment_batch expects an N×C×H×W batch, got shape {tuple(x.shape)}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
    n, c, h, w = x.shape
    shifts = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    rows = shifts[0, :, None] + torch.arange(h)
    cols = shifts[1, :, None] + torch.arange(w)
    # Mirroring the crop is reading its columns backwards, so crop and flip are one gather.
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    width = w + 2 * padding
    flat = (rows[:, :, None] * width + cols[:, None, :]).reshape(n, 1, h * w)
    flat = flat.to(x.device, non_blocking=True).expand(n, c, h * w)
    padded = F.pad(x, (padding, padding, padding, padding))
    # A gather on the flattened image was 3-5x faster than 4-D advanced indexing on a CPU.
    return padded.reshape(n, c, -1).gather(2, flat).reshape(n, c, h, w)


def default_data_root() -> Path:
    """Where datasets live unless ``root`` is given: ``$SEMIROBUST_DATA`` or ``~/.cache/...``."""
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/semirobust_ray/data").expanduser()


def load_dataset(
    name: str,
    *,
    root: str | None = None,
    path: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    download: bool = False,
    image_size: int | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
) -> DataSplits:
    """Load a registered dataset and split it into train / validation / test.

    Args:
        name: a key of :data:`DATASETS` (``digits``, ``npz``, ``cifar10``, ``cifar100``,
            ``imagenette``, ``imagefolder``, and any registered since).
        root: directory of the torchvision datasets (those registered with
            ``reads="data_root"``); defaults to :func:`default_data_root`.
        path: what a dataset registered with ``reads="data_path"`` reads: the ``.npz`` file
            for ``npz``, the image-folder root for ``imagefolder`` (the config's ``data_path``).
        val_fraction: share of the training pool held out, stratified by class, as validation
            split; in [0, 1).
        seed: seeds the validation split and the ``max_train`` subset; the same seed always gives
            identical splits. The test split and ``max_test`` subset do not depend on it.
        download: let torchvision download missing data (needs internet).
        image_size: side length of the returned square images. Images are resized (bilinear,
            antialiased; non-square ones resized on the short side and centre-cropped) when it
            differs from the native size. Default: native size, 160 for Imagenette, 64 for
            image folders.
        max_train: cap on the training pool (train + validation) before the validation split;
            a seeded, class-stratified subset. For quick runs.
        max_test: cap on the test split; a fixed, class-stratified subset.

    Raises:
        DatasetError: with a one-line message for any problem the user can fix.
    """
    _check_load_options(name, val_fraction, max_train, max_test, image_size)
    root_dir = Path(root).expanduser() if root is not None else default_data_root()
    opts = LoadOptions(
        name=name, root=root_dir, path=path, download=bool(download), image_size=image_size
    )
    raw = DATASETS[name](opts)
    splits = _split_raw(name, raw, val_fraction, seed, max_train, max_test)
    if image_size is not None and splits.image_size != image_size:
        splits = _resize_splits(splits, int(image_size))
    return splits


def stratified_subset(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded, class-stratified subset of ``n`` of the labels ``y``.

    Each class contributes in proportion to its share of ``y`` (largest-remainder rounding), so
    a subset of a class-sorted split still covers every class: 30 of 10 balanced classes is 3 of
    each, never the first 30 images. The same ``(y, n, seed)`` always gives the same indices;
    pass :data:`TEST_SEED` for test images so every run seed is scored on the same ones. ``n``
    at or above ``len(y)`` gives every index. Index the images and labels with the result.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DatasetError(f"subset size must be a non-negative integer, got {n!r}")
    if y.ndim != 1:
        raise DatasetError(f"labels must be 1-D, got shape {tuple(y.shape)}")
    _, subset = _stratified_split(y, n, torch.Generator().manual_seed(int(seed)))
    return subset


# --------------------------------------------------------------------------- helpers


def _check_load_options(
    name: str,
    val_fraction: float,
    max_train: int | None,
    max_test: int | None,
    image_size: int | None,
) -> None:
    """Refuse an unknown dataset or an option out of range before anything is read."""
    if name not in DATASETS:
        raise DatasetError(_unknown_name_message("dataset", name, DATASETS))
    if isinstance(val_fraction, bool) or not 0.0 <= float(val_fraction) < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    for key, value in (("max_train", max_train), ("max_test", max_test)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise DatasetError(f"{key} must be a positive integer or None, got {value!r}")
    if image_size is not None and (
        isinstance(image_size, bool) or int(image_size) != image_size or image_size < 1
    ):
        raise DatasetError(f"image_size must be a positive integer or None, got {image_size!r}")


def _split_raw(
    name: str,
    raw: RawDataset,
    val_fraction: float,
    seed: int,
    max_train: int | None,
    max_test: int | None,
) -> DataSplits:
    """A loader's train pool and test set as train / validation / test, at the native size."""
    x_pool, y_pool, train_idx, val_idx = _train_val_indices(raw, val_fraction, seed, max_train)
    x_test, y_test = _test_subset(raw, max_test)
    # Sorted indices keep the original order inside each split, which makes splits easy to
    # compare by eye; shuffling is the data loader's job.
    return DataSplits(
        x_train=x_pool[train_idx].contiguous(),
        y_train=y_pool[train_idx].contiguous(),
        x_val=x_pool[val_idx].contiguous(),
        y_val=y_pool[val_idx].contiguous(),
        x_test=x_test.contiguous(),
        y_test=y_test.contiguous(),
        num_classes=int(raw.num_classes),
        name=name,
        class_names=tuple(raw.class_names),
    )


def _train_val_indices(
    raw: RawDataset, val_fraction: float, seed: int, max_train: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The train pool (capped at ``max_train``) and its train and validation indices.

    One generator seeded with ``seed`` draws the cap's subset first, then the validation split.
    """
    gen = torch.Generator().manual_seed(int(seed))
    x_pool, y_pool = raw.x_train, raw.y_train
    if max_train is not None and max_train < len(y_pool):
        keep, _ = _stratified_split(y_pool, len(y_pool) - max_train, gen)
        x_pool, y_pool = x_pool[keep], y_pool[keep]
    n_val = round(float(val_fraction) * len(y_pool))
    train_idx, val_idx = _stratified_split(y_pool, n_val, gen)
    return x_pool, y_pool, train_idx, val_idx


def _test_subset(raw: RawDataset, max_test: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The test set, capped at ``max_test`` by a subset seeded with :data:`TEST_SEED`."""
    x_test, y_test = raw.x_test, raw.y_test
    if max_test is not None and max_test < len(y_test):
        test_gen = torch.Generator().manual_seed(TEST_SEED)
        keep, _ = _stratified_split(y_test, len(y_test) - max_test, test_gen)
        x_test, y_test = x_test[keep], y_test[keep]
    return x_test, y_test


def _unknown_name_message(kind: str, name: object, valid: Sequence[str]) -> str:
    """One-line 'unknown X' message with the valid names and the closest match."""
    names = sorted(valid)
    msg = f"unknown {kind} {name!r}; valid: {', '.join(names)}"
    return msg + did_you_mean(str(name).lower(), names, cutoff=0.5)


def _stratified_split(
    y: torch.Tensor, n_second: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices of ``y`` into (first, second) with ``len(second) == n_second`` exactly.

    Each class contributes to ``second`` in proportion to its size (largest-remainder rounding,
    ties broken at random), so small splits keep the class balance of the whole.
    """
    # Not sklearn's train_test_split(stratify=...): it refuses a subset smaller than the number
    # of classes (eval_samples=5 of 10 classes) and any class with a single image, both of
    # which this allows, and switching would move every split, and so every cached baseline.
    n = len(y)
    if n_second <= 0:
        return torch.arange(n), torch.empty(0, dtype=torch.long)
    if n_second >= n:
        return torch.empty(0, dtype=torch.long), torch.arange(n)
    classes, counts = torch.unique(y, return_counts=True)
    quota = counts.double() * (n_second / n)
    take = quota.floor().long()
    leftover = n_second - int(take.sum())
    if leftover > 0:
        # Random tie-breaking: add a tiny random jitter before ranking the remainders.
        remainder = quota - take.double() + torch.rand(len(classes), generator=gen) * 1e-9
        take[torch.argsort(remainder, descending=True)[:leftover]] += 1
    second = []
    for cls, k in zip(classes.tolist(), take.tolist(), strict=True):
        members = torch.nonzero(y == cls, as_tuple=False).flatten()
        perm = members[torch.randperm(len(members), generator=gen)]
        second.append(perm[:k])
    second_idx = torch.sort(torch.cat(second)).values
    mask = torch.ones(n, dtype=torch.bool)
    mask[second_idx] = False
    return torch.nonzero(mask, as_tuple=False).flatten(), second_idx


def _resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 N×C×H×W batch to size×size (short side, then centre crop)."""
    if len(x) == 0:
        return torch.empty((0, x.shape[1], size, size), dtype=torch.uint8)
    h, w = x.shape[2], x.shape[3]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    out = []
    # Chunks bound the float32 copy's memory on large datasets.
    for chunk in torch.split(x, 1024):
        f = F.interpolate(
            chunk.float(),
            size=(new_h, new_w),
            mode="bilinear",
            align_corners=False,
            antialias=new_h < h or new_w < w,
        )
        top, left = (new_h - size) // 2, (new_w - size) // 2
        f = f[:, :, top : top + size, left : left + size]
        out.append(f.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def _resize_splits(s: DataSplits, size: int) -> DataSplits:
    return DataSplits(
        x_train=_resize_uint8(s.x_train, size),
        y_train=s.y_train,
        x_val=_resize_uint8(s.x_val, size),
        y_val=s.y_val,
        x_test=_resize_uint8(s.x_test, size),
        y_test=s.y_test,
        num_classes=s.num_classes,
        name=s.name,
        class_names=s.class_names,
    )


def _read_image(path: str | Path, size: int, channels: int) -> np.ndarray:
    """Read an image file as a C×size×size uint8 array (short side resized, centre-cropped)."""
    from PIL import Image

    with Image.open(path) as img:
        # JPEG can decode at 1/2, 1/4, 1/8 scale directly: much faster for full-size Imagenette.
        img.draft("L" if channels == 1 else "RGB", (size, size))
        img = img.convert("L" if channels == 1 else "RGB")
        w, h = img.size
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


# --------------------------------------------------------------------------- digits


# a flipped digit is another digit
@register_dataset("digits", augment=False, reads="bundled", display="Digits", note="offline")
def _load_digits(opts: LoadOptions) -> RawDataset:
    """scikit-learn's bundled 8×8 handwritten digits (1797 images, offline)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16; scale to the uint8 range every other dataset uses.
    x = np.rint(bunch.images.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)
    x_all = torch.from_numpy(x).unsqueeze(1)
    y_all = torch.from_numpy(bunch.target.astype(np.int64))
    gen = torch.Generator().manual_seed(TEST_SEED)
    train_idx, test_idx = _stratified_split(y_all, round(DIGITS_TEST_FRACTION * len(y_all)), gen)
    return RawDataset(
        x_train=x_all[train_idx],
        y_train=y_all[train_idx],
        x_test=x_all[test_idx],
        y_test=y_all[test_idx],
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
    )


# --------------------------------------------------------------------------- npz


@register_dataset("npz", reads="data_path", note="a `.npz` file")
def _load_npz(opts: LoadOptions) -> RawDataset:
    """A .npz file with x_train, y_train, x_test, y_test (and optionally classes)."""
    if not opts.path:
        raise DatasetError(
            "dataset 'npz' needs path: the .npz file with x_train, y_train, x_test, y_test"
        )
    path = Path(opts.path).expanduser()
    if not path.is_file():
        raise DatasetError(f"npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as exc:  # object arrays need pickle, which we refuse for safety
        raise DatasetError(f"cannot read {path} without pickle (object arrays?): {exc}") from None
    except Exception as exc:  # zip/format errors: one line instead of a traceback
        raise DatasetError(f"cannot read {path} as .npz: {exc}") from None

    required = ("x_train", "y_train", "x_test", "y_test")
    missing = [k for k in required if k not in arrays]
    if missing:
        raise DatasetError(
            f"{path.name} is missing arrays {', '.join(missing)} "
            f"(found: {', '.join(sorted(arrays)) or 'none'})"
        )

    x_train = _npz_images(arrays["x_train"], "x_train")
    x_test = _npz_images(arrays["x_test"], "x_test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(
            f"x_train images are {tuple(x_train.shape[1:])} (C,H,W) but x_test images are "
            f"{tuple(x_test.shape[1:])}"
        )
    y_train = _npz_labels(arrays["y_train"], "y_train", len(x_train), "x_train")
    y_test = _npz_labels(arrays["y_test"], "y_test", len(x_test), "x_test")

    class_names: tuple[str, ...] = ()
    if "classes" in arrays:
        classes = arrays["classes"]
        if classes.ndim != 1 or len(classes) == 0:
            raise DatasetError(f"classes must be a non-empty 1-D array, got shape {classes.shape}")
        class_names = tuple(str(c) for c in classes.tolist())
        num_classes = len(class_names)
    else:
        num_classes = int(max(y_train.max(), y_test.max() if len(y_test) else 0)) + 1
    for name, y in (("y_train", y_train), ("y_test", y_test)):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise DatasetError(
                f"{name} has labels outside 0..{num_classes - 1} "
                f"(min {int(y.min())}, max {int(y.max())})"
            )
    return RawDataset(x_train, y_train, x_test, y_test, num_classes, class_names)


def _npz_images(a: np.ndarray, name: str) -> torch.Tensor:
    """Validate one image array and return it as uint8 N×C×H×W."""
    if a.ndim == 3:  # N×H×W grayscale
        a = a[:, None]
    elif a.ndim == 4:
        channels_last = a.shape[3] in (1, 3, 4)
        channels_first = a.shape[1] in (1, 3, 4)
        if channels_last and not (channels_first and a.shape[3] == a.shape[2]):
            a = a.transpose(0, 3, 1, 2)
        elif not channels_first:
            raise DatasetError(
                f"{name} has shape {a.shape}: cannot find the channel axis "
                "(expected N×H×W×C or N×C×H×W with C in 1, 3, 4)"
            )
    else:
        raise DatasetError(
            f"{name} must have 3 or 4 dimensions (N×H×W, N×H×W×C or N×C×H×W), got shape {a.shape}"
        )
    if a.shape[0] == 0:
        raise DatasetError(f"{name} is empty")
    if a.shape[2] != a.shape[3]:
        raise DatasetError(f"{name} images must be square, got H×W = {a.shape[2]}×{a.shape[3]}")

    if a.dtype == np.uint8:
        out = a
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise DatasetError(f"{name} contains non-finite pixel values (NaN or inf)")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            raise DatasetError(f"{name} float pixels must be in [0, 1], got range [{lo:g}, {hi:g}]")
        out = np.rint(a.astype(np.float64) * 255.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise DatasetError(f"{name} integer pixels must be in 0..255, got range [{lo}, {hi}]")
        out = a.astype(np.uint8)
    else:
        raise DatasetError(
            f"{name} has dtype {a.dtype}; expected uint8 (0..255) or float (0..1) pixels"
        )
    return torch.from_numpy(np.ascontiguousarray(out))


def _npz_labels(a: np.ndarray, name: str, n: int, x_name: str) -> torch.Tensor:
    if a.ndim != 1:
        raise DatasetError(f"{name} must be 1-D, got shape {a.shape}")
    if len(a) != n:
        raise DatasetError(f"{name} has {len(a)} labels but {x_name} has {n} images")
    if not np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.floating) and np.isfinite(a).all() and (a == np.rint(a)).all():
            a = a.astype(np.int64)
        else:
            raise DatasetError(f"{name} must hold integer class labels, got dtype {a.dtype}")
    if len(a) and int(a.min()) < 0:
        raise DatasetError(f"{name} has negative labels (min {int(a.min())})")
    return torch.from_numpy(a.astype(np.int64))


# --------------------------------------------------------------------------- torchvision


def _torchvision_error(
    label: str, root: Path, what: str, exc: BaseException, download: bool
) -> DatasetError:
    """One-line 'not found' / 'download failed' message that says how to get the data."""
    if download:
        return DatasetError(
            f"{label} download into {root} failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no details'}); check the internet "
            f"connection or place {what} under {root} yourself"
        )
    return DatasetError(
        f"{label} not found under {root}; pass download: true (needs internet) or place {what} there "
        f"(root is set by the data_root config key or ${DATA_ROOT_ENV})"
    )


def _load_cifar(opts: LoadOptions, cls_name: str, label: str, folder: str) -> RawDataset:
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(str(opts.root), train=True, download=opts.download)
        test = cls(str(opts.root), train=False, download=opts.download)
    except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError variously
        raise _torchvision_error(label, opts.root, folder, exc, opts.download) from None

    def convert(ds) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        return x, torch.as_tensor(ds.targets, dtype=torch.int64)

    x_train, y_train = convert(train)
    x_test, y_test = convert(test)
    return RawDataset(x_train, y_train, x_test, y_test, len(train.classes), tuple(train.classes))


@register_dataset("cifar10", reads="data_root", display="CIFAR-10")
def _load_cifar10(opts: LoadOptions) -> RawDataset:
    """CIFAR-10 via torchvision (32×32 RGB, 10 classes)."""
    return _load_cifar(opts, "CIFAR10", "CIFAR-10", "cifar-10-batches-py")


@register_dataset("cifar100", reads="data_root", display="CIFAR-100")
def _load_cifar100(opts: LoadOptions) -> RawDataset:
    """CIFAR-100 via torchvision (32×32 RGB, 100 fine classes)."""
    return _load_cifar(opts, "CIFAR100", "CIFAR-100", "cifar-100-python")


def _decode_samples(
    samples: Sequence[tuple[str, int]], size: int, channels: int, label: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode (path, label) samples into a uint8 N×C×size×size tensor and labels."""
    x = np.empty((len(samples), channels, size, size), dtype=np.uint8)
    y = np.empty(len(samples), dtype=np.int64)
    for i, (file, target) in enumerate(samples):
        try:
            x[i] = _read_image(file, size, channels)
        except Exception as exc:
            raise DatasetError(f"{label}: cannot read image {file}: {exc}") from None
        y[i] = target
    return torch.from_numpy(x), torch.from_numpy(y)


def _decode_dataset(ds: Any, size: int, label: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack a torchvision dataset whose loader returns C×size×size uint8 arrays."""
    x = np.empty((len(ds), 3, size, size), dtype=np.uint8)
    y = np.empty(len(ds), dtype=np.int64)
    for i in range(len(ds)):
        try:
            x[i], y[i] = ds[i]
        except Exception as exc:
            raise DatasetError(f"{label}: cannot read image {i}: {exc}") from None
    return torch.from_numpy(x), torch.from_numpy(y)


@register_dataset("imagenette", reads="data_root", display="Imagenette")
def _load_imagenette(opts: LoadOptions) -> RawDataset:
    """Imagenette via torchvision (10 ImageNet classes), resized to ``image_size`` (default 160).

    The smallest published variant that is at least ``image_size`` is used: 160px for sizes up
    to 160, 320px up to 320, the full-size images above. Imagenette's ``val`` split is the test
    split. The paper used 224×224; pass ``image_size=224`` to match it.
    """
    import torchvision

    size = opts.image_size or DEFAULT_IMAGENETTE_SIZE
    variant = "160px" if size <= 160 else "320px" if size <= 320 else "full"
    folder = {"160px": "imagenette2-160", "320px": "imagenette2-320", "full": "imagenette2"}[
        variant
    ]
    # Decoding straight to small arrays keeps memory at the final size, not the JPEGs' size.
    loader = functools.partial(_read_image, size=size, channels=3)
    try:
        train = torchvision.datasets.Imagenette(
            str(opts.root), split="train", size=variant, download=opts.download, loader=loader
        )
        # One archive holds both splits, so the train call above has already downloaded it.
        test = torchvision.datasets.Imagenette(
            str(opts.root), split="val", size=variant, loader=loader
        )
    except Exception as exc:
        raise _torchvision_error("Imagenette", opts.root, folder, exc, opts.download) from None
    x_train, y_train = _decode_dataset(train, size, "Imagenette")
    x_test, y_test = _decode_dataset(test, size, "Imagenette")
    names = tuple(c[0] for c in train.classes)
    return RawDataset(x_train, y_train, x_test, y_test, len(names), names)


# --------------------------------------------------------------------------- imagefolder


@register_dataset("imagefolder", reads="data_path", note="a folder of images")
def _load_imagefolder(opts: LoadOptions) -> RawDataset:
    """A tree ``root/train/<class>/*.png`` and ``root/test/<class>/*`` (``val/`` also accepted).

    ``root`` is ``path`` (the config's ``data_path``), like the ``npz`` file: a user's own data,
    not a torchvision download under ``data_root``. Images are converted to RGB and resized to
    ``image_size`` (default 64). Class indices follow the sorted class-folder names of
    ``train``; ``test`` may only use those classes.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    layout = "expected root/train/<class>/<image> and root/test/<class>/<image>"
    if not opts.path:
        raise DatasetError(f"dataset 'imagefolder' needs path: the image-folder root; {layout}")
    root = Path(opts.path).expanduser()
    train_dir = root / "train"
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist; {layout}")
    if not train_dir.is_dir() or test_dir is None:
        missing = "train" if not train_dir.is_dir() else "test (or val)"
        raise DatasetError(f"image folder {root} has no {missing} directory; {layout}")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise DatasetError(f"{train_dir} has no class sub-directories; {layout}")
    extra = sorted(d.name for d in test_dir.iterdir() if d.is_dir() and d.name not in classes)
    if extra:
        raise DatasetError(f"{test_dir} has classes not present in {train_dir}: {', '.join(extra)}")
    class_to_idx = {c: i for i, c in enumerate(classes)}
    extensions = tuple(sorted(set(IMG_EXTENSIONS) | set(_IMAGE_SUFFIXES)))
    samples = {}
    for split, directory in (("train", train_dir), ("test", test_dir)):
        try:
            samples[split] = make_dataset(
                str(directory), class_to_idx, extensions=extensions, allow_empty=True
            )
        except Exception as exc:
            raise DatasetError(f"cannot scan {directory}: {exc}") from None
        if not samples[split]:
            raise DatasetError(
                f"{directory} contains no images ({', '.join(_IMAGE_SUFFIXES)}); {layout}"
            )
    size = opts.image_size or DEFAULT_IMAGEFOLDER_SIZE
    x_train, y_train = _decode_samples(samples["train"], size, 3, "imagefolder")
    x_test, y_test = _decode_samples(samples["test"], size, 3, "imagefolder")
    return RawDataset(x_train, y_train, x_test, y_test, len(classes), tuple(classes))
