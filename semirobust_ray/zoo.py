"""RobustBench's model zoo: published robust networks as the model and the baseline.

A ``robustbench:NAME`` reference names an entry of RobustBench's model zoo (``robustbench``,
an optional extra: ``pip install "semirobust_ray[robustbench]"``); ``robustbench:DATASET/
THREAT/NAME`` picks another table than CIFAR-10 L-inf (``robustbench:cifar100/L2/NAME``).
As a ``model:`` it builds RobustBench's own architecture definition with random weights; in a
``baseline:`` section it loads the published weights from ``model_dir`` in RobustBench's layout
(``MODEL_DIR/cifar10/Linf/NAME.pt``), downloading them there first when allowed.

RobustBench 1.1.1 imports two modules this environment may lack: ``autoattack`` (the official
AutoAttack code is packaged as ``pyautoattack``) and ``pkg_resources`` (gone from setuptools
81 and later, used for one ``resource_filename`` call). :func:`import_robustbench` puts
stand-ins for exactly these in ``sys.modules`` while it imports RobustBench and takes them out
again afterwards (RobustBench's modules keep their references), so no other code ever sees
them; nothing else here patches anything.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.resources
import importlib.util
import io
import sys
import types
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from torch import nn

from semirobust_ray.names import did_you_mean
from semirobust_ray.storage import first_line

PREFIX = "robustbench:"
DEFAULT_DATASET = "cifar10"
DEFAULT_THREAT = "Linf"


class ZooError(ValueError):
    """A RobustBench reference that cannot be resolved or loaded; the message is one line."""


@dataclass(frozen=True)
class ZooRef:
    """One entry of RobustBench's model zoo: ``robustbench:[DATASET/THREAT/]NAME``."""

    dataset: str
    threat_model: str
    name: str

    @property
    def spec(self) -> str:
        return f"{PREFIX}{self.dataset}/{self.threat_model}/{self.name}"

    def checkpoint(self, model_dir: str | Path) -> Path:
        """Where RobustBench keeps (and looks for) this entry's weights under ``model_dir``."""
        return Path(model_dir).expanduser() / self.dataset / self.threat_model / f"{self.name}.pt"


def is_zoo_ref(spec: str) -> bool:
    """Whether ``spec`` is a ``robustbench:`` reference."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse_ref(spec: str) -> ZooRef:
    """Split a ``robustbench:`` reference into its table and name; checks the form only."""
    body = spec[len(PREFIX) :]
    parts = body.split("/")
    if len(parts) == 1 and parts[0]:
        return ZooRef(DEFAULT_DATASET, DEFAULT_THREAT, parts[0])
    if len(parts) == 3 and all(parts):
        return ZooRef(*parts)
    raise ZooError(
        f"'{spec}' is not a RobustBench reference: use robustbench:NAME (CIFAR-10, Linf) or "
        "robustbench:DATASET/THREAT/NAME, e.g. robustbench:cifar10/Linf/Carmon2019Unlabeled"
    )


def _shim_pkg_resources() -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # setuptools < 81 warns that pkg_resources is deprecated
        with contextlib.suppress(ImportError):
            importlib.import_module("pkg_resources")
            return []
    stand_in = types.ModuleType("pkg_resources")
    stand_in.__doc__ = "semirobust_ray's stand-in: the one function RobustBench 1.1.1 calls."

    def resource_filename(package: str, resource: str) -> str:
        return str(importlib.resources.files(package).joinpath(resource))

    stand_in.resource_filename = resource_filename
    sys.modules["pkg_resources"] = stand_in
    return ["pkg_resources"]


def _shim_autoattack() -> list[str]:
    if importlib.util.find_spec("autoattack") is not None:
        return []  # the official package installed under its own name
    pyautoattack = importlib.import_module("pyautoattack")
    added = ["autoattack"]
    sys.modules["autoattack"] = pyautoattack
    for sub in ("state", "autopgd_base", "fab_pt", "square", "checks", "other_utils"):
        with contextlib.suppress(ImportError):
            sys.modules[f"autoattack.{sub}"] = importlib.import_module(f"pyautoattack.{sub}")
            added.append(f"autoattack.{sub}")
    return added


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Swallow the warnings and prints of RobustBench code run inside the block.

    RobustBench's import prints torch.jit deprecation warnings and some model definitions print on
    construction; neither says anything to our user.
    """
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def import_robustbench() -> types.ModuleType:
    """``robustbench.utils``, imported behind the two stand-ins the module docstring names."""
    if "robustbench.utils" in sys.modules:
        return sys.modules["robustbench.utils"]
    if importlib.util.find_spec("robustbench") is None:
        raise ZooError(
            'robustbench: references need RobustBench: pip install "semirobust_ray[robustbench]"'
        )
    stand_ins = _shim_autoattack() + _shim_pkg_resources()
    try:
        with _quiet():
            return importlib.import_module("robustbench.utils")
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)


