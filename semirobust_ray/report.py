"""Table 1, the ρ-vs-depth figure and the minimal split, rebuilt from stored results alone.

``python -m semirobust_ray.report DIR`` reads either the runner's ``results.json`` or a Ray Tune
experiment directory and writes, into ``DIR``:

- ``table1.csv``: one row per split depth; accuracies as FRACTIONS (six significant digits, so
  the CSV can be compared and re-plotted without the table's rounding), ρ in bits.
- ``table1.md``: the same rows as the paper prints them: accuracies in PERCENT with one decimal,
  ρ in bits with two decimals, an empty cell where a pair lies outside f_b.
- ``rho_vs_depth.png``: the paper's Fig. 1, ρ against layer depth x (pair ending at layer n − x).
- ``minimal_split.json``: the smallest |f_b| whose trials reached Acc* − k, with the evidence.

Tune experiment directory format (what the search layer must write):

- ``<dir>/search_meta.json`` = ``{"config": ExperimentConfig.to_dict(), "num_layers": n,
  "baseline": {"acc_star": ..., ...}}``;
- one directory per trial (found recursively) holding Tune's ``result.json`` (JSON lines, one per
  ``tune.report``). A finished trial's last report carries ``"trial_result_json"``: the JSON
  string of ``TrialResult.to_dict()``. A trial whose last report carries ``"failure"`` instead
  (a diverged loss) is listed under ``failed`` with that reason; any other trial without a
  result line is listed as unfinished. Neither is used in the table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from semirobust_ray.algorithm1 import DepthSummary, TrialResult, minimal_depth, summarise_depth
from semirobust_ray.storage import CorruptFileError, atomic_write_bytes, read_json, write_json

RESULTS_FILE = "results.json"
SEARCH_META_FILE = "search_meta.json"
TUNE_RESULT_FILE = "result.json"
TRIAL_RESULT_KEY = "trial_result_json"

# Table 1 reports ρ for the pairs ending at layers n, n−3, n−7, n−11 and n−15 (x = 0, 3, ...).
RHO_OFFSETS: tuple[int, ...] = (0, 3, 7, 11, 15)
ACC_COLUMNS: tuple[str, ...] = ("Acc*", "Acc_sr", "Acc", "Diff")

_DISPLAY_NAMES = {
    "alexnet": "AlexNet",
    "vgg16": "VGG16",
    "resnet50": "ResNet50",
    "smallcnn": "SmallCNN",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "imagenette": "Imagenette",
    "digits": "Digits",
    "mnist": "MNIST",
}


class ReportError(ValueError):
    """Stored results are missing or malformed; the message is one line for the user."""


def rho_column(offset: int) -> str:
    """The Table 1 column name for the pair ending at layer n − ``offset``."""
    return "ρ_n" if offset == 0 else f"ρ_{{n-{offset}}}"


RHO_COLUMNS: tuple[str, ...] = tuple(rho_column(x) for x in RHO_OFFSETS)
TABLE1_COLUMNS: tuple[str, ...] = (
    ("Model", "Dataset", "|f_b|") + ACC_COLUMNS + RHO_COLUMNS + ("Reached", "Trials")
)


# --------------------------------------------------------------------------------------------
# Loading


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read stored results: the runner's ``results.json`` or a Ray Tune experiment directory.

    ``path`` may be ``results.json`` itself, a directory holding it, or a Tune experiment
    directory (``search_meta.json`` plus trial directories with ``result.json``). Returns the
    results dict (``config``, ``num_layers``, ``baseline``, ``trials`` as
    ``TrialResult.to_dict()`` dicts; a Tune directory adds ``unfinished``). Raises
    :class:`ReportError` when the path holds neither layout or a file is unreadable.
    """
    p = Path(path)
    if p.is_file() and p.name == RESULTS_FILE:
        return _load_runner_results(p)
    if not p.is_dir():
        raise ReportError(f"{p} is not a directory with {RESULTS_FILE} or {SEARCH_META_FILE}")
    # The trial directories are the primary record of a search; a results.json next to them
    # (if the search layer ever writes one) could be stale after a resume, so Tune wins.
    if (p / SEARCH_META_FILE).is_file():
        return _load_tune_results(p)
    if (p / RESULTS_FILE).is_file():
        return _load_runner_results(p / RESULTS_FILE)
    raise ReportError(
        f"{p} holds neither {RESULTS_FILE} (runner output) nor {SEARCH_META_FILE} "
        "(a Tune search directory); pass the search's experiment directory"
    )


