"""Stage 1 from networks the user already has: the ``baseline:`` section of a config.

Instead of training the regular and the robust network, a search may name them::

    model: robustbench:Carmon2019Unlabeled     # the architecture both share
    baseline:
      robust: robustbench:Carmon2019Unlabeled  # published weights, from model_dir
      regular: robustbench:Standard            # or a state-dict file / storage URI
      model_dir: ~/.cache/semirobust_ray/robustbench
      download: true

Each network is a ``robustbench:`` reference (see :mod:`semirobust_ray.zoo`) or a checkpoint: a
state dict saved with ``torch.save(model.state_dict(), path)``, at a local path or a storage
URI (``s3://...``), loaded with ``weights_only=True`` and recorded with its SHA-256. A state
dict may be of the bare network or of the wrapped :class:`~semirobust_ray.models.ImageClassifier`
(keys ``net.*`` and ``normalize.*``); a ``module.`` prefix (DataParallel) is removed. Both must
fit the network ``model:`` builds, key for key and shape for shape, and RobustBench networks
must also be of its class (the same state dict keys can belong to networks whose forward
differs, such as RobustBench's ``Hendrycks2019Using`` and ``Standard``). Acc* is then measured
here, on our test split with ``eval_attack``; the rest of Algorithm 1 is unchanged.

The driver resolves the section once (:func:`resolve_sources`: relative paths made absolute,
files and RobustBench names checked) before Ray starts; the process that measures the baseline
loads the weights (:func:`load_networks`), downloading RobustBench checkpoints into
``model_dir`` on its own node where allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semirobust_ray import zoo
from semirobust_ray.names import unknown_keys
from semirobust_ray.storage import (
    CorruptFileError,
    first_line,
    is_uri,
    read_location,
    sha256_bytes,
    state_from_bytes,
)

#: The keys of the ``baseline:`` section and their defaults (None: required or derived).
SECTION_DEFAULTS: dict[str, Any] = {
    "robust": None,
    "regular": None,  # default for a robustbench: robust network: that table's Standard model
    "model_dir": "~/.cache/semirobust_ray/robustbench",
    "download": True,
}
ROLES = ("robust", "regular")


class BaselineSourceError(ValueError):
    """A ``baseline:`` network that cannot be found, read or fitted; the message is one line."""


@dataclass(frozen=True)
class Source:
    """One network of the ``baseline:`` section, resolved by the driver."""

    role: str  # "robust" or "regular"
    spec: str  # as the user wrote it
    location: str  # absolute path or URI of the checkpoint file ("" until a zoo file exists)
    zoo_ref: zoo.ZooRef | None = None

    def describe(self) -> str:
        return f"baseline.{self.role} '{self.spec}'"


@dataclass(frozen=True)
class Sources:
    """The two networks of a ``baseline:`` section and where RobustBench files live."""

    robust: Source
    regular: Source
    model_dir: str
    download: bool

    def record(self) -> dict[str, Any]:
        """What the baseline record keeps of where its weights came from."""
        return {
            s.role: {"spec": s.spec, "location": s.location} for s in (self.robust, self.regular)
        }


def section_problem(section: Any) -> str | None:
    """Why a ``baseline:`` value is unusable (form only; nothing is read), or None."""
    if not isinstance(section, Mapping):
        return f"expected a mapping with robust: and regular:, got {section!r}"
    unknown = sorted(set(section) - set(SECTION_DEFAULTS))
    if unknown:
        hints = unknown_keys(unknown, SECTION_DEFAULTS)
        return f"unknown key {hints}; valid: {', '.join(SECTION_DEFAULTS)}"
    robust = section.get("robust")
    if not isinstance(robust, str) or not robust:
        return "robust: needs the robust network: robustbench:NAME or a state-dict path or URI"
    regular = section.get("regular")
    if regular is None and not zoo.is_zoo_ref(robust):
        return "regular: needs the regular network (a state-dict path or URI, or robustbench:NAME)"
    for role in ROLES:
        value = section.get(role)
        if value is not None and not isinstance(value, str):
            return f"{role}: expected robustbench:NAME or a path, got {value!r}"
        if isinstance(value, str) and zoo.is_zoo_ref(value):
            try:
                zoo.parse_ref(value)
            except zoo.ZooError as err:
                return f"{role}: {err}"
    if not isinstance(section.get("model_dir", ""), str):
        return f"model_dir: expected a directory, got {section['model_dir']!r}"
    if not isinstance(section.get("download", True), bool):
        return f"download: expected true or false, got {section['download']!r}"
    return None


def normalised_section(section: Mapping[str, Any]) -> dict[str, Any]:
    """The section with defaults filled in (``regular`` of a RobustBench robust network: the
    same table's ``Standard``), as the stored config records it."""
    out = {**SECTION_DEFAULTS, **section}
    if out["regular"] is None:
        ref = zoo.parse_ref(out["robust"])
        out["regular"] = zoo.ZooRef(ref.dataset, ref.threat_model, "Standard").spec
    return out


def resolve_sources(
    section: Mapping[str, Any], build_model: Callable[[], nn.Module] | None = None
) -> Sources:
    """Check what the driver can check before any compute: RobustBench is installed and knows
    the names; a checkpoint file exists (a relative path is made absolute here, where the
    user's working directory is); a RobustBench file is present or may be downloaded; with
    ``build_model``, every file present fits its network (:func:`verify`)."""
    s = normalised_section(section)
    resolved = []
    for role in ROLES:
        spec = s[role]
        if zoo.is_zoo_ref(spec):
            ref = zoo.parse_ref(spec)
            try:
                zoo.check_ref(ref)
            except zoo.ZooError as err:
                raise BaselineSourceError(f"baseline.{role}: {err}") from None
            path = ref.checkpoint(s["model_dir"])
            if not path.is_file() and not s["download"]:
                raise BaselineSourceError(
                    f"baseline.{role} '{spec}': no checkpoint at {path} and download is false; "
                    "set baseline.download: true or put RobustBench's file there"
                )
            resolved.append(Source(role, spec, str(path), ref))
            continue
        location = spec if is_uri(spec) else str(Path(spec).expanduser().resolve())
        source = Source(role, spec, location)
        try:
            read_location(location)  # a missing file or bucket fails here, not on a worker
        except (FileNotFoundError, OSError, ValueError) as err:
            raise BaselineSourceError(
                f"{source.describe()}: checkpoint not found ({first_line(err)})"
            ) from None
        resolved.append(source)
    sources = Sources(resolved[0], resolved[1], s["model_dir"], s["download"])
    if build_model is not None:
        verify(sources, build_model)
    return sources


def _safe_load(source: Source, data: bytes) -> Any:
    """Checkpoint bytes loaded weights-only; pickled code or a damaged file is one line."""
    try:
        return state_from_bytes(data, source.location)
    except CorruptFileError as err:
        raise BaselineSourceError(f"{source.describe()}: {err}") from None


def _checkpoint_state(source: Source, data: bytes) -> dict[str, torch.Tensor]:
    """A state dict from checkpoint bytes: weights-only, unwrapped, ``module.`` removed."""
    state = _safe_load(source, data)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]  # the layout RobustBench's and many training scripts use
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise BaselineSourceError(
            f"{source.describe()}: {source.location} is not a state dict (name -> tensor); "
            "save one with torch.save(model.state_dict(), path)"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def _fit(source: Source, state: Mapping[str, torch.Tensor], model: nn.Module) -> dict:
    """``state`` as a full state dict of ``model`` (our wrapper's keys), or a one-line error
    naming what does not fit."""
    wanted = model.state_dict()
    wrapped = all(k.startswith(("net.", "normalize.")) for k in state)
    full = dict(state) if wrapped else {f"net.{k}": v for k, v in state.items()}
    for key, value in wanted.items():
        if key.startswith("normalize.") and key not in full:
            full[key] = value  # a bare network: the model's own input normalisation
    dropped = getattr(model, "dropped", ())
    full = {k: v for k, v in full.items() if not any(k.startswith(f"{d}.") for d in dropped)}
    missing = [k for k in wanted if k not in full]
    unexpected = [k for k in full if k not in wanted]
    reshaped = [k for k in wanted if k in full and full[k].shape != wanted[k].shape]
    if missing or unexpected or reshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if reshaped:
            k = reshaped[0]
            parts.append(
                f"{len(reshaped)} of another shape (e.g. {k}: {list(full[k].shape)}, "
                f"model {list(wanted[k].shape)})"
            )
        raise BaselineSourceError(
            f"{source.describe()} is not the architecture of the model: {'; '.join(parts)}; "
            "the robust and the regular network must both be the network model: builds"
        )
    return {k: full[k].detach().to(wanted[k].dtype).clone() for k in wanted}


def _zoo_state(source: Source, sources: Sources, model: nn.Module) -> tuple[dict, str]:
    """Weights of a ``robustbench:`` network through RobustBench's own loader; its file is
    first read weights-only here (downloaded first where allowed)."""
    ref = source.zoo_ref
    path = ref.checkpoint(sources.model_dir)
    if not path.is_file():
        if not sources.download:
            raise BaselineSourceError(f"{source.describe()}: no checkpoint at {path}")
        try:
            zoo.download(ref, sources.model_dir)
        except zoo.ZooError as err:
            raise BaselineSourceError(f"{source.describe()}: {err}") from None
    data = path.read_bytes()
    _safe_load(source, data)  # pickled or damaged: our one-line error, not RobustBench's
    try:
        net = zoo.load_network(ref, sources.model_dir)
    except zoo.ZooError as err:
        raise BaselineSourceError(f"{source.describe()}: {err}") from None
    ours = type(getattr(model, "net", model)).__name__
    if type(net).__name__ != ours:
        raise BaselineSourceError(
            f"{source.describe()} is a {type(net).__name__}, the model a {ours}: not the "
            "same architecture (their forward passes differ)"
        )
    return _fit(source, net.state_dict(), model), sha256_bytes(data)


def _load_one(source: Source, sources: Sources, model: nn.Module) -> tuple[dict, str]:
    """One network's weights fitted to ``model``, and its file's SHA-256."""
    if source.zoo_ref is not None:
        return _zoo_state(source, sources, model)
    try:
        data = read_location(source.location)
    except (FileNotFoundError, OSError) as err:
        raise BaselineSourceError(
            f"{source.describe()}: checkpoint not found ({first_line(err)})"
        ) from None
    return _fit(source, _checkpoint_state(source, data), model), sha256_bytes(data)


def verify(sources: Sources, build_model: Callable[[], nn.Module]) -> None:
    """Load and fit every network whose file is here, so that a wrong architecture, a pickled
    or a damaged file is a one-line error before any compute (a RobustBench file still to be
    downloaded is checked where it is downloaded)."""
    for source in (sources.robust, sources.regular):
        if source.zoo_ref is None or Path(source.location).is_file():
            _load_one(source, sources, build_model())


def load_networks(
    sources: Sources, build_model: Callable[[], nn.Module]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """(regular state, robust state, provenance record with each file's SHA-256), each state
    a full state dict of ``build_model()``'s network."""
    states: dict[str, dict] = {}
    record = sources.record()
    for source in (sources.robust, sources.regular):
        states[source.role], record[source.role]["sha256"] = _load_one(
            source, sources, build_model()
        )
    return states["regular"], states["robust"], record