def version() -> str:
    """The installed RobustBench version (part of a ``robustbench:`` model's cache key)."""
    return importlib.metadata.version("robustbench")


def _entries(ref: ZooRef) -> dict:
    """The model-zoo table of ``ref``'s dataset and threat model."""
    utils = import_robustbench()
    enums = importlib.import_module("robustbench.model_zoo.enums")
    dataset = _enum_member(ref, enums.BenchmarkDataset, "dataset", ref.dataset)
    threat = _enum_member(ref, enums.ThreatModel, "threat model", ref.threat_model)
    return utils.all_models[dataset][threat]


def _enum_member(ref: ZooRef, enum: type[Enum], what: str, value: str) -> Enum:
    """``enum(value)``, or a one-line ZooError naming ``ref`` and the valid values."""
    try:
        return enum(value)
    except ValueError:
        valid = ", ".join(member.value for member in enum)
        raise ZooError(
            f"'{ref.spec}': unknown RobustBench {what} '{value}'; valid: {valid}"
        ) from None


def check_ref(ref: ZooRef) -> None:
    """Fail with a one-line ZooError unless ``ref`` names an entry of the model zoo."""
    entries = _entries(ref)
    if ref.name not in entries:
        hint = did_you_mean(ref.name, entries)
        raise ZooError(
            f"'{ref.spec}': RobustBench has no {ref.dataset} {ref.threat_model} model "
            f"'{ref.name}'{hint}; {len(entries)} are listed in robustbench.model_zoo"
        )


def architecture(ref: ZooRef) -> nn.Module:
    """RobustBench's network for ``ref`` with random weights (nothing is downloaded)."""
    check_ref(ref)
    factory = _entries(ref)[ref.name]["model"]
    try:
        with _quiet():
            return factory()
    except Exception as err:
        raise ZooError(
            f"'{ref.spec}': RobustBench's model definition failed ({type(err).__name__}: "
            f"{first_line(err)})"
        ) from None


def load_network(ref: ZooRef, model_dir: str | Path) -> nn.Module:
    """RobustBench's ``load_model`` for ``ref`` from ``model_dir``, in eval mode.

    The checkpoint must already be at :meth:`ZooRef.checkpoint` (see
    :func:`semirobust_ray.pretrained.fetch_zoo_checkpoint`), so this never touches the network.
    """
    check_ref(ref)
    utils = import_robustbench()
    try:
        with _quiet():
            return utils.load_model(
                ref.name,
                model_dir=str(Path(model_dir).expanduser()),
                dataset=ref.dataset,
                threat_model=ref.threat_model,
            ).eval()
    except Exception as err:
        raise ZooError(
            f"'{ref.spec}': RobustBench could not load {ref.checkpoint(model_dir)} "
            f"({type(err).__name__}: {first_line(err)})"
        ) from None


def download(ref: ZooRef, model_dir: str | Path) -> Path:
    """Download ``ref``'s published weights into ``model_dir`` with RobustBench's downloader."""
    check_ref(ref)
    utils = import_robustbench()
    entry = _entries(ref)[ref.name]
    target = ref.checkpoint(model_dir)
    gdrive = entry.get("gdrive_id")
    if not gdrive or isinstance(gdrive, list):
        raise ZooError(
            f"'{ref.spec}': RobustBench has no single downloadable checkpoint for it; put its "
            f"state dict at {target}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        utils.download_gdrive_new(gdrive, partial)
    except Exception as err:
        partial.unlink(missing_ok=True)
        raise ZooError(
            f"'{ref.spec}': download failed ({type(err).__name__}: {first_line(err)}); on a "
            f"machine with internet, fetch it into the same layout and copy it to {target}"
        ) from None
    if not partial.is_file():  # gdown reports some failures by returning None
        raise ZooError(f"'{ref.spec}': download failed (gdown wrote no file); put it at {target}")
    partial.replace(target)  # a file at the target is always a whole download
    return target
