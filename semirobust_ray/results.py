"""Stored results of a search, read back: the runner's ``results.json`` or a Tune directory.

Every file the report writes is rebuilt from what this module reads, so a search can be
re-reported (or re-evaluated) from its storage alone: a local or shared directory or any URI
:class:`~semirobust_ray.storage.Store` opens (``s3://...``).

Tune experiment directory format (what the search layer must write):

- ``<dir>/search/search_meta.json`` = ``{"config": ExperimentConfig.to_dict(), "num_layers": n,
  "baseline": {"acc_star": ..., ...}}`` (searches of earlier versions kept it at
  ``<dir>/search_meta.json``; both are read). Not at the top level: on a resume Tune downloads
  the top-level JSON files of the directory and re-uploads them with its own state, and a
  driver killed during that upload would leave the file cut short;
- one directory per trial (found recursively) holding Tune's ``result.json`` (JSON lines, one per
  ``tune.report``). A finished trial's last report carries ``"trial_result_json"``: the JSON
  string of ``TrialResult.to_dict()``. A trial whose last report carries ``"failure"`` instead
  (a diverged loss) is listed under ``failed`` with that reason; any other trial without a
  result line is listed as unfinished. Neither is used in the table.
- ``<dir>/evaluations/<trial dir>.json``: the test-set evaluation of a trial done after the
  search (``test_eval: best``, :mod:`semirobust_ray.final_eval`): ``acc``, ``clean_acc``,
  ``mi``, ``eval_seconds``, ``mi_seconds`` with the trial's coordinates. Merged into that
  trial's dict here (:func:`merge_evaluation`); a trial without one (and not evaluated inside
  the trial) has ``acc`` and ``clean_acc`` NaN and ``test_evaluated`` false.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from semirobust_ray.algorithm1 import DepthSummary, TrialResult, summarise_depth
from semirobust_ray.names import current_keys
from semirobust_ray.storage import CorruptFileError, Store, is_uri

RESULTS_FILE = "results.json"
SEARCH_META_FILE = "search/search_meta.json"
LEGACY_SEARCH_META_FILE = "search_meta.json"
TUNE_RESULT_FILE = "result.json"
#: The key of a trial's final Tune report that holds ``TrialResult.to_dict()`` as JSON.
TRIAL_RESULT_KEY = "trial_result_json"
#: In each of a trial's checkpoints: what the trial needs to continue (``TrialState``).
CHECKPOINT_FILE = "trial_state.pt"
#: In a trial's last checkpoint: the final f_b (the network Acc was measured on, with f*_a from
#: the search's baseline/), with the trial's coordinates, seed and reported Acc.
FINAL_FB_FILE = "final_fb.pt"
#: Under a search's directory: one file per trial evaluated on the test split after the search.
EVALUATIONS_DIR = "evaluations"


class ReportError(ValueError):
    """Stored results are missing or malformed; the message is one line for the user."""


def search_meta_file(store: Store) -> str | None:
    """Where ``store`` keeps its search's metadata (None: it holds no Tune search)."""
    for rel in (SEARCH_META_FILE, LEGACY_SEARCH_META_FILE):
        if store.is_file(rel):
            return rel
    return None


def load_results(path: str | os.PathLike | Store) -> dict[str, Any]:
    """Read stored results: the runner's ``results.json`` or a Ray Tune experiment directory.

    ``path`` may be ``results.json`` itself, a directory holding it, or a Tune experiment
    directory (``search/search_meta.json`` plus trial directories with ``result.json``), local
    or at a storage URI. Returns the results dict (``config``, ``num_layers``, ``baseline``,
    ``trials`` as ``TrialResult.to_dict()`` dicts; a Tune directory adds ``unfinished``).
    Raises :class:`ReportError` when the path holds neither layout or a file is unreadable.
    """
    if not isinstance(path, Store) and not is_uri(path):
        p = Path(path)
        if p.is_file() and p.name == RESULTS_FILE:
            return _load_runner_results(Store(p.parent), RESULTS_FILE)
        if not p.is_dir():
            raise ReportError(f"{p} is not a directory with {RESULTS_FILE} or {SEARCH_META_FILE}")
    try:
        store = Store.of(path)
        meta = search_meta_file(store)
        runner = store.is_file(RESULTS_FILE)
    except OSError as err:  # an unreachable bucket, missing credentials, ...
        raise ReportError(f"cannot read {path}: {err}") from None
    # The trial directories are the primary record of a search; a results.json next to them
    # (if the search layer ever writes one) could be stale after a resume, so Tune wins.
    if meta is not None:
        return _load_tune_results(store, meta)
    if runner:
        return _load_runner_results(store, RESULTS_FILE)
    raise ReportError(
        f"{store.uri()} holds neither {RESULTS_FILE} (runner output) nor {SEARCH_META_FILE} "
        "(a Tune search directory); pass the search's experiment directory"
    )


