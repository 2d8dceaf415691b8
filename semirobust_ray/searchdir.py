"""A search's directory in its storage: what it holds, and how a resume reads it back.

``<storage_path>/<name>/`` is Tune's experiment directory (its state files and one directory per
trial, written by Tune itself) plus the files of this package, all through
:class:`~semirobust_ray.storage.Store`, so a local disk, a shared filesystem and ``s3://`` behave
the same:

- ``search/search_meta.json``: the config the search started with, n and the baseline's metrics;
- ``baseline/``: f*_a's and the regular network's weights with their SHA-256 sums, so a resume
  (from any machine, with an empty cache) and ``reevaluate`` use the very baseline the finished
  trials were measured against; and the baseline's TensorBoard run (its training curves and
  Acc*), which ``tensorboard --logdir`` lists as ``baseline`` beside the trials;
- the report (``table1.*``, ``frontier.*``, ``rho_vs_depth.png``, ``minimal_split.json``) and
  ``reevaluation.csv``, written next to them.

A resume takes everything from here: the config is the stored one, and a change to a key that
determines what the finished trials measured is refused (:func:`resume_config`).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from semirobust_ray.baseline import Baseline, load_baseline, save_baseline
from semirobust_ray.config import ExperimentConfig, current_names
from semirobust_ray.names import current_keys
from semirobust_ray.results import (
    SEARCH_META_FILE,
    depth_summaries,
    load_results,
    search_meta_file,
)
from semirobust_ray.storage import CorruptFileError, Store, first_line, is_uri

BASELINE_DIR = "baseline"

#: Config keys a resume may change: where things are and what a trial may use, not what it
#: measures (a trial's numbers do not depend on them beyond floating-point reduction order).
RESUME_MAY_CHANGE = (
    "max_concurrent",
    "max_failures",
    "device",
    "gpus_per_trial",
    "cpus_per_trial",
    "mi_cpus",
    "cache_dir",
    "data_root",
    "download",
    # Which trials get a test evaluation, not what any trial measures: `--resume --set
    # test_eval=all` evaluates the trials a `best` search left unevaluated.
    "test_eval",
)


class SearchDirError(ValueError):
    """A search directory that cannot be used as asked; the message is one line."""


def resolve_storage_path(storage_path: str) -> str:
    """An absolute local directory (``~`` expanded, created) or a URI, checked by writing (and
    removing) a probe file; anything else is a one-line :class:`SearchDirError`.

    A write, not a listing: a bucket that does not exist, or credentials that may read but not
    write, would otherwise fail only when the trained baseline is saved.
    """
    uri = is_uri(storage_path)
    location = storage_path.rstrip("/") if uri else str(Path(storage_path).expanduser().resolve())
    try:
        store = Store(location)
        probe = f".write_test-{os.getpid()}"
        store.write_bytes(probe, b"")
        store.delete(probe)
    except (ValueError, OSError) as err:
        reason = getattr(err, "strerror", None) or first_line(err)
        hint = (
            "; check the URI, that the bucket exists and the credentials (docs/cluster.md: S3 "
            "and S3-compatible stores)"
            if uri
            else ""
        )
        raise SearchDirError(
            f"storage path '{storage_path}' is not writable ({reason}){hint}"
        ) from None
    return location


def experiment_dir(storage_path: str, name: str) -> str:
    """Where the search ``name`` lives under ``storage_path``."""
    return f"{storage_path.rstrip('/')}/{name}"


def holds_search(search: Store) -> bool:
    """Whether ``search`` already holds a search (ours, or any Tune experiment)."""
    return search_meta_file(search) is not None or search.is_file("tuner.pkl")


def save_search_files(
    search: Store, config: ExperimentConfig, num_layers: int, baseline: Baseline
) -> None:
    """The baseline's weights first, then ``search/search_meta.json`` that points at them."""
    save_baseline(baseline, search.child(BASELINE_DIR))
    write_baseline_events(search.child(BASELINE_DIR), baseline)
    meta = {
        "config": config.to_dict(),
        "num_layers": num_layers,
        "baseline": {"key": baseline.key, **asdict(baseline.metrics)},
    }
    search.write_json(SEARCH_META_FILE, meta)


_EVENTS_PREFIX = "events.out.tfevents."