def _read_json_or_fail(path: Path) -> Any:
    try:
        return read_json(path)
    except CorruptFileError as err:
        raise ReportError(str(err)) from None
    except OSError as err:
        raise ReportError(f"cannot read {path}: {err.strerror}") from None


def _require_header(data: Any, source: Path) -> None:
    if not isinstance(data, dict):
        raise ReportError(f"{source} must hold a JSON object, got {type(data).__name__}")
    missing = [k for k in ("config", "num_layers", "baseline") if k not in data]
    if missing:
        raise ReportError(f"{source} lacks key(s) {', '.join(missing)}")
    if not isinstance(data["config"], dict) or not isinstance(data["baseline"], dict):
        raise ReportError(f"{source}: 'config' and 'baseline' must be JSON objects")
    if not isinstance(data["num_layers"], int) or data["num_layers"] < 1:
        raise ReportError(f"{source}: 'num_layers' must be a positive integer")


def _load_runner_results(path: Path) -> dict[str, Any]:
    data = _read_json_or_fail(path)
    _require_header(data, path)
    trials = data.get("trials")
    if not isinstance(trials, list):
        raise ReportError(f"{path}: 'trials' must be a list")
    for i, t in enumerate(trials):
        _trial_from_dict(t, f"{path} trial #{i}")
    return {**data, "source": str(path), "unfinished": data.get("unfinished", [])}


def _load_tune_results(root: Path) -> dict[str, Any]:
    meta = _read_json_or_fail(root / SEARCH_META_FILE)
    _require_header(meta, root / SEARCH_META_FILE)
    trials: list[dict[str, Any]] = []
    unfinished: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    # Sorted so that the trial order (and hence every output file) is reproducible.
    for result_file in sorted(root.rglob(TUNE_RESULT_FILE)):
        trial_dir = result_file.parent
        rel = str(trial_dir.relative_to(root))
        final, last, reports = _scan_tune_result(result_file)
        if final is None and last is not None and last.get("failure"):
            # Ended on purpose without a result (e.g. diverged): a failed trial, with its reason.
            failed.append(_failed_entry(rel, trial_dir, last))
            continue
        if final is None:
            unfinished.append(_unfinished_entry(rel, trial_dir, last, reports))
            continue
        try:
            trial = json.loads(final)
        except (TypeError, json.JSONDecodeError):
            raise ReportError(
                f"{result_file}: '{TRIAL_RESULT_KEY}' is not a JSON string of a trial result"
            ) from None
        _trial_from_dict(trial, str(result_file))
        trials.append({**trial, "trial_dir": rel})
    return {
        **meta,
        "trials": trials,
        "unfinished": unfinished,
        "failed": failed,
        "source": str(root),
    }


def _scan_tune_result(path: Path) -> tuple[str | None, dict[str, Any] | None, int]:
    """(the last ``trial_result_json`` value, the last report, the number of reports).

    A line cut off by a crash is skipped rather than failing the whole report: the trial it
    belongs to simply counts as unfinished unless an earlier complete line finished it.
    """
    final: str | None = None
    last: dict[str, Any] | None = None
    reports = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as err:
        raise ReportError(f"cannot read {path}: {err.strerror}") from None
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
    rel: str, trial_dir: Path, last: dict[str, Any] | None, reports: int
) -> dict[str, Any]:
    entry: dict[str, Any] = {"trial_dir": rel, "reports": reports}
    params = trial_dir / "params.json"
    if params.is_file():
        # params are a courtesy for the reader; a broken file must not stop the report.
        with contextlib.suppress(OSError, json.JSONDecodeError):
            entry["params"] = json.loads(params.read_text())
    if last is not None:
        for key in ("epoch", "training_iteration", "fb_layers", "val_robust_acc", "gap"):
            if key in last:
                entry[key] = last[key]
    return entry


def _failed_entry(rel: str, trial_dir: Path, last: dict[str, Any]) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------------
# Table 1


def _display(name: Any) -> str:
    return _DISPLAY_NAMES.get(str(name).lower(), str(name))


def _labels(config: dict[str, Any]) -> tuple[str, str]:
    """(model, dataset) as a reader knows them: a narrowed model shows its width, a file-based
    dataset (npz, imagefolder) its file or directory name."""
    model = _display(config.get("model", "?"))
    width = config.get("width", 1.0)
    if width not in (None, 1, 1.0):
        model += f" (width {width:g})"
    dataset = _display(config.get("dataset", "?"))
    if config.get("dataset") in ("npz", "imagefolder") and config.get("data_path"):
        dataset = Path(str(config["data_path"])).stem or dataset
    return model, dataset


