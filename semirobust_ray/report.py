"""Table 1, Fig. 1, the frontier and the answer, rebuilt from stored results alone.

``semirobust report DIR`` (its command line is in :mod:`semirobust_ray.cli`) reads either the
runner's ``results.json`` or a Ray Tune experiment directory (see :mod:`semirobust_ray.results`)
and writes, into ``DIR``:

- ``table1.csv``: one row per split depth; accuracies as FRACTIONS (six significant digits, so
  the CSV can be compared and re-plotted without the table's rounding), ρ in bits, in both
  readings: ``ρ_j`` the minimum over trials (Algorithm 1's pseudo-code), ``ρ_j (best)`` the
  best trial's (the paper's prose reports the trial with the highest Acc).
- ``table1.md``: the same rows as the paper prints them (accuracies in PERCENT with one
  decimal, ρ in bits with two decimals, an empty cell where a pair lies outside f_b), followed by
  the answer in both readings, in plain words.
- ``rho_vs_depth.png``: the paper's Fig. 1, ρ (min over trials) against layer depth x.
- ``frontier.csv`` / ``frontier.png``: every trial of every depth tried and what it cost
  (:mod:`semirobust_ray.frontier`).
- ``minimal_split.json``: the answer (the smallest robust f*_a and the smallest f_b), whether
  each is established, the premise a partial search assumed and every outcome that contradicts
  it, and the evidence.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import numpy as np
import pandas as pd

from semirobust_ray.algorithm1 import DepthSummary, TrialResult
from semirobust_ray.answer import search_answer
from semirobust_ray.config import resolve_stop_attack
from semirobust_ray.frontier import frontier_figure, frontier_table
from semirobust_ray.paired import accuracy_se, noise_floor, unpaired_se
from semirobust_ray.plots import new_figure, png_bytes
from semirobust_ray.results import (
    candidate_depths,
    depth_summaries,
    labels,
    trial_results,
)
from semirobust_ray.storage import Store

# Table 1 reports ρ for the pairs ending at layers n, n−3, n−7, n−11 and n−15 (x = 0, 3, ...).
RHO_OFFSETS: tuple[int, ...] = (0, 3, 7, 11, 15)
ACC_COLUMNS: tuple[str, ...] = ("Acc*", "Acc_sr", "Acc", "Diff")


def rho_column(offset: int, best: bool = False) -> str:
    """The Table 1 column of the pair ending at layer n − ``offset``: the minimum over trials,
    or with ``best`` the best trial's value."""
    name = "ρ_n" if offset == 0 else f"ρ_{{n-{offset}}}"
    return f"{name} (best)" if best else name


RHO_COLUMNS: tuple[str, ...] = tuple(rho_column(x) for x in RHO_OFFSETS)
RHO_BEST_COLUMNS: tuple[str, ...] = tuple(rho_column(x, best=True) for x in RHO_OFFSETS)
TABLE1_COLUMNS: tuple[str, ...] = (
    ("Model", "Dataset", "|f_b|")
    + ACC_COLUMNS
    + RHO_COLUMNS
    + RHO_BEST_COLUMNS
    + ("Reached", "Trials", "p(d)")
)


def rho_in_fb(summary: DepthSummary, num_layers: int, offset: int, best: bool = False) -> float:
    """ρ of the pair ending at layer n − ``offset`` (min over trials, or with ``best`` the best
    trial's), or NaN when that pair is not in f_b.

    The pair (j−1, j) belongs to f_b's analysis when j ≥ a + 1 = n − |f_b| + 1 (the first pair
    links f*_a's last layer to f_b's first), and j ≥ 2 so that a layer j − 1 exists.
    """
    j = num_layers - offset
    first = max(num_layers - summary.fb_layers + 1, 2)
    if j < first:
        return math.nan
    return float((summary.rho_best if best else summary.rho).get(j, math.nan))