def write_baseline_events(store: Store, baseline: Baseline) -> None:
    """The baseline as a TensorBoard run in ``store``: the adversarial epochs' loss and
    training accuracy under the tags trials report their f_b epochs with (``ray/tune/loss``,
    ``ray/tune/train_acc``: one chart holds both), the regular epochs under
    ``ray/tune/baseline/...``, and Acc*, Acc*_val and the clean accuracy as the trials' final
    reports name them."""
    from tensorboardX import SummaryWriter  # Tune's own TensorBoard writer

    metrics = baseline.metrics
    history = metrics.history or []
    with tempfile.TemporaryDirectory() as tmp:
        writer = SummaryWriter(tmp, flush_secs=3600)
        for h in history:
            prefix = "ray/tune/" if h["stage"] == "adversarial" else "ray/tune/baseline/regular_"
            writer.add_scalar(f"{prefix}loss", h["loss"], h["epoch"])
            writer.add_scalar(f"{prefix}train_acc", h["train_acc"], h["epoch"])
        last = max((h["epoch"] for h in history if h["stage"] == "adversarial"), default=1)
        for tag, value in (
            ("acc_star", metrics.acc_star),
            ("acc_star_val", metrics.acc_star_val),
            ("clean_acc", metrics.clean_acc_robust),
        ):
            writer.add_scalar(f"ray/tune/{tag}", value, last)
        writer.close()
        for old in store.files():  # a recomputed baseline replaces its run, not adds to it
            if old.startswith(_EVENTS_PREFIX):
                store.delete(old)
        for path in Path(tmp).iterdir():
            store.write_bytes(path.name, path.read_bytes())


def load_search_baseline(where: Store | str | os.PathLike) -> Baseline | None:
    """The baseline stored with a search (for resume), if present; CorruptFileError if damaged.

    Its key is not checked against today's: the finished trials were measured against this
    Acc*, so a resume keeps it even when a newer version of the code would key it differently.
    """
    stored = Store.of(where).child(BASELINE_DIR)
    if not stored.is_file("baseline.json"):
        return None
    return load_baseline(stored)


def stored_config(search: Store) -> ExperimentConfig:
    """The config a search was started with, from its ``search_meta.json``."""
    rel = search_meta_file(search)
    if rel is None:
        raise SearchDirError(f"--resume: '{search.uri()}' holds no {SEARCH_META_FILE}")
    try:
        return ExperimentConfig.from_dict(current_keys(search.read_json(rel)["config"]))
    except CorruptFileError as err:
        raise SearchDirError(f"--resume: {err}; the search cannot be resumed") from None
    except (KeyError, TypeError):
        raise SearchDirError(
            f"--resume: {search.uri(rel)} holds no 'config' mapping; the search cannot be resumed"
        ) from None


def resume_config(stored: ExperimentConfig, changes: dict[str, Any]) -> ExperimentConfig:
    """The config a resumed search runs with: the stored one with ``changes`` (the keys a
    ``--config`` file and ``--set`` name) applied where they may change.

    A change to any other key would mix trials measured two ways in one answer: refused with a
    one-line :class:`SearchDirError` that names the keys.
    """
    # ``changes`` may use a key's old name (``seeds``); the stored config uses current names.
    candidate = ExperimentConfig.from_dict({**stored.to_dict(), **current_names(changes)})
    refused = measured_differently(stored, candidate)
    if refused:
        raise SearchDirError(
            f"--resume: the finished trials were measured with other settings of {refused}; "
            "resume without changing them, or start a new search with another --name "
            f"(a resume may change only {', '.join(RESUME_MAY_CHANGE)})"
        )
    return candidate


def measured_differently(stored: ExperimentConfig, other: ExperimentConfig) -> str:
    """The keys outside :data:`RESUME_MAY_CHANGE` in which ``other`` differs from ``stored``,
    as ``key (old -> new), ...``; empty when trials under both would be measured alike."""
    before, after = stored.to_dict(), other.to_dict()
    changed = [key for key in ExperimentConfig.model_fields if before[key] != after[key]]
    return ", ".join(
        f"{k} ({before[k]!r} -> {after[k]!r})" for k in changed if k not in RESUME_MAY_CHANGE
    )


def known_acc_sr(search: Store) -> dict[int, float]:
    """Acc_sr of the depths a resumed search's finished trials measured (no need to again)."""
    if search_meta_file(search) is None:
        return {}
    try:
        summaries = depth_summaries(load_results(search))
    except (ValueError, CorruptFileError):
        return {}  # the report will say what is wrong; sharing is only a saving
    return {s.fb_layers: s.acc_sr for s in summaries if not math.isnan(s.acc_sr)}