def _read_json_or_fail(store: Store, rel: str) -> Any:
    try:
        return store.read_json(rel)
    except CorruptFileError as err:
        raise ReportError(str(err)) from None
    except OSError as err:
        raise ReportError(f"cannot read {store.uri(rel)}: {err.strerror or err}") from None


def _require_header(data: Any, source: str) -> None:
    if not isinstance(data, dict):
        raise ReportError(f"{source} must hold a JSON object, got {type(data).__name__}")
    missing = [k for k in ("config", "num_layers", "baseline") if k not in data]
    if missing:
        raise ReportError(f"{source} lacks key(s) {', '.join(missing)}")
    if not isinstance(data["config"], dict) or not isinstance(data["baseline"], dict):
        raise ReportError(f"{source}: 'config' and 'baseline' must be JSON objects")
    if not isinstance(data["num_layers"], int) or data["num_layers"] < 1:
        raise ReportError(f"{source}: 'num_layers' must be a positive integer")


def _load_runner_results(store: Store, rel: str) -> dict[str, Any]:
    source = store.uri(rel)
    data = _read_json_or_fail(store, rel)
    _require_header(data, source)
    trials = data.get("trials")
    if not isinstance(trials, list):
        raise ReportError(f"{source}: 'trials' must be a list")
    for i, t in enumerate(trials):
        _trial_from_dict(t, f"{source} trial #{i}")
    return {
        **data,
        "config": current_keys(data["config"]),  # ``seeds`` in results of earlier versions
        "source": source,
        "unfinished": data.get("unfinished", []),
    }


def _parent(rel: str) -> str:
    return rel.rpartition("/")[0]


def _load_tune_results(store: Store, meta_rel: str) -> dict[str, Any]:
    # Not Tune's ResultGrid / ExperimentAnalysis: both import Ray, and `semirobust report` and
    # `reevaluate` (an independent check on purpose) run without it, on a laptop holding only
    # the copied directory; one reader also serves the runner's results.json, and it keeps the
    # checksummed, one-line errors of storage.py for a damaged file.
    meta = _read_json_or_fail(store, meta_rel)
    _require_header(meta, store.uri(meta_rel))
    trials: list[dict[str, Any]] = []
    unfinished: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    # Sorted so that the trial order (and hence every output file) is reproducible.
    for result_rel in store.files(name=TUNE_RESULT_FILE):
        rel = _parent(result_rel)
        final, last, reports = _scan_tune_result(store, result_rel)
        if final is None and last is not None and last.get("failure"):
            # Ended on purpose without a result (e.g. diverged): a failed trial, with its reason.
            failed.append(_failed_entry(rel, last))
            continue
        if final is None:
            unfinished.append(_unfinished_entry(store, rel, last, reports))
            continue
        try:
            trial = json.loads(final)
        except (TypeError, json.JSONDecodeError):
            raise ReportError(
                f"{store.uri(result_rel)}: '{TRIAL_RESULT_KEY}' is not a JSON string of a trial "
                "result"
            ) from None
        _trial_from_dict(trial, store.uri(result_rel))
        trials.append({**trial, "trial_dir": rel})
    evaluations = _read_evaluations(store)
    trials = [
        merge_evaluation(t, evaluations[t["trial_dir"]]) if t["trial_dir"] in evaluations else t
        for t in trials
    ]
    return {
        **meta,
        "config": current_keys(meta["config"]),  # ``seeds`` in searches of earlier versions
        "trials": trials,
        "unfinished": unfinished,
        "failed": failed,
        "source": store.uri(),
    }


def evaluation_file(trial_dir: str) -> str:
    """Where the after-search test evaluation of the trial in ``trial_dir`` is stored."""
    return f"{EVALUATIONS_DIR}/{trial_dir.replace('/', '__')}.json"


def _read_evaluations(store: Store) -> dict[str, dict[str, Any]]:
    """{trial dir: its stored test evaluation}. A damaged file counts as not evaluated (the
    search evaluates that trial again on resume) rather than failing the report."""
    found: dict[str, dict[str, Any]] = {}
    for rel in store.files(EVALUATIONS_DIR):
        with contextlib.suppress(OSError, CorruptFileError):
            ev = store.read_json(rel)
            if isinstance(ev, dict) and "trial_dir" in ev and "acc" in ev:
                found[str(ev["trial_dir"])] = ev
    return found


def merge_evaluation(trial: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any]:
    """A trial's dict with its after-search test evaluation: Acc, clean Acc, MI, Diff, and
    the evaluation's seconds added to its compute."""
    return {
        **trial,
        "acc": float(ev["acc"]),
        "clean_acc": float(ev["clean_acc"]),
        "mi": list(ev.get("mi", [])),
        "diff": float(trial["acc_star"]) - float(ev["acc"]),
        "eval_seconds": float(trial.get("eval_seconds", 0.0)) + float(ev["eval_seconds"]),
        "mi_seconds": float(trial.get("mi_seconds", 0.0)) + float(ev["mi_seconds"]),
        "test_evaluated": True,
    }


