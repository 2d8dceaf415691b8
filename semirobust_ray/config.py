"""The one place that holds every option of a search, its default, and its validation.

A search-space YAML file and ``--set key=value`` overrides both become an
:class:`ExperimentConfig`; every key is checked before any data is loaded or any model is built,
and each mistake is reported as a one-line :class:`ConfigError` that names the key, the bad value
and what would be valid.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from semirobust_ray.answer import TARGETS
from semirobust_ray.names import did_you_mean, unknown_keys

SEARCH_ALGORITHMS = ("grid", "bisection", "optuna")
SCHEDULERS = ("none", "asha")
BASELINE_INITS = ("scratch", "regular")
MI_ESTIMATORS = ("edge", "ksg")
DEVICES = ("auto", "cpu", "cuda")
TRAIN_METHODS = ("standard", "fast", "free")
PRECISIONS = ("fp32", "bf16")


class ConfigError(ValueError):
    """A bad key or value in a search configuration; the message is a single line."""


def default_cache_dir() -> str:
    """Where baselines are cached unless ``cache_dir`` says otherwise.

    A leading ``~`` stays in the config: it is expanded by the process that uses the cache (a
    Ray worker on another node has another home directory than the driver).
    """
    base = os.environ.get("SEMIROBUST_CACHE", "~/.cache/semirobust_ray")
    return f"{base.rstrip('/')}/baselines"


@dataclass(frozen=True)
class ExperimentConfig:
    """Every option of Algorithm 1 and its search; names follow the paper.

    Accuracies and the tolerance ``k`` are fractions in [0, 1]. ``eps`` and ``alpha`` are in
    [0, 1] pixel units (8/255 is the paper's smallest budget). Defaults are the authors' released
    settings (E = 10, T = 10, batch 512, SGD lr 0.01, momentum 0.9, weight decay 5e-4, k = 0.05,
    PGD eps 8/255, step 1/255, 10 steps).
    """

    # what is searched
    # a registry name, timm:NAME or package.module:factory (see semirobust_ray.models)
    model: str = "smallcnn"
    # keyword arguments for a timm:NAME or package.module:factory model (registry models: none)
    model_kwargs: dict[str, Any] | None = None
    width: float = 1.0  # width multiplier for every hidden layer (<1: a narrower network)
    dataset: str = "digits"
    data_path: str | None = None  # npz file or imagefolder directory
    data_root: str | None = None  # torchvision datasets (cifar10, cifar100, imagenette)
    download: bool = False
    image_size: int | None = None
    val_fraction: float = 0.1
    max_train: int | None = None
    max_test: int | None = None
    augment: bool | None = None  # random crop + flip in training; None: the dataset's default
    # the threat model: training attack and the attack Acc*, Acc_sr, Acc are measured with
    attack: str = "pgd"
    eps: float = 8 / 255
    alpha: float = 1 / 255
    steps: int = 10
    eval_attack: str | None = None  # None: the training attack
    stop_attack: str | None = None  # per-epoch k-stop check on val; None: see stop_attack_name
    eval_samples: int | None = None  # val/test images attacked per evaluation (stratified)
    eval_batch_size: int | None = None  # images per attack call when evaluating; None: batch_size
    # Algorithm 1
    # What the search minimises: "robust_fa", the smallest robust f*_a (the largest |f_b| that
    # reaches Acc* - k: the paper's question), or "fb", the smallest reaching |f_b|.
    minimise: str = "robust_fa"
    split_depths: tuple[int, ...] | None = None  # candidate |f_b|; None: every depth 1..n
    epochs: int = 10  # E
    k: float = 0.05
    seeds: int = 10  # T
    seed: int = 0
    train_method: str = "standard"
    precision: str = "fp32"  # "bf16": autocast the training epochs (attack steps included)
    # true: deterministic cuDNN/cuBLAS and no TF32, for bit-for-bit GPU reruns (slower; no
    # effect on CPU numbers); see semirobust_ray.training.set_deterministic
    deterministic: bool = False
    # optimisation
    batch_size: int = 512
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # the baseline (regular then adversarial training of the full network)
    baseline_epochs: int = 10
    baseline_adv_epochs: int = 10
    baseline_init: str = "scratch"
    # networks you already have instead of training them: robust:, regular: (robustbench:NAME,
    # a state-dict path or URI), model_dir:, download: (see semirobust_ray.pretrained)
    baseline: dict[str, Any] | None = None
    cache_dir: str = field(default_factory=default_cache_dir)
    # mutual information (the rho values)
    mi: bool = True
    mi_estimator: str = "edge"
    mi_proj_dim: int | None = None
    mi_samples: int | None = None
    # search and resources
    search: str = "grid"
    scheduler: str = "none"
    device: str = "auto"
    gpus_per_trial: float = 0.0
    cpus_per_trial: int = 1
    mi_cpus: int = 1
    max_concurrent: int | None = None
    num_samples: int | None = None  # optuna: trials to sample (default T x depths / 2)
    max_failures: int = 2

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ExperimentConfig:
        """Build a config from user keys, rejecting unknown ones with the closest valid key."""
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"a config must be a mapping of key: value, got {type(values).__name__}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown config key{'s' if len(unknown) > 1 else ''} "
                f"{unknown_keys(unknown, known)}; "
                f"valid keys: {', '.join(sorted(known))}"
            )
        values = dict(values)
        if isinstance(values.get("split_depths"), list):
            values["split_depths"] = tuple(values["split_depths"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-serialisable values."""
        out = dataclasses.asdict(self)
        if out["split_depths"] is not None:
            out["split_depths"] = list(out["split_depths"])
        return out

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A validated copy with ``changes`` applied."""
        return ExperimentConfig.from_dict({**self.to_dict(), **changes})

    @property
    def augment_enabled(self) -> bool:
        """Whether training batches get a random crop (4-pixel zero padding) and horizontal flip:
        ``augment`` when set, else the dataset's registered default (on for natural images,
        off for ``digits``, where a flipped digit is another digit)."""
        if self.augment is not None:
            return self.augment
        from semirobust_ray.data import DATASET_AUGMENT

        return DATASET_AUGMENT[self.dataset]

    @property
    def eval_attack_name(self) -> str:
        """The attack Acc*, Acc_sr and Acc are measured with."""
        return self.eval_attack or self.attack

    @property
    def eval_batch(self) -> int:
        """Images per attack call in evaluations: fewer, larger calls cut AutoAttack's
        per-iteration overhead, which dominates on small models."""
        return self.eval_batch_size or self.batch_size

    @property
    def stop_attack_name(self) -> str:
        """The attack of the per-epoch validation check against Acc* - k.

        Unset, it is the evaluation attack, except that an AutoAttack evaluation is checked with
        APGD-CE (AutoAttack's first stage, ``steps`` iterations): a full AutoAttack every epoch
        costs more than the epoch, and PGD's check passed VGG16 trials that AutoAttack then
        failed (BENCHMARKS.md, "Stop attack").
        """
        if self.stop_attack:
            return self.stop_attack
        return "apgd-ce" if self.eval_attack_name == "autoattack" else self.eval_attack_name


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are YAML (``split_depths=[2,4]``, ``eps=0.03``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set '{pair}' is not of the form key=value")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"--set {pair}: value is not valid YAML ({problem})") from None
    return out


def config_values(path: str | os.PathLike | None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The keys a search-space YAML file (``yaml.safe_load``) and ``--set`` overrides name, not
    yet validated (a resume compares them with the stored config)."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or "parse error"
            raise ConfigError(f"config file '{path}' is not valid YAML{where}: {problem}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of key: value")
        values.update(loaded)
    for key, value in parse_overrides(overrides).items():
        section, dot, sub = key.partition(".")
        if not dot:
            values[key] = value
            continue
        # baseline.robust=..., model_kwargs.depth=...: one entry of a mapping-valued key.
        current = values.get(section)
        if current is not None and not isinstance(current, Mapping):
            raise ConfigError(f"--set {key}: '{section}' is not a mapping in this config")
        values[section] = {**(current or {}), sub: value}
    return values


def load_config(path: str | os.PathLike | None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read a search-space YAML file, apply ``--set`` overrides, validate."""
    return ExperimentConfig.from_dict(config_values(path, overrides))


#: The search spaces shipped inside the package (the quickstart, the paper's settings).
SEARCH_SPACES = Path(__file__).resolve().parent / "search_spaces"
DEFAULT_CONFIG = SEARCH_SPACES / "quickstart.yaml"


def config_path(given: str | None) -> Path:
    """``--config``: a YAML file, or the name of a bundled search space (``paper_vgg16_cifar10``);
    none: the quickstart."""
    if given is None:
        return DEFAULT_CONFIG
    path = Path(given).expanduser()
    bundled = SEARCH_SPACES / f"{given.removesuffix('.yaml')}.yaml"
    if not path.is_file() and "/" not in given and bundled.is_file():
        return bundled
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in SEARCH_SPACES.glob("*.yaml")))
        raise ConfigError(f"config file '{given}' does not exist; bundled search spaces: {names}")
    return path