def rho_in_fb(summary: DepthSummary, num_layers: int, offset: int) -> float:
    """ρ of the pair ending at layer n − ``offset``, or NaN when that pair is not in f_b.

    The pair (j−1, j) belongs to f_b's analysis when j ≥ a + 1 = n − |f_b| + 1 (the first pair
    links f*_a's last layer to f_b's first), and j ≥ 2 so that a layer j − 1 exists.
    """
    j = num_layers - offset
    first = max(num_layers - summary.fb_layers + 1, 2)
    if j < first:
        return math.nan
    return float(summary.rho.get(j, math.nan))


def table1(results: dict[str, Any]) -> pd.DataFrame:
    """Table 1 of the paper, one row per split depth (smallest |f_b| first).

    Accuracies are fractions (``Diff`` = Acc* − Acc), ρ in bits, NaN where a pair lies outside
    f_b or was not measured. ``Acc`` is the best trial's, ``ρ_j`` the minimum over trials.
    """
    n = int(results["num_layers"])
    model, dataset = _labels(results["config"])
    rows = []
    for s in depth_summaries(results):
        row: dict[str, Any] = {
            "Model": model,
            "Dataset": dataset,
            "|f_b|": s.fb_layers,
            "Acc*": s.acc_star,
            "Acc_sr": s.acc_sr,
            "Acc": s.acc,
            "Diff": s.diff,
        }
        for x in RHO_OFFSETS:
            row[rho_column(x)] = rho_in_fb(s, n, x)
        row["Reached"] = s.reached
        row["Trials"] = s.trials
        rows.append(row)
    df = pd.DataFrame(rows, columns=list(TABLE1_COLUMNS))
    # An empty frame would otherwise give every column dtype object.
    return df.astype({c: float for c in ACC_COLUMNS + RHO_COLUMNS})


