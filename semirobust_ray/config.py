"""The one place that holds every option of a search: its type, default, valid values and help.

:class:`ExperimentConfig` is a pydantic schema. A search-space YAML file and ``--set key=value``
overrides both become one; every key is checked before any data is loaded or any model is built,
and each mistake is reported as a one-line :class:`ConfigError` that names the key, the bad value
and what would be valid. The README's configuration table and the ``--help`` key list are
generated from the schema (:mod:`semirobust_ray.config_doc`); the help of a key whose values
are registry names holds placeholders such as ``{models}`` that :func:`key_help` fills from the
registries themselves, so no list of names is ever typed twice.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from semirobust_ray.answer import TARGETS
from semirobust_ray.names import RENAMED_KEYS, did_you_mean, unknown_keys
from semirobust_ray.strategies import STRATEGIES, strategy_words

#: ``search`` values: the entries of the strategy table (:mod:`semirobust_ray.strategies`).
SEARCH_ALGORITHMS = tuple(STRATEGIES)
SCHEDULERS = ("none", "asha")
BASELINE_INITS = ("scratch", "regular")
MI_ESTIMATORS = ("edge", "ksg")
DEVICES = ("auto", "cpu", "cuda")
TRAIN_METHODS = ("standard", "fast", "free")
PRECISIONS = ("fp32", "bf16")

#: Keys whose values are names in a registry (models, datasets, attacks) that a user can extend;
#: they are checked against the registries where they are set, on the driver (see ``replace``).
REGISTRY_KEYS = ("model", "dataset", "attack", "eval_attack", "stop_attack")


logger = logging.getLogger(__name__)

#: What a renamed key means, for the one-line warning about its old name.
_RENAME_MEANING = {"trials_per_depth": "T, trials per split depth"}
#: The old key names this process has already warned about (one line each, not one per use).
_WARNED_RENAMES: set[str] = set()


class ConfigError(ValueError):
    """A bad key or value in a search configuration; the message is a single line."""


def current_names(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (keys a user gave: a config file, ``--set``, keyword arguments) with every
    renamed key (:data:`~semirobust_ray.names.RENAMED_KEYS`, e.g. ``seeds``) under its current
    name. The old name still works; the first use in a process logs one warning line. Both
    names with different values are a :class:`ConfigError`."""
    out = dict(values)
    for old, new in RENAMED_KEYS.items():
        if old not in out:
            continue
        value = out.pop(old)
        if new in out and out[new] != value:
            raise ConfigError(
                f"config keys '{old}' ({value!r}) and '{new}' ({out[new]!r}) name the same "
                f"setting, '{old}' being the old name of '{new}': give only '{new}'"
            )
        out[new] = value
        if old not in _WARNED_RENAMES:
            _WARNED_RENAMES.add(old)
            logger.warning(
                "config key '%s' is now '%s' (%s); '%s' still works",
                old,
                new,
                _RENAME_MEANING.get(new, new),
                old,
            )
    return out


def default_cache_dir() -> str:
    """Where baselines are cached unless ``cache_dir`` says otherwise.

    A leading ``~`` stays in the config: it is expanded by the process that uses the cache (a
    Ray worker on another node has another home directory than the driver).
    """
    base = os.environ.get("SEMIROBUST_CACHE", "~/.cache/semirobust_ray")
    return f"{base.rstrip('/')}/baselines"


def _key(default: Any, help: str, *, shown: str | None = None, **constraints: Any) -> Any:
    """One config key: its default, one-line ``help`` and range ``constraints`` (``gt``, ``le``,
    ...); ``shown`` is how the documentation writes the default when its value would mislead
    (``8/255``, a path that depends on the environment)."""
    extra = {"shown": shown} if shown is not None else None
    factory = default if callable(default) else None
    if factory is not None:
        return Field(default_factory=factory, description=help, json_schema_extra=extra)
    return Field(default, description=help, json_schema_extra=extra, **constraints)


def _tuple(value: Any) -> Any:
    # YAML and JSON have lists, not tuples; the config keeps a tuple so that it stays immutable.
    return tuple(value) if isinstance(value, list) else value