def table1(results: dict[str, Any], answer: dict[str, Any] | None = None) -> pd.DataFrame:
    """Table 1 of the paper, one row per split depth (smallest |f_b| first).

    Accuracies are fractions (``Diff`` = Acc* − Acc), ρ in bits, NaN where a pair lies outside
    f_b or was not measured. ``Acc`` is the best trial's, ``ρ_j`` the minimum over trials and
    ``ρ_j (best)`` the best trial's. ``Reached`` counts the trials that came within k,
    ``p(d)`` is the monotone fit of the reach probability the answer is read from
    (``answer``: :func:`minimal_split` of ``results``, computed here when not given).
    """
    n = int(results["num_layers"])
    answer = answer or minimal_split(results)
    reach = {r["fb_layers"]: r for r in answer["answer"]["reach"]}
    model, dataset = labels(results["config"])
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
            row[rho_column(x, best=True)] = rho_in_fb(s, n, x, best=True)
        r = reach.get(s.fb_layers)
        row["Reached"] = r["reached"] if r else int(s.reached)
        row["Trials"] = r["trials"] if r else s.trials
        row["p(d)"] = r["fit"] if r else math.nan
        rows.append(row)
    df = pd.DataFrame(rows, columns=list(TABLE1_COLUMNS))
    # An empty frame would otherwise give every column dtype object.
    return df.astype({c: float for c in ACC_COLUMNS + RHO_COLUMNS + RHO_BEST_COLUMNS + ("p(d)",)})