def final_fb_file(store: Store, trial_dir: str) -> str | None:
    """The ``final_fb.pt`` of the trial in ``trial_dir`` (in its latest checkpoint), or None."""
    found = [r for r in store.files(trial_dir, name=FINAL_FB_FILE) if _checkpoint_number(r) >= 0]
    return max(found, key=_checkpoint_number) if found else None


def _checkpoint_number(rel: str) -> int:
    folder = rel.split("/")[-2]  # .../checkpoint_000003/final_fb.pt
    return int(folder.split("_")[-1]) if folder.startswith("checkpoint_") else -1


def _scan_tune_result(store: Store, rel: str) -> tuple[str | None, dict[str, Any] | None, int]:
    """(the last ``trial_result_json`` value, the last report, the number of reports).

    A line cut off by a crash is skipped rather than failing the whole report: the trial it
    belongs to simply counts as unfinished unless an earlier complete line finished it.
    """
    final: str | None = None
    last: dict[str, Any] | None = None
    reports = 0
    try:
        lines = store.read_bytes(rel).decode(errors="replace").splitlines()
    except OSError as err:
        raise ReportError(f"cannot read {store.uri(rel)}: {err.strerror or err}") from None
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict):
            continue
        reports += 1
        last = row
        if row.get(TRIAL_RESULT_KEY) is not None:
            final = row[TRIAL_RESULT_KEY]
    return final, last, reports


def _unfinished_entry(
    store: Store, rel: str, last: dict[str, Any] | None, reports: int
) -> dict[str, Any]:
    entry: dict[str, Any] = {"trial_dir": rel, "reports": reports}
    # params are a courtesy for the reader; a missing or broken file must not stop the report.
    with contextlib.suppress(OSError, CorruptFileError):
        entry["params"] = store.read_json(f"{rel}/params.json")
    if last is not None:
        for key in ("epoch", "training_iteration", "fb_layers", "val_robust_acc", "gap"):
            if key in last:
                entry[key] = last[key]
    return entry


def _failed_entry(rel: str, last: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"trial_dir": rel, "failure": str(last["failure"])}
    for key in ("fb_layers", "trial"):
        if key in last:
            entry[key] = last[key]
    return entry


_TRIAL_FIELDS = {f.name: f for f in dataclasses.fields(TrialResult)}
_TRIAL_REQUIRED = [
    name
    for name, f in _TRIAL_FIELDS.items()
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
]


def _trial_from_dict(d: Any, where: str) -> TrialResult:
    if not isinstance(d, dict):
        raise ReportError(f"{where}: a trial result must be a JSON object")
    missing = [k for k in _TRIAL_REQUIRED if k not in d]
    if missing:
        raise ReportError(f"{where}: trial result lacks {', '.join(missing)}")
    # Unknown keys (the derived "diff", "trial_dir", fields added later) are ignored.
    return TrialResult(**{k: v for k, v in d.items() if k in _TRIAL_FIELDS})


def trial_results(results: dict[str, Any]) -> list[TrialResult]:
    """The results' finished trials as :class:`TrialResult` objects."""
    return [_trial_from_dict(t, f"trial #{i}") for i, t in enumerate(results.get("trials", []))]


def depth_summaries(results: dict[str, Any]) -> list[DepthSummary]:
    """One :class:`DepthSummary` per split depth tried, smallest |f_b| first."""
    by_depth: dict[int, list[TrialResult]] = {}
    for t in trial_results(results):
        by_depth.setdefault(int(t.fb_layers), []).append(t)
    return [summarise_depth(by_depth[d]) for d in sorted(by_depth)]


def candidate_depths(results: dict[str, Any]) -> list[int]:
    """The search's candidate |f_b| values: ``split_depths``, or every depth 1..n."""
    depths = results["config"].get("split_depths") or range(1, int(results["num_layers"]) + 1)
    return sorted(int(d) for d in depths)


def display_name(name: Any) -> str:
    """A registered model's or dataset's name as reports print it (its registry's ``display``:
    VGG16, CIFAR-10); anything else as it is."""
    from semirobust_ray.data import DATASET_INFO
    from semirobust_ray.models import MODEL_INFO

    info = MODEL_INFO.get(str(name)) or DATASET_INFO.get(str(name))
    return info.display if info is not None else str(name)


def labels(config: dict[str, Any]) -> tuple[str, str]:
    """(model, dataset) as a reader knows them: a narrowed model shows its width, a file-based
    dataset (npz, imagefolder) its file or directory name."""
    model = display_name(config.get("model", "?"))
    width = config.get("width", 1.0)
    if width not in (None, 1, 1.0):
        model += f" (width {width:g})"
    dataset = display_name(config.get("dataset", "?"))
    from semirobust_ray.data import DATASET_INFO

    info = DATASET_INFO.get(str(config.get("dataset")))
    if info is not None and info.needs_path and config.get("data_path"):
        dataset = Path(str(config["data_path"])).stem or dataset
    return model, dataset