Name = str
Depth = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=1)]
Depths = Annotated[tuple[Depth, ...], BeforeValidator(_tuple), Field(min_length=1)]


class ExperimentConfig(BaseModel):
    """Every option of Algorithm 1 and its search; names follow the paper.

    Accuracies and the tolerance ``k`` are fractions in [0, 1]. ``eps`` and ``alpha`` are in
    [0, 1] pixel units (8/255 is the paper's smallest budget). Defaults are the authors' released
    settings (E = 10, T = 10, batch 512, SGD lr 0.01, momentum 0.9, weight decay 5e-4, k = 0.05,
    PGD eps 8/255, step 1/255, 10 steps). The field order is the documentation's order.
    """

    # strict: a YAML `true` is not an epoch count, nor `1` a boolean, nor "0.1" a rate.
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", validate_default=False)

    # what is searched
    model: Name = _key(
        "smallcnn",
        "{models}, or `timm:NAME`, `robustbench:NAME` or your own `package.module:factory` "
        "(README: Your own model); torchvision's networks are built in their 32×32 variants at "
        "image size ≤ 64",
    )
    model_kwargs: dict[str, Any] | None = _key(
        None,
        "keyword arguments for a `timm:NAME` or `package.module:factory` model, e.g. "
        "`{depth: 6}` (registry models take none); part of the baseline's cache key",
    )
    width: float = _key(
        1.0,
        "width multiplier for every hidden layer of a registry model (same depth and split "
        "depths, less compute)",
        gt=0,
        le=1,
    )
    dataset: Name = _key("digits", "{datasets}; or register your own (docs/extending.md)")
    data_path: str | None = _key(
        None,
        "what a dataset that reads a path ({path_datasets}) reads: the `.npz` file (x_train, "
        "y_train, x_test, y_test) or image-folder root (`train/<class>/*.png`, "
        "`test/<class>/*.png`)",
    )
    data_root: str | None = _key(
        None,
        "directory of torchvision datasets ({root_datasets})",
        shown="~/.cache/semirobust_ray/data",
    )
    download: bool = _key(False, "fetch a torchvision dataset into `data_root` if missing")
    image_size: int | None = _key(None, "resize images to this side length", ge=8)
    val_fraction: float = _key(
        0.1, "share of the training images held out for validation (stratified)", gt=0, lt=1
    )
    max_train: int | None = _key(
        None, "a seeded, class-stratified subset of the training images", ge=1
    )
    max_test: int | None = _key(None, "a seeded, class-stratified subset of the test images", ge=1)
    augment: bool | None = _key(
        None,
        "random crop (4-pixel zero padding) and horizontal flip of every training batch, as "
        "the authors train; unset: on for natural images, off for `digits` (a flipped digit is "
        "another digit)",
        shown="the dataset's",
    )
    # the threat model: training attack and the attack Acc*, Acc_sr, Acc are measured with
    attack: Name = _key(
        "pgd",
        "training attack: {attacks}, `torchattacks:NAME` (any torchattacks attack) or your own "
        "`package.module:Class` (docs/extending.md); {eval_only_attacks} return images they "
        "cannot break unperturbed, so they are meant for `eval_attack` / `stop_attack`",
    )
    eps: float = _key(
        8 / 255,
        "L∞ budget (paper: 8, 16, 32 ÷ 255)",
        shown="8/255",
        gt=0,
        le=1,
        allow_inf_nan=False,
    )
    alpha: float = _key(1 / 255, "attack step size", shown="1/255", gt=0, le=1, allow_inf_nan=False)
    steps: int = _key(10, "attack iterations (paper: 10, 20, 36)", ge=1)
    eval_attack: Name | None = _key(
        None,
        "attack Acc*, Acc_sr and Acc are measured with (Table 1: `autoattack`); any value "
        "`attack` takes",
        shown="the training attack",
    )
    stop_attack: Name | None = _key(
        None,
        "attack of the per-epoch validation check against Acc*_val − k; unset: `apgd-ce` when "
        "`eval_attack` is `autoattack`, else `eval_attack` (BENCHMARKS.md, Stop attack)",
        shown="see help",
    )
    attack_kwargs: dict[str, dict[str, Any]] | None = _key(
        None,
        "options of an attack's own, by attack: `{pgd: {random_start: false}, "
        '"torchattacks:MIFGSM": {decay: 0.5}}`; an attack gets its entry wherever it is used '
        "(`attack`, `eval_attack`, `stop_attack`); part of the baseline key",
    )
    eval_samples: int | None = _key(
        None,
        "cap on test images per robust evaluation (Acc*, Acc_sr, Acc): a class-stratified "
        "subset, the same test images for every `seed`",
        shown="all",
        ge=1,
    )
    val_samples: int | None = _key(
        None,
        "cap on the validation images of Acc*_val and the per-epoch check (a class-stratified "
        "subset drawn with `seed`); fewer images make the check noisier (README)",
        shown="all",
        ge=1,
    )
    test_eval: Literal["best", "all"] = _key(
        "best",
        "which trials get the test-set Acc and ρ: `best`, each depth's trial with the best "
        "validation accuracy, after the search; `all`, every trial (costs a test attack and "
        "MI per trial)",
    )
    eval_batch_size: int | None = _key(
        None,
        "images per attack call in evaluations (one large call cuts AutoAttack's overhead); "
        "part of the baseline key",
        shown="batch_size",
        ge=1,
    )
    # Algorithm 1
    minimise: Literal[TARGETS] = _key(
        "robust_fa",
        "the answer: `robust_fa`, the smallest robust f*_a (the largest reaching |f_b|: the "
        "paper's question), or `fb`, the smallest reaching |f_b|",
    )
    split_depths: Depths | None = _key(None, "candidate |f_b| values", shown="every 1..n")
    epochs: int = _key(10, "E: adversarial training epochs of f_b per trial", ge=1)
    k: float = _key(
        0.05,
        "tolerance: a trial reaches when its validation robust accuracy is within k of "
        "Acc*_val, counted in whole images (a gap of at most ⌊k · N⌋ of N)",
        ge=0,
        lt=1,
        allow_inf_nan=False,
    )
    trials_per_depth: int = _key(
        10, "T: trials per split depth (`grid`, `bisection`); formerly `seeds`", ge=1
    )
    seed: int = _key(
        0,
        "fixes data order, augmentation, initialisation and attacks",
        ge=0,
        le=2**31 - 1,
    )
    train_method: Literal[TRAIN_METHODS] = _key(
        "standard",
        "trial training: `standard` (the attack), `fast` (FGSM with random start; 0.29 of the "
        "training time, BENCHMARKS.md), `free` (m = 4 replays)",
    )
    precision: Literal[PRECISIONS] = _key(
        "fp32",
        "`bf16` autocasts training epochs, attack steps included (1.9× on a bf16-capable CPU, "
        "BENCHMARKS.md); changes the arithmetic",
    )
    deterministic: bool = _key(
        False,
        "bit-for-bit GPU reruns: deterministic cuDNN and cuBLAS, no TF32 (slower on a GPU, a "
        "no-op on a CPU; semirobust_ray.training.set_deterministic); part of the baseline key",
    )
    # optimisation
    batch_size: int = _key(512, "SGD batch size", ge=1)
    lr: float = _key(0.01, "SGD learning rate", gt=0, allow_inf_nan=False)
    momentum: float = _key(0.9, "SGD momentum", ge=0, lt=1, allow_inf_nan=False)
    weight_decay: float = _key(5e-4, "SGD weight decay", ge=0, allow_inf_nan=False)
    # the baseline (regular then adversarial training of the full network)
    baseline_epochs: int = _key(10, "regular training epochs of the baseline", ge=1)
    baseline_adv_epochs: int = _key(10, "adversarial training epochs of the baseline (Acc*)", ge=1)
    baseline_init: Literal[BASELINE_INITS] = _key(
        "scratch", "adversarial baseline trained from `scratch` or from the `regular` weights"
    )
    baseline: dict[str, Any] | None = _key(
        None,
        "the robust and regular networks instead of training them: `robust:`, `regular:` "
        "(`robustbench:NAME` or a state-dict path/URI), `model_dir:`, `download:` (README: A "
        "robust network you already have)",
    )
    cache_dir: str = _key(
        default_cache_dir,
        "baseline cache on each node (env `SEMIROBUST_CACHE` moves it; `~` is expanded on the "
        "node that uses it); a search keeps its own copy in its storage",
        shown="~/.cache/semirobust_ray/baselines",
    )
    # mutual information (the rho values)
    mi: bool = _key(True, "measure ρ (class-conditional MI between consecutive layers)")
    mi_estimator: Literal[MI_ESTIMATORS] = _key("edge", "MI estimator: `edge` or `ksg`")
    mi_proj_dim: int | None = _key(
        None, "random projection size of layer outputs", shown="auto", ge=1
    )
    mi_samples: int | None = _key(
        None, "test images ρ is measured on (a class-stratified subset)", shown="all", ge=1
    )
    # search and resources
    search: Literal[SEARCH_ALGORITHMS] = _key(
        "grid",
        "{strategies} (README: Searches)",
    )
    reach_probability: float = _key(
        0.5,
        "q: a depth reaches when one trial's probability p(d) of coming within k of Acc* is at "
        "least q (under a monotone fit across depths)",
        gt=0,
        lt=1,
        allow_inf_nan=False,
    )
    answer_width: int | None = _key(
        None,
        "adaptive: stop once the answer's 90 % interval spans at most this many candidate steps",
        shown="max(1, candidates / 10)",
        ge=0,
    )
    max_trials: int | None = _key(
        None,
        "adaptive: the trial budget; the answer is then reported with the interval reached",
        shown="max(16, 2 × candidates)",
        ge=1,
    )
    scheduler: Literal[SCHEDULERS] = _key("none", "`asha` stops trials that fall behind")
    device: Literal[DEVICES] = _key(
        "auto",
        "resolved on the node that computes (`cuda` needs `gpus_per_trial` > 0 under Ray)",
    )
    gpus_per_trial: float = _key(0.0, "GPUs each trial reserves (fractions share a GPU)", ge=0)
    cpus_per_trial: int = _key(1, "CPUs each trial reserves", ge=1)
    mi_cpus: int = _key(1, "CPUs reserved for each trial's MI tasks", ge=0)
    max_concurrent: int | None = _key(None, "cap on trials running at once", ge=1)
    num_samples: int | None = _key(None, "optuna: trials to sample", shown="T × depths / 2", ge=1)
    max_failures: int = _key(2, "retries of a failed trial (from its last checkpoint)", ge=0)

    def __init__(self, /, **values: Any) -> None:
        values = current_names(values)
        _reject_unknown(values)
        _validated(self, values, REGISTRY_KEYS)

    @field_validator("split_depths")
    @classmethod
    def _distinct_depths(cls, depths: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if depths is not None and len(set(depths)) != len(depths):
            raise ConfigError(f"split_depths: {list(depths)} lists a depth twice")
        return depths

    @field_validator("model_kwargs")
    @classmethod
    def _plain_kwargs(cls, kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
        if kwargs is not None:
            _check_model_kwargs(kwargs)
        return kwargs

    @field_validator("attack_kwargs")
    @classmethod
    def _plain_attack_kwargs(
        cls, kwargs: dict[str, dict[str, Any]] | None
    ) -> dict[str, dict[str, Any]] | None:
        if kwargs is not None:
            _check_attack_kwargs(kwargs)
        return kwargs or None  # {} and null: no options

    @field_validator("baseline")
    @classmethod
    def _baseline_section(cls, section: dict[str, Any] | None) -> dict[str, Any] | None:
        if section is None:
            return None
        from semirobust_ray.pretrained import normalised_section, section_problem

        problem = section_problem(section)
        if problem is not None:
            raise ConfigError(f"baseline: {problem}")
        # Defaults filled in, so the stored config says which networks were used.
        return normalised_section(section)

    @field_validator("cache_dir")
    @classmethod
    def _cache_dir(cls, path: str) -> str:
        if not path:
            raise ConfigError(f"cache_dir: expected a directory path, got {path!r}")
        return path

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> ExperimentConfig:
        _check_registry_names(self, (info.context or {}).get("names", ()))
        _check_combinations(self)
        return self

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ExperimentConfig:
        """Build a config from user keys, rejecting unknown ones with the closest valid key."""
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"a config must be a mapping of key: value, got {type(values).__name__}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-serialisable values."""
        out = self.model_dump()
        if out["split_depths"] is not None:
            out["split_depths"] = list(out["split_depths"])
        return out

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A validated copy with ``changes`` applied.

        Registry names are checked only among ``changes``: a Ray worker that sets its trial's
        epochs or learning rate receives a config the driver validated and needs none of the
        registries (a user's model module may not even be imported there yet).
        """
        changes = current_names(changes)
        _reject_unknown(changes)
        copy = ExperimentConfig.__new__(ExperimentConfig)
        _validated(
            copy, {**self.to_dict(), **changes}, tuple(k for k in REGISTRY_KEYS if k in changes)
        )
        return copy

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

    def attack_options(self, attack: str) -> dict[str, Any]:
        """The ``attack_kwargs`` entry of ``attack`` (a spec as the config names it), or {}."""
        return dict((self.attack_kwargs or {}).get(attack) or {})

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
        return resolve_stop_attack(self.stop_attack, self.eval_attack_name)


def resolve_stop_attack(stop_attack: str | None, eval_attack: str) -> str:
    """The attack of the per-epoch check (:attr:`ExperimentConfig.stop_attack_name`), from a
    config's ``stop_attack`` and its evaluation attack; for stored configs read back as dicts."""
    if stop_attack:
        return stop_attack
    return "apgd-ce" if eval_attack == "autoattack" else eval_attack


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
        values.update(current_names(loaded))
    for key, value in current_names(parse_overrides(overrides)).items():
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

#: How an error names what a key takes, where its type alone would not say it well.
_EXPECTED = {
    "augment": "true, false or null (the dataset's default)",
    "attack_kwargs": "a mapping of attack: {option: value}",
    "split_depths": "a non-empty list of integers",
    "model_kwargs": "a mapping of name: value",
    "baseline": "a mapping with robust: and regular:",
    "cache_dir": "a directory path",
    "data_path": "a path",
    "data_root": "a path",
}
_EXPECTED_BY_TYPE = {
    "int_type": "an integer",
    "float_type": "a number",
    "finite_number": "a number",
    "bool_type": "true or false",
    "string_type": "a name",
    "dict_type": "a mapping",
}
_RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _reject_unknown(values: Mapping[str, Any]) -> None:
    known = ExperimentConfig.model_fields
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} "
            f"{unknown_keys(unknown, known)}; valid keys: {', '.join(sorted(known))}"
        )


def _validated(instance: ExperimentConfig, values: Mapping[str, Any], names: Iterable[str]) -> None:
    """Fill ``instance`` from ``values`` through the schema, checking the registry ``names``."""
    try:
        instance.__pydantic_validator__.validate_python(
            dict(values), self_instance=instance, context={"names": tuple(names)}
        )
    except ValidationError as err:
        raise ConfigError(_one_line(err.errors(include_url=False)[0], values)) from None


def _one_line(error: Mapping[str, Any], values: Mapping[str, Any]) -> str:
    """Pydantic's ``error`` as the one line a user reads: the key, the value, what is valid."""
    if error["type"] == "value_error":  # one of our own checks, already worded
        return str(error["ctx"]["error"])
    key, entry, kind = str(error["loc"][0]), len(error["loc"]) > 1, error["type"]
    if kind == "literal_error":
        return _unknown_choice(key, error["input"], key_choices(key))
    if kind in _RANGE_ERRORS:
        name = f"{key} entry" if entry else key
        return f"{name}={error['input']} is out of range: valid {key_range(key, entry=entry)}"
    expected = _EXPECTED.get(key) or _EXPECTED_BY_TYPE.get(kind, "another value")
    return f"{key}: expected {expected}, got {values.get(key)!r}"


def _unknown_choice(key: str, value: Any, valid: Iterable[str]) -> str:
    valid = sorted(valid)
    return f"{key}: unknown value '{value}'{did_you_mean(value, valid)}; valid: {', '.join(valid)}"


def key_choices(key: str) -> tuple[str, ...]:
    """The values a ``Literal`` key allows (empty for other keys)."""
    annotation = ExperimentConfig.model_fields[key].annotation
    return tuple(get_args(annotation)) if get_origin(annotation) is Literal else ()


Bounds = tuple[float | None, bool, float | None, bool]


def key_bounds(key: str, *, entry: bool = False) -> Bounds:
    """``(low, low_open, high, high_open)`` of a numeric key, or of each ``entry`` of a list
    key (None: unbounded on that side)."""
    field = ExperimentConfig.model_fields[key]
    metadata = list(field.metadata)
    if entry:  # tuple[Annotated[int, Field(ge=1)], ...]: the entries' own constraints
        metadata = list(FieldInfo.from_annotation(list_entry_type(key)).metadata)
    low = high = None
    low_open = high_open = False
    for m in metadata:
        if isinstance(m, annotated_types.Gt | annotated_types.Ge):
            low, low_open = (m.gt, True) if isinstance(m, annotated_types.Gt) else (m.ge, False)
        elif isinstance(m, annotated_types.Lt | annotated_types.Le):
            high, high_open = (m.lt, True) if isinstance(m, annotated_types.Lt) else (m.le, False)
    return low, low_open, high, high_open


def key_range(key: str, *, entry: bool = False) -> str:
    """The range :func:`key_bounds` gives, as ``(0, 1]`` or ``[1, inf]``."""
    low, low_open, high, high_open = key_bounds(key, entry=entry)
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    return f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"


def value_type(key: str) -> Any:
    """The type of ``key``'s values without ``None`` and ``Annotated`` (``tuple[...]``, ``int``)."""
    annotation = ExperimentConfig.model_fields[key].annotation
    if get_origin(annotation) in (Union, UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def list_entry_type(key: str) -> Any:
    """The entry type of a list key (``Annotated[int, Field(ge=1)]`` for ``split_depths``)."""
    return get_args(value_type(key))[0]


def _check_model_kwargs(kwargs: Mapping[str, Any]) -> None:
    reserved = sorted({"num_classes", "image_size", "in_channels", "in_chans"} & set(kwargs))
    if reserved:
        raise ConfigError(
            f"model_kwargs {reserved}: set by the dataset, not by model_kwargs (use image_size "
            "or the dataset's own classes and channels)"
        )
    _check_plain("model_kwargs", kwargs)


def _check_attack_kwargs(kwargs: Mapping[str, Any]) -> None:
    from semirobust_ray.attacks import COMMON_OPTIONS

    for attack, options in kwargs.items():
        if not isinstance(options, Mapping):
            raise ConfigError(
                f"attack_kwargs: the entry of '{attack}' must be a mapping of option: value, "
                f"got {options!r}"
            )
        common = sorted(set(options) & set(COMMON_OPTIONS))
        if common:
            raise ConfigError(
                f"attack_kwargs '{attack}': {', '.join(common)}: set by the config key"
                f"{'s' if len(common) > 1 else ''} of the same name, not by attack_kwargs"
            )
    _check_plain("attack_kwargs", kwargs)


def _check_plain(key: str, kwargs: Mapping[str, Any]) -> None:
    """``key``'s mapping holds plain YAML values: it goes into the baseline cache key and the
    stored config, both JSON."""
    try:
        json.dumps(dict(kwargs), sort_keys=True)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{key}: values must be plain YAML (numbers, strings, lists), got {kwargs!r}"
        ) from None


def _check_registry_names(c: ExperimentConfig, names: Iterable[str]) -> None:
    """``names`` (of :data:`REGISTRY_KEYS`) against the model, dataset and attack registries."""
    names = set(names)
    if not names:
        return
    # Registries are imported here, not at module level, so that reading a config stays cheap.
    from semirobust_ray.attacks import attack_spec_problem
    from semirobust_ray.data import DATASETS
    from semirobust_ray.models import model_spec_problem

    if "model" in names:
        # The form only: a user's module is imported where the model is built (Experiment
        # preparation on the driver reports an import error).
        problem = model_spec_problem(c.model, "value")
        if problem is not None:
            raise ConfigError(f"model: {problem}")
    if "dataset" in names and c.dataset not in DATASETS:
        raise ConfigError(_unknown_choice("dataset", c.dataset, DATASETS))
    for key in ("attack", "eval_attack", "stop_attack"):
        value = getattr(c, key)
        # The form only, as for models: prepare() imports a user's attack on the driver.
        problem = None if value is None or key not in names else attack_spec_problem(value, "value")
        if problem is not None:
            raise ConfigError(f"{key}: {problem}")


def _check_combinations(c: ExperimentConfig) -> None:
    """Keys that are valid alone but not together."""
    from semirobust_ray.data import DATASET_INFO
    from semirobust_ray.models import is_external

    external = is_external(c.model)
    if c.model_kwargs and not external:
        raise ConfigError(
            f"model_kwargs {sorted(c.model_kwargs)}: registry model '{c.model}' takes none; they "
            "are for timm:NAME and package.module:factory models"
        )
    if c.width != 1 and external:
        raise ConfigError(
            f"width={c.width}: only registry models can be narrowed, not '{c.model}' "
            "(pass its size through model_kwargs instead)"
        )
    info = DATASET_INFO.get(c.dataset)
    if info is not None and info.needs_path and not c.data_path:
        raise ConfigError(f"dataset '{c.dataset}' needs data_path (the file or directory to read)")
    used = {
        "attack": c.attack,
        "eval_attack": c.eval_attack_name,
        "stop_attack": c.stop_attack_name,
    }
    for attack in c.attack_kwargs or {}:
        if attack not in used.values():
            where = ", ".join(f"{key}: {value}" for key, value in used.items())
            raise ConfigError(
                f"attack_kwargs: '{attack}' is not an attack of this config ({where}); an entry "
                "is named after the attack it is for"
            )


#: Placeholders in the help texts, filled from the registries by :func:`key_help`.
_PLACEHOLDERS = (
    "{models}",
    "{datasets}",
    "{path_datasets}",
    "{root_datasets}",
    "{attacks}",
    "{eval_only_attacks}",
    "{strategies}",
)


def _names(names: Iterable[str]) -> str:
    """The names quoted and joined: `a`, `b` and `c`."""
    quoted = [f"`{n}`" for n in names]
    return " and ".join(quoted) if len(quoted) < 3 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"


def registry_words() -> dict[str, str]:
    """What each help-text placeholder stands for, written from the registries."""
    from semirobust_ray.attacks import ATTACKS, attack_aliases
    from semirobust_ray.data import DATASET_INFO
    from semirobust_ray.models import MODEL_INFO

    models = []
    for name, info in MODEL_INFO.items():
        models.append(f"`{name}` ({info.layers} layers{f', {info.note}' if info.note else ''})")
    datasets = []
    for name, info in DATASET_INFO.items():
        note = info.note or "files"
        words = {
            "bundled": f"bundled{f', {info.note}' if info.note else ''}",
            "data_path": f"{note} at `data_path`",
            "data_root": f"torchvision{f', {info.note}' if info.note else ''}",
        }[info.reads]
        datasets.append(f"`{name}` ({words})")
    path_datasets = [n for n, i in DATASET_INFO.items() if i.reads == "data_path"]
    attacks = []
    for name, aliases in attack_aliases().items():
        attacks.append(
            f"`{name}`" + (f" ({', '.join(f'`{a}`' for a in aliases)})" if aliases else "")
        )
    eval_only = [n for n in attack_aliases() if not ATTACKS[n].trains]
    return {
        "{models}": ", ".join(models),
        "{datasets}": ", ".join(datasets),
        "{path_datasets}": _names(path_datasets),
        "{root_datasets}": ", ".join(n for n, i in DATASET_INFO.items() if i.reads == "data_root"),
        "{attacks}": ", ".join(attacks),
        "{eval_only_attacks}": _names(eval_only),
        "{strategies}": strategy_words(),
    }


def key_help(key: str) -> str:
    """The help of ``key`` as the README, ``--help`` and errors show it: its description with
    the registry placeholders (``{models}``, ``{attacks}``, ...) written out."""
    text = ExperimentConfig.model_fields[key].description or ""
    if not any(token in text for token in _PLACEHOLDERS):
        return text
    for token, words in registry_words().items():
        text = text.replace(token, words)
    return text