def table1_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table: accuracies in percent (1 decimal), ρ in bits (2).

    ρ columns empty in every row (ρ_{n-15} of an 8-layer AlexNet) are left out; ``table1.csv``
    keeps them, so its columns are the same for every network.
    """
    # Not DataFrame.to_markdown: tabulate re-parses cells (60.0 -> 60), keeps "|" and pads cells.

    def cell(col: str, v: Any) -> str:
        if isinstance(v, float) and math.isnan(v):
            return ""
        if col in ACC_COLUMNS:
            return f"{100 * v:.1f}"
        if col in RHO_COLUMNS or col in RHO_BEST_COLUMNS:
            return f"{v:.2f}"
        if col == "p(d)":
            return f"{v:.2f}"
        return str(v)

    rho = set(RHO_COLUMNS) | set(RHO_BEST_COLUMNS)
    cols = [c for c in df.columns if c not in rho or not df[c].isna().all()]
    # A literal "|" (as in |f_b|) would split the cell; GitHub markdown wants it escaped.
    header = [c.replace("|", "\\|") + (" (%)" if c in ACC_COLUMNS else "") for c in cols]
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if c in ("Model", "Dataset") else "---:" for c in cols) + "|")
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(cell(c, r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Figure 1


def rho_vs_depth_figure(results: dict[str, Any]) -> bytes:
    """``rho_vs_depth.png``: :func:`rho_vs_depth_plot` as PNG bytes."""
    return png_bytes(rho_vs_depth_plot(results))


def rho_vs_depth_plot(results: dict[str, Any]) -> Any:
    """The paper's Fig. 1: ρ against layer depth x (pair ending at layer n − x), per |f_b|.

    It shows ρ_j as Algorithm 1's pseudo-code takes it, the minimum over a depth's trials (the
    best trial's values are in ``table1.csv``). A matplotlib Figure; empty, with a note, when no
    MI was measured.
    """
    n = int(results["num_layers"])
    model, dataset = labels(results["config"])
    fig, ax = new_figure(figsize=(6.4, 4.2), dpi=120)
    plotted = 0
    for s in depth_summaries(results):
        points = sorted((n - j, v) for j, v in s.rho.items() if not math.isnan(v))
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=f"|f_b| = {s.fb_layers}")
        plotted += 1
    ax.set_xlabel("layer depth x (pair ending at layer n − x)")
    ax.set_ylabel(r"$\rho_j = \min_t\, I_{j,t}$ (bits)")
    # Two lines: a width-scaled model name and a file-stem dataset name overflow one.
    ax.set_title(
        f"{model} / {dataset}\nconnectivity ρ in f_b (n = {n}), min over the trials with ρ measured"
    )
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
    return fig


# --------------------------------------------------------------------------------------------
# The answer


def _num(v: float | None) -> float | None:
    """JSON has no NaN; a missing number is null."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def minimal_split(results: dict[str, Any]) -> dict[str, Any]:
    """The answer of the search, in both readings, with its uncertainty and the evidence.

    Keys: ``minimise`` (the target) and ``answer`` (that target's reading); the two readings
    ``smallest_robust_fa`` and ``smallest_fb``, each with ``fb_layers`` (the point answer |f_b|,
    null when no depth reaches), ``robust_layers`` (a = n − |f_b|), ``statement`` (plain words),
    ``interval`` (its 90 % interval as |f_b| and as a, a low first), ``interval_statement``,
    ``width``, ``determined`` (the interval is at most ``answer_width`` candidate steps wide),
    ``why``, ``reach`` (every depth tried: trials, how many reached, the rate with its Wilson
    interval, the monotone fit p(d), the best-of-T figure), and the depth's ``acc``, ``diff``,
    ``acc_sr``; ``reach_probability`` (q), ``level``, ``answer_width``, ``stop`` (why the search
    ended); ``premise`` and ``premise_violations`` (depths whose own rate is at least q beyond
    depths whose rate is not: the fit pools them); ``test_noise`` (the test split's size and
    standard errors, :func:`_test_noise`); ``warning`` (set when the answer's test Diff exceeds
    k, with its standard error); ``cost`` (seconds of all trials, by kind, beside the baseline's
    adversarial training); ``evidence`` (every depth tried); ``failed`` (trials that ended
    without a result, and why; counted as not reaching) and ``unfinished`` (trials that never
    reported a final result, not counted).
    """
    summaries = depth_summaries(results)
    by_depth = {s.fb_layers: s for s in summaries}
    config = results["config"]
    n = int(results["num_layers"])
    summary = search_answer(results, candidate_depths(results))
    for key in ("answer", "smallest_robust_fa", "smallest_fb"):
        chosen = by_depth.get(summary[key]["fb_layers"])
        summary[key].update(
            {f: _num(getattr(chosen, f)) if chosen else None for f in ("acc", "diff", "acc_sr")}
        )
    chosen = by_depth.get(summary["answer"]["fb_layers"])
    baseline = results.get("baseline", {})
    acc_star = chosen.acc_star if chosen else baseline.get("acc_star")
    reach = {r["fb_layers"]: r for r in summary["answer"]["reach"]}
    return {
        "model": config.get("model"),
        "dataset": config.get("dataset"),
        "num_layers": n,
        "epochs": config.get("epochs"),
        "k": config.get("k"),
        "acc_star": _num(acc_star),
        # Given networks (a baseline: section): which, with their files' SHA-256; None: trained.
        "baseline_source": baseline.get("source"),
        **summary,
        "noise_floor": _noise_floor(results),
        "test_noise": _test_noise(config, baseline),
        "warning": _test_diff_warning(chosen, config, baseline),
        "cost": _cost(trial_results(results), baseline),
        "evidence": [_evidence(s, n, reach.get(s.fb_layers)) for s in summaries],
        "failed": list(results.get("failed", [])),
        "unfinished": list(results.get("unfinished", [])),
    }


def _noise_floor(results: dict[str, Any]) -> dict[str, Any] | None:
    """:func:`semirobust_ray.paired.noise_floor` of the search's validation check, with the
    median paired standard error its trials measured (None for results stored before the
    baseline recorded its validation size)."""
    baseline, k = results.get("baseline", {}), results["config"].get("k")
    if baseline.get("val_images") is None or baseline.get("acc_star_val") is None or k is None:
        return None
    floor = noise_floor(baseline["acc_star_val"], baseline["val_images"], k)
    measured = [
        t["gap_se"]
        for t in results.get("trials", [])
        if t.get("gap_se") is not None and t.get("val_images")
    ]
    floor["trial_se_median"] = float(np.median(measured)) if measured else None
    return floor


def _test_images(config: dict[str, Any], baseline: dict[str, Any]) -> int | None:
    """How many test images Acc* and the trials' Acc were measured on; None if unknown."""
    # Older baselines did not record it; eval_samples capped the test images they used.
    n = baseline.get("test_images") or config.get("eval_samples")
    return int(n) if n else None


def _test_noise(config: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any] | None:
    """The test split's sampling error: ``test_images``, ``acc_star_se`` (one robust accuracy
    at Acc*) and ``diff_se`` (a Diff between two unpaired accuracies at Acc*, an upper bound);
    fractions, None when the number of test images is unknown."""
    n, acc_star = _test_images(config, baseline), baseline.get("acc_star")
    if n is None or acc_star is None:
        return None
    return {
        "test_images": n,
        "acc_star_se": accuracy_se(acc_star, n),
        "diff_se": unpaired_se(acc_star, acc_star, n),
    }


def _test_diff_warning(
    chosen: DepthSummary | None, config: dict[str, Any], baseline: dict[str, Any]
) -> str | None:
    """Why the answer cannot be trusted when it reached on the validation check but its test
    Diff exceeds k, with the Diff's standard error; None when it can.

    The Diff is itself measured on a finite test sample: only when it exceeds k by more than
    twice its (unpaired, so conservative) standard error does the warning say the check
    overstated robustness; within that, it says the test sample cannot tell."""
    k = config.get("k")
    if not (chosen and k is not None and chosen.diff > k):
        return None
    eval_attack = config.get("eval_attack") or config.get("attack")
    attack = resolve_stop_attack(config.get("stop_attack"), eval_attack)
    n = _test_images(config, baseline)
    where = f"|f_b| = {chosen.fb_layers}"
    if not n:
        return (
            f"on the test split Acc* - Acc = {100 * chosen.diff:.1f} points > k at the "
            f"answer's {where}: the validation check ({attack}) may have overstated robustness; "
            "stop on the reported attack to trust the answer"
        )
    se = unpaired_se(chosen.acc_star, chosen.acc, n)
    measured = (
        f"on the test split Acc* - Acc = {100 * chosen.diff:.1f} ± {100 * se:.1f} points "
        f"(standard error, {n:,} test images) > k at the answer's {where}"
    )
    if chosen.diff - k > 2 * se:
        return (
            f"{measured}: the validation check ({attack}) overstated robustness; stop on the "
            "reported attack to trust the answer"
        )
    return (
        f"{measured}, within twice its standard error of k: more test images (eval_samples) "
        f"would tell whether the validation check ({attack}) overstated robustness"
    )


def _cost(trials: list[TrialResult], baseline: dict[str, Any]) -> dict[str, Any]:
    """Seconds of all trials, by kind, beside the baseline's adversarial training."""
    return {
        "trials": len(trials),
        "trial_epochs": sum(t.epochs_run for t in trials),
        "train_seconds": sum(t.train_seconds for t in trials),
        "eval_seconds": sum(t.eval_seconds for t in trials),
        "mi_seconds": sum(t.mi_seconds for t in trials),
        "baseline_adv_train_seconds": _num(baseline.get("adv_train_seconds")),
    }


def _evidence(s: DepthSummary, num_layers: int, reach: dict[str, Any] | None) -> dict[str, Any]:
    """One depth tried, as ``minimal_split.json``'s ``evidence`` lists it: its best trial's
    numbers, its trials, how many reached and the fitted reach probability."""
    return {
        "fb_layers": s.fb_layers,
        "robust_layers": num_layers - s.fb_layers,
        "acc": _num(s.acc),
        "acc_sr": _num(s.acc_sr),
        "diff": _num(s.diff),
        "reached": reach["reached"] if reach else int(s.reached),
        "trials": s.trials,
        "p_fit": reach["fit"] if reach else None,
        "epochs": s.epochs,
        "best_trial": s.best_trial,
    }


def answer_lines(answer: dict[str, Any]) -> list[str]:
    """The answer of :func:`minimal_split` in plain words, both readings, for people."""
    lines = []
    for key in ("smallest_robust_fa", "smallest_fb"):
        reading = answer[key]
        line = reading["statement"][0].upper() + reading["statement"][1:]
        # acc is null until the depth's best trial has its test evaluation (test_eval: best).
        if reading["fb_layers"] is not None and reading["acc"] is not None:
            line += f" (Acc {100 * reading['acc']:.1f}% vs Acc* {100 * answer['acc_star']:.1f}%)"
        line += f"; {reading['interval_statement']}"
        if not reading["determined"]:
            line += f" ({reading['why']})"
        lines.append(line + ".")
    lines.append(f"Search: {answer['stop']}.")
    for v in answer["premise_violations"]:
        missed = ", ".join(str(d) for d in v["missed_before"])
        lines.append(
            f"Against the premise ({answer['premise']}): |f_b| = {v['reached']} reached in at "
            f"least {answer['reach_probability']:g} of its trials although |f_b| = {missed} did "
            "not; the monotone fit pools them."
        )
    source = answer.get("baseline_source")
    if source:
        lines.append(
            f"Acc* is that of the given robust network {source['robust']['spec']}; f_b starts "
            f"from the given regular network {source['regular']['spec']} (neither was trained)."
        )
    cost = answer["cost"]
    if cost["trials"]:
        spent = cost["train_seconds"] + cost["eval_seconds"] + cost["mi_seconds"]
        line = (
            f"Compute: {cost['trials']} trials, {cost['trial_epochs']} trial-epochs, {spent:.0f} s "
            f"(train {cost['train_seconds']:.0f}, evaluation {cost['eval_seconds']:.0f}, "
            f"MI {cost['mi_seconds']:.0f})"
        )
        if cost["baseline_adv_train_seconds"] is not None:
            line += (
                f"; the baseline's adversarial training took "
                f"{cost['baseline_adv_train_seconds']:.0f} s"
            )
        lines.append(line + ".")
    floor = answer.get("noise_floor")
    if floor and floor["warning"]:
        lines.append(f"Noise floor: {floor['warning']}.")
    test = answer.get("test_noise")
    if test:
        lines.append(
            f"Test split: Acc*, Acc_sr and Acc on {test['test_images']:,} images, each "
            f"± {100 * test['acc_star_se']:.1f} points (standard error at Acc*); a Diff "
            f"± {100 * test['diff_se']:.1f} at most (unpaired)."
        )
    if answer["warning"]:
        lines.append(f"Warning: {answer['warning']}.")
    return lines


# --------------------------------------------------------------------------------------------
# All files


REPORT_FILES: dict[str, str] = {
    "table1_csv": "table1.csv",
    "table1_md": "table1.md",
    "figure": "rho_vs_depth.png",
    "frontier_csv": "frontier.csv",
    "frontier_png": "frontier.png",
    "minimal_split": "minimal_split.json",
}


def write_report(
    results: dict[str, Any],
    out: Store | str | os.PathLike,
    answer: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Write ``table1.csv``, ``table1.md``, ``rho_vs_depth.png``, ``frontier.csv``,
    ``frontier.png`` and ``minimal_split.json`` into ``out`` (a directory, a storage URI or a
    :class:`~semirobust_ray.storage.Store`).

    Every file is written atomically, so a reader never sees half a report. Returns where each
    file is (keys of :data:`REPORT_FILES`).
    """
    store = Store.of(out)
    answer = answer or minimal_split(results)  # once: the table, text, figure and JSON share it
    df = table1(results, answer)
    document = table1_markdown(df) + "\n" + "\n\n".join(answer_lines(answer)) + "\n"
    contents = {
        "table1_csv": df.to_csv(index=False, float_format="%.6g").encode(),
        "table1_md": document.encode(),
        "figure": rho_vs_depth_figure(results),
        "frontier_csv": frontier_table(results, answer)
        .to_csv(index=False, float_format="%.6g")
        .encode(),
        "frontier_png": frontier_figure(results, answer),
    }
    for key, data in contents.items():
        store.write_bytes(REPORT_FILES[key], data)
    store.write_json(REPORT_FILES["minimal_split"], answer)
    return {key: store.uri(name) for key, name in REPORT_FILES.items()}


if __name__ == "__main__":  # python -m semirobust_ray.report DIR: the same as semirobust report
    from semirobust_ray.cli import report_main

    sys.exit(report_main())