# --- validation ---------------------------------------------------------------------------


def _choice(name: str, value: Any, valid: Iterable[str]) -> None:
    valid = sorted(valid)
    if value not in valid:
        hint = did_you_mean(value, valid)
        raise ConfigError(f"{name}: unknown value '{value}'{hint}; valid: {', '.join(valid)}")


def _number(
    name: str,
    value: Any,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> None:
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        raise ConfigError(f"{name}: expected {kind}, got {value!r}")
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    rng = f"{lo}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}{hi}"
    if low is not None and (value < low or (low_open and value == low)):
        raise ConfigError(f"{name}={value} is out of range: valid {rng}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ConfigError(f"{name}={value} is out of range: valid {rng}")


def _validate_model_kwargs(kwargs: Any, *, external: bool, model: str) -> None:
    if kwargs is None:
        return
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(f"model_kwargs: expected a mapping of name: value, got {kwargs!r}")
    if kwargs and not external:
        raise ConfigError(
            f"model_kwargs {sorted(kwargs)}: registry model '{model}' takes none; they are for "
            "timm:NAME and package.module:factory models"
        )
    reserved = sorted({"num_classes", "image_size", "in_channels", "in_chans"} & set(kwargs))
    if reserved:
        raise ConfigError(
            f"model_kwargs {reserved}: set by the dataset, not by model_kwargs (use image_size "
            "or the dataset's own classes and channels)"
        )
    try:
        # The kwargs go into the baseline cache key and the stored config, both JSON.
        json.dumps(dict(kwargs), sort_keys=True)
    except (TypeError, ValueError):
        raise ConfigError(
            f"model_kwargs: values must be plain YAML (numbers, strings, lists), got {kwargs!r}"
        ) from None


def _validate(c: ExperimentConfig) -> None:
    # Registries are imported here, not at module level, so that reading a config stays cheap.
    from semirobust_ray.attacks import ATTACKS
    from semirobust_ray.data import DATASETS
    from semirobust_ray.models import is_external, model_spec_problem

    for name in ("model", "dataset", "attack"):
        if not isinstance(getattr(c, name), str):
            raise ConfigError(f"{name}: expected a name, got {getattr(c, name)!r}")
    # The form only: a user's module is imported where the model is built (Experiment
    # preparation on the driver reports an import error), so that every Ray worker, which
    # re-validates the config, accepts it before it has imported anything.
    problem = model_spec_problem(c.model, "value")
    if problem is not None:
        raise ConfigError(f"model: {problem}")
    _validate_model_kwargs(c.model_kwargs, external=is_external(c.model), model=c.model)
    if c.width != 1 and is_external(c.model):
        raise ConfigError(
            f"width={c.width}: only registry models can be narrowed, not '{c.model}' "
            "(pass its size through model_kwargs instead)"
        )
    _choice("dataset", c.dataset, DATASETS)
    _choice("attack", c.attack, ATTACKS)
    for name in ("eval_attack", "stop_attack"):
        if getattr(c, name) is not None:
            _choice(name, getattr(c, name), ATTACKS)
    _choice("minimise", c.minimise, TARGETS)
    _choice("search", c.search, SEARCH_ALGORITHMS)
    _choice("scheduler", c.scheduler, SCHEDULERS)
    _choice("baseline_init", c.baseline_init, BASELINE_INITS)
    _choice("mi_estimator", c.mi_estimator, MI_ESTIMATORS)
    _choice("device", c.device, DEVICES)
    _choice("train_method", c.train_method, TRAIN_METHODS)
    _choice("precision", c.precision, PRECISIONS)
    for name in ("download", "mi", "deterministic"):
        if not isinstance(getattr(c, name), bool):
            raise ConfigError(f"{name}: expected true or false, got {getattr(c, name)!r}")
    if c.augment is not None and not isinstance(c.augment, bool):
        raise ConfigError(
            f"augment: expected true, false or null (the dataset's default), got {c.augment!r}"
        )
    for name in ("data_path", "data_root"):
        value = getattr(c, name)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name}: expected a path, got {value!r}")
    if c.dataset in ("npz", "imagefolder") and not c.data_path:
        raise ConfigError(f"dataset '{c.dataset}' needs data_path (the file or directory to read)")
    _number("width", c.width, low=0, high=1, low_open=True)
    _number("eps", c.eps, low=0, high=1, low_open=True)
    _number("alpha", c.alpha, low=0, high=1, low_open=True)
    _number("steps", c.steps, integer=True, low=1)
    _number("epochs", c.epochs, integer=True, low=1)
    _number("k", c.k, low=0, high=1, high_open=True)
    _number("seeds", c.seeds, integer=True, low=1)
    _number("seed", c.seed, integer=True, low=0, high=2**31 - 1)
    _number("batch_size", c.batch_size, integer=True, low=1)
    _number("lr", c.lr, low=0, low_open=True)
    _number("momentum", c.momentum, low=0, high=1, high_open=True)
    _number("weight_decay", c.weight_decay, low=0)
    _number("baseline_epochs", c.baseline_epochs, integer=True, low=1)
    _number("baseline_adv_epochs", c.baseline_adv_epochs, integer=True, low=1)
    _number("val_fraction", c.val_fraction, low=0, high=1, low_open=True, high_open=True)
    _number("image_size", c.image_size, integer=True, low=8, optional=True)
    for name in (
        "max_train",
        "max_test",
        "eval_samples",
        "eval_batch_size",
        "mi_samples",
        "max_concurrent",
        "num_samples",
    ):
        _number(name, getattr(c, name), integer=True, low=1, optional=True)
    _number("mi_proj_dim", c.mi_proj_dim, integer=True, low=1, optional=True)
    _number("gpus_per_trial", c.gpus_per_trial, low=0)
    _number("cpus_per_trial", c.cpus_per_trial, integer=True, low=1)
    _number("mi_cpus", c.mi_cpus, integer=True, low=0)
    _number("max_failures", c.max_failures, integer=True, low=0)
    if c.split_depths is not None:
        depths = c.split_depths
        if not isinstance(depths, tuple) or not depths:
            raise ConfigError(
                f"split_depths: expected a non-empty list of integers, got {depths!r}"
            )
        for d in depths:
            _number("split_depths entry", d, integer=True, low=1)
        if len(set(depths)) != len(depths):
            raise ConfigError(f"split_depths: {list(depths)} lists a depth twice")
    if c.baseline is not None:
        from semirobust_ray.pretrained import normalised_section, section_problem

        problem = section_problem(c.baseline)
        if problem is not None:
            raise ConfigError(f"baseline: {problem}")
        # Defaults filled in, so the stored config says which networks were used.
        object.__setattr__(c, "baseline", normalised_section(c.baseline))
    if not isinstance(c.cache_dir, str) or not c.cache_dir:
        raise ConfigError(f"cache_dir: expected a directory path, got {c.cache_dir!r}")