def table1_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table: accuracies in percent (1 decimal), ρ in bits (2)."""

    def cell(col: str, v: Any) -> str:
        if isinstance(v, float) and math.isnan(v):
            return ""
        if col in ACC_COLUMNS:
            return f"{100 * v:.1f}"
        if col in RHO_COLUMNS:
            return f"{v:.2f}"
        if col == "Reached":
            return "yes" if v else "no"
        return str(v)

    cols = list(df.columns)
    # A literal "|" (as in |f_b|) would split the cell; GitHub markdown wants it escaped.
    header = [c.replace("|", "\\|") + (" (%)" if c in ACC_COLUMNS else "") for c in cols]
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if c in ("Model", "Dataset") else "---:" for c in cols) + "|")
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(cell(c, r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Figure 1


def rho_vs_depth_figure(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """The paper's Fig. 1: ρ against layer depth x (pair ending at layer n − x), per |f_b|.

    Written atomically as a PNG; an empty figure with a note when no MI was measured.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: clusters and CI have no display
    import matplotlib.pyplot as plt

    n = int(results["num_layers"])
    model, dataset = _labels(results["config"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    plotted = 0
    for s in depth_summaries(results):
        points = sorted((n - j, v) for j, v in s.rho.items() if not math.isnan(v))
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=f"|f_b| = {s.fb_layers}")
        plotted += 1
    ax.set_xlabel("layer depth x (pair ending at layer n − x)")
    ax.set_ylabel("ρ = min over trials of I (bits)")
    # Two lines: a width-scaled model name and a file-stem dataset name overflow one.
    ax.set_title(f"{model} / {dataset}\nconnectivity ρ in f_b (n = {n})")
    ax.grid(True, alpha=0.3)
    if plotted:
        ax.legend(title="split depth")
        ax.xaxis.get_major_locator().set_params(integer=True)
    else:
        ax.text(
            0.5,
            0.5,
            "no mutual information measured",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue())
    return out


# --------------------------------------------------------------------------------------------
# Minimal split


def _num(v: float) -> float | None:
    """JSON has no NaN; a missing number is null."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def minimal_split(results: dict[str, Any]) -> dict[str, Any]:
    """The smallest |f_b| whose trials reached Acc* − k, with the evidence for it.

    ``minimal_fb_layers`` is null when no depth reached. ``evidence`` lists every depth tried
    (best Acc, whether some trial reached, trials and trial-epochs spent); ``failed`` lists
    trials that ended without a result and why (e.g. a diverged loss), ``unfinished`` trials that
    never reported a final result; neither is counted in the evidence. ``warning`` is set when
    the chosen depth reached on the validation check but its test Diff exceeds k (the check's
    attack or split overstated robustness), else null.
    """
    summaries = depth_summaries(results)
    best = minimal_depth(summaries)
    chosen = next((s for s in summaries if s.fb_layers == best), None)
    baseline = results.get("baseline", {})
    acc_star = chosen.acc_star if chosen else baseline.get("acc_star")
    config = results["config"]
    k = config.get("k")
    warning = None
    if chosen and k is not None and chosen.diff > k:
        attack = config.get("stop_attack") or config.get("eval_attack") or config.get("attack")
        warning = (
            f"on the test split Acc* - Acc = {100 * chosen.diff:.1f} points > k: the validation "
            f"check ({attack}) overstated robustness; stop on the reported attack to trust |f_b|"
        )
    return {
        "model": config.get("model"),
        "dataset": config.get("dataset"),
        "num_layers": int(results["num_layers"]),
        "k": config.get("k"),
        "acc_star": _num(acc_star) if acc_star is not None else None,
        "minimal_fb_layers": best,
        "acc": _num(chosen.acc) if chosen else None,
        "diff": _num(chosen.diff) if chosen else None,
        "acc_sr": _num(chosen.acc_sr) if chosen else None,
        "warning": warning,
        "evidence": [
            {
                "fb_layers": s.fb_layers,
                "acc": _num(s.acc),
                "acc_sr": _num(s.acc_sr),
                "diff": _num(s.diff),
                "reached": s.reached,
                "trials": s.trials,
                "epochs": s.epochs,
                "best_trial": s.best_trial,
            }
            for s in summaries
        ],
        "failed": list(results.get("failed", [])),
        "unfinished": list(results.get("unfinished", [])),
    }


# --------------------------------------------------------------------------------------------
# All files


def write_report(results: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``table1.csv``, ``table1.md``, ``rho_vs_depth.png`` and ``minimal_split.json``.

    Every file is written atomically, so a reader never sees half a report. Returns the paths.
    """
    out = Path(out_dir)
    df = table1(results)
    paths = {
        "table1_csv": out / "table1.csv",
        "table1_md": out / "table1.md",
        "figure": out / "rho_vs_depth.png",
        "minimal_split": out / "minimal_split.json",
    }
    atomic_write_bytes(paths["table1_csv"], df.to_csv(index=False, float_format="%.6g").encode())
    atomic_write_bytes(paths["table1_md"], table1_markdown(df).encode())
    rho_vs_depth_figure(results, paths["figure"])
    write_json(paths["minimal_split"], minimal_split(results))
    return paths


def _summary_lines(results: dict[str, Any], paths: dict[str, Path]) -> Iterable[str]:
    m = minimal_split(results)
    if m["minimal_fb_layers"] is None:
        yield "no split depth reached Acc* - k"
    else:
        yield (
            f"minimal robust split: |f_b| = {m['minimal_fb_layers']} "
            f"(Acc {100 * m['acc']:.1f}% vs Acc* {100 * m['acc_star']:.1f}%, k = {m['k']})"
        )
    if m["warning"]:
        yield f"warning: {m['warning']}"
    for f in m["failed"]:
        yield f"failed trial |f_b| = {f.get('fb_layers', '?')}: {f['failure']}"
    if m["unfinished"]:
        yield f"{len(m['unfinished'])} unfinished trial(s) not counted"
    for p in paths.values():
        yield f"wrote {p}"


def main(argv: list[str] | None = None) -> int:
    """``python -m semirobust_ray.report DIR [--out OUT]``: rebuild the report from DIR."""
    parser = argparse.ArgumentParser(
        prog="python -m semirobust_ray.report",
        description="Rebuild Table 1, the ρ-vs-depth figure and minimal_split.json from stored "
        "results (a runner results.json or a Tune search directory).",
    )
    parser.add_argument("dir", help="search directory (or results.json)")
    parser.add_argument("--out", default=None, help="where to write (default: DIR itself)")
    args = parser.parse_args(argv)
    try:
        results = load_results(args.dir)
        src = Path(args.dir)
        out = Path(args.out) if args.out else (src.parent if src.is_file() else src)
        paths = write_report(results, out)
    except (ValueError, CorruptFileError) as err:  # ReportError and config errors alike
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot write the report: {err}", file=sys.stderr)
        return 2
    print(table1_markdown(table1(results)), end="")
    for line in _summary_lines(results, paths):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
