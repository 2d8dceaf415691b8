"""The semirobustness frontier: every depth tried, every trial, and what it cost.

The answer of a search is one depth; the frontier is the evidence behind it. For every finished
trial: Acc* − Acc (test), whether it reached Acc* − k (on the validation check), the epochs it
took, ρ_{a+1} (the MI between f*_a's last layer and f_b's first, the dependency the paper's
Theorem 2 turns on) and the compute it spent, beside the baseline's adversarial training time,
so a user sees what training only f_b saved.

- ``frontier.csv``: one row per finished trial (columns in :data:`FRONTIER_COLUMNS`); the
  ``depth_*`` columns repeat the depth's summary on each of its rows.
- ``frontier.png``: above, each depth's reach probability p(d) (the rate of its trials with
  their Wilson interval, the monotone fit the answer is read from, the level q) with the answer
  and its 90 % interval; below, every trial's validation gap to Acc*_val (the paired check it
  was judged by) with its standard error (filled: reached), the test Diff of the trials
  evaluated on the test split (each depth's best under ``test_eval: best``) joined per depth,
  the k band, ρ_{a+1} on a second axis in both readings.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from semirobust_ray.algorithm1 import DepthSummary
from semirobust_ray.plots import png_bytes
from semirobust_ray.results import depth_summaries, labels, trial_results

FRONTIER_COLUMNS: tuple[str, ...] = (
    "fb_layers",  # |f_b|
    "robust_layers",  # a = n - |f_b|: the layers of f*_a
    "trial",
    "best_trial",  # this trial has the depth's best Acc
    "acc_star",
    "acc_sr",
    "acc",
    "diff",  # Acc* - Acc, test split (NaN for a trial without its test evaluation)
    "val_gap",  # Acc*_val - the trial's validation accuracy, the paired check it was judged by
    "val_gap_se",  # the paired standard error of val_gap
    "reached",  # within k of Acc* on the validation check
    "epochs_run",
    "epochs_to_reach",
    "rho_a1",  # this trial's I_{a+1}, bits (NaN when a = 0: f_a has no layer)
    "depth_reached",  # how many of the depth's trials reached
    "depth_trials",
    "depth_p_fit",  # the monotone fit of the depth's reach probability p(d)
    "depth_diff",  # the best trial's Diff
    "depth_rho_a1_min",  # rho_{a+1} as the pseudo-code takes it: min over trials
    "depth_rho_a1_best",  # rho_{a+1} of the best trial, as the paper's prose reports it
    "answer",  # this depth is the search's point answer (its ``minimise`` target)
    "in_interval",  # this depth lies inside the answer's 90 % interval
    "train_seconds",
    "eval_seconds",
    "mi_seconds",
    "baseline_adv_train_seconds",
)


def rho_a1(summary_or_rho: DepthSummary | dict[int, float], num_layers: int, fb: int) -> float:
    """ρ_{a+1} from a ``{j: bits}`` mapping (or a summary's min-over-trials ρ); NaN if absent."""
    rho = summary_or_rho.rho if isinstance(summary_or_rho, DepthSummary) else summary_or_rho
    return float(rho.get(num_layers - fb + 1, math.nan))


def _answer(results: dict[str, Any], answer: dict[str, Any] | None) -> dict[str, Any]:
    from semirobust_ray.report import minimal_split  # the report builds on this module

    return answer or minimal_split(results)


def in_interval(reading: dict[str, Any], fb_layers: int, target: str) -> bool:
    """Whether ``fb_layers`` lies inside a reading's 90 % interval. Its ends are in premise
    order; a None end is "no depth reaches", which sits before every candidate in that order
    (below |f_b| = 1 for ``robust_fa``, above the largest for ``fb``)."""
    low, high = reading["interval"]["fb_layers"]
    if high is None:
        return False
    if low is None:
        return fb_layers <= high if target == "robust_fa" else fb_layers >= high
    return min(low, high) <= fb_layers <= max(low, high)


def val_gap(trial: Any) -> tuple[float, float]:
    """(Acc*_val − the trial's validation accuracy, its paired standard error) of the network
    the trial was judged by; for results stored before the paired check, its best epoch's gap
    and NaN."""
    if trial.gap_images is not None and trial.val_images:
        se = math.nan if trial.gap_se is None else float(trial.gap_se)
        return trial.gap_images / trial.val_images, se
    best = next((h for h in trial.history if h.get("epoch") == trial.best_epoch), None)
    return (float(best["gap"]) if best else math.nan), math.nan


def frontier_table(results: dict[str, Any], answer: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row per finished trial, smallest |f_b| first (see :data:`FRONTIER_COLUMNS`);
    ``answer`` is :func:`semirobust_ray.report.minimal_split` of ``results`` (computed when not
    given)."""
    n = int(results["num_layers"])
    summaries = {s.fb_layers: s for s in depth_summaries(results)}
    answer = _answer(results, answer)
    reading, target = answer["answer"], answer["minimise"]
    reach = {r["fb_layers"]: r for r in reading["reach"]}
    adv_seconds = results.get("baseline", {}).get("adv_train_seconds")
    rows = []
    for t in sorted(trial_results(results), key=lambda t: (t.fb_layers, t.trial)):
        s = summaries[t.fb_layers]
        j = n - t.fb_layers + 1
        gap, gap_se = val_gap(t)
        rows.append(
            {
                "fb_layers": t.fb_layers,
                "robust_layers": n - t.fb_layers,
                "trial": t.trial,
                "best_trial": t.trial == s.best_trial,
                "acc_star": t.acc_star,
                "acc_sr": s.acc_sr,
                "acc": t.acc,
                "diff": t.diff,
                "val_gap": gap,
                "val_gap_se": gap_se,
                "reached": t.reached,
                "epochs_run": t.epochs_run,
                "epochs_to_reach": t.epochs_to_reach,
                "rho_a1": t.mi_bits(j),
                "depth_reached": reach[t.fb_layers]["reached"],
                "depth_trials": reach[t.fb_layers]["trials"],
                "depth_p_fit": reach[t.fb_layers]["fit"],
                "depth_diff": s.diff,
                "depth_rho_a1_min": rho_a1(s.rho, n, t.fb_layers),
                "depth_rho_a1_best": rho_a1(s.rho_best, n, t.fb_layers),
                "answer": t.fb_layers == reading["fb_layers"],
                "in_interval": in_interval(reading, t.fb_layers, target),
                "train_seconds": t.train_seconds,
                "eval_seconds": t.eval_seconds,
                "mi_seconds": t.mi_seconds,
                "baseline_adv_train_seconds": math.nan if adv_seconds is None else adv_seconds,
            }
        )
    df = pd.DataFrame(rows, columns=list(FRONTIER_COLUMNS))
    return df.astype({"epochs_to_reach": "Int64"})


def frontier_figure(results: dict[str, Any], answer: dict[str, Any] | None = None) -> bytes:
    """``frontier.png`` (see the module docstring), as PNG bytes."""
    return png_bytes(frontier_plot(results, answer))


def frontier_plot(results: dict[str, Any], answer: dict[str, Any] | None = None) -> Any:
    """The frontier (see the module docstring) as a matplotlib Figure: the reach probability
    with the answer and its interval above, the trials' Diff below."""
    from matplotlib.figure import Figure

    n = int(results["num_layers"])
    config = results["config"]
    model, dataset = labels(config)
    answer = _answer(results, answer)
    df = frontier_table(results, answer)
    summaries = depth_summaries(results)
    fig = Figure(figsize=(7.6, 8.0), dpi=120)
    top, ax = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1.35])
    top.set_title(
        f"{model} / {dataset}: the semirobustness frontier (n = {n}, "
        f"E = {config.get('epochs', '?')}, {len(df)} trials)\n"
        "above: reach probability p(d); below: each trial's validation gap, the test Diff",
        fontsize=9,
    )
    if df.empty:
        ax.text(0.5, 0.5, "no finished trials", ha="center", va="center", transform=ax.transAxes)
        return fig
    # Every candidate on the axis, tried or not: the interval may hold untried depths.
    candidates = answer["candidates"]
    step = max(1, len(candidates) // 16)
    depths = candidates[::step]
    ax.set_xlim(min(candidates) - 0.6, max(candidates) + 0.6)
    _plot_reach(top, answer, n)
    _plot_trials(ax, df, summaries, float(config.get("k", math.nan)))
    _mark_answers(ax, answer, n)
    ax.set_xlabel("|f_b| (layers adversarially trained)")
    ax.set_ylabel("gap to Acc* (points)")
    ax.set_xticks(depths)
    second = top.secondary_xaxis("top", functions=(lambda v: n - v, lambda v: n - v))
    second.set_xlabel("a = robust layers of f*_a", fontsize=8)
    second.set_xticks([n - d for d in depths])
    for a in (top, ax):
        a.grid(True, alpha=0.25)
    rho = _plot_rho(ax.twinx(), summaries, n)
    top.legend(fontsize=7, loc="best", frameon=False)
    handles, names = ax.get_legend_handles_labels()
    more, more_names = rho.get_legend_handles_labels()
    # Below the axes: inside, it would hide the points it explains.
    ax.legend(
        handles + more,
        names + more_names,
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=3,
        frameon=False,
    )
    fig.tight_layout()
    return fig


def _plot_reach(ax: Any, answer: dict[str, Any], n: int) -> None:
    """Each depth's reach rate with its Wilson interval, the monotone fit, q, and the answer's
    point and 90 % interval (shaded)."""
    reading = answer["answer"]
    reach = reading["reach"]
    depths = [r["fb_layers"] for r in reach]
    rates = [r["rate"] for r in reach]
    err = [[r["rate"] - r["low"] for r in reach], [r["high"] - r["rate"] for r in reach]]
    q = float(answer["reach_probability"])
    low, high = reading["interval"]["fb_layers"]
    if high is not None:
        start = (0.5 if answer["minimise"] == "robust_fa" else n + 0.5) if low is None else low
        ax.axvspan(
            min(start, high) - 0.3,
            max(start, high) + 0.3,
            color="tab:red",
            alpha=0.08,
            lw=0,
            label=f"{100 * reading['interval']['level']:.0f} % interval of the answer",
        )
    ax.errorbar(
        depths,
        rates,
        yerr=err,
        fmt="o",
        color="tab:blue",
        ms=4,
        capsize=2,
        lw=1,
        label="reached / trials (Wilson interval)",
    )
    ax.step(depths, [r["fit"] for r in reach], where="mid", color="tab:purple", lw=1.2,
            label="monotone fit p(d)")  # fmt: skip
    ax.axhline(q, color="0.4", ls="--", lw=1, label=f"q = {q:g}")
    if reading["fb_layers"] is not None:
        ax.axvline(reading["fb_layers"], color="tab:red", lw=1.6,
                   label=f"answer: |f_b| = {reading['fb_layers']} (a = {n - reading['fb_layers']})")  # fmt: skip
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("p(d): P(one trial reaches)")


def _plot_trials(ax: Any, df: pd.DataFrame, summaries: list[DepthSummary], k: float) -> None:
    """The k band; every trial's validation gap, the paired check it was judged by, with its
    standard error (filled: reached); the test Diff of each trial evaluated on the test split,
    and the line through each depth's best."""
    gaps, diffs = 100 * df["val_gap"], 100 * df["diff"]
    shown = pd.concat([gaps + 100 * df["val_gap_se"].fillna(0), gaps, diffs]).dropna()
    low = min(float(shown.min()) if len(shown) else 0.0, 0.0) - 2.0
    high = max(float(shown.max()) if len(shown) else 0.0, 100 * k) + 2.0
    ax.axhspan(low - 100, 100 * k, color="tab:green", alpha=0.08, lw=0)
    ax.axhline(100 * k, color="tab:green", ls="--", lw=1, label=f"k = {100 * k:g} points")
    ax.axhline(0.0, color="0.6", lw=0.6)
    # The trials of a depth side by side around it, so that equal gaps stay visible.
    rank = df.groupby("fb_layers")["trial"].rank(method="first") - 1
    width = max(df.groupby("fb_layers").size().max() - 1, 1)
    x = df["fb_layers"] + 0.3 * (rank / width - 0.5)
    reached = df["reached"].astype(bool)
    err = 100 * df["val_gap_se"]
    for mask, face, label in ((reached, "tab:blue", "reached"), (~reached, "white", "missed")):
        ax.errorbar(
            x[mask], gaps[mask], yerr=err[mask], fmt="o", ms=4.5, mfc=face, mec="tab:blue",
            ecolor="tab:blue", elinewidth=0.8, capsize=1.5, lw=0, zorder=3,
            label=f"trial, {label}: validation gap ± paired SE",
        )  # fmt: skip
    tested = ~df["diff"].isna()
    ax.scatter(x[tested], diffs[tested], marker="D", s=22, color="tab:red", zorder=4,
               label="test Diff (trials evaluated on the test split)")  # fmt: skip
    best = [(s.fb_layers, 100 * s.diff) for s in summaries if not math.isnan(s.diff)]
    if best:
        ax.plot(*zip(*best, strict=True), color="tab:red", lw=1, alpha=0.6)
    ax.set_ylim(low, high)


def _mark_answers(ax: Any, answer: dict[str, Any], n: int) -> None:
    """A vertical line at each reading's point answer: solid red for the search's target."""
    target = answer["minimise"]
    for t, style in ((target, "-"), ("fb" if target == "robust_fa" else "robust_fa", ":")):
        key = "smallest_robust_fa" if t == "robust_fa" else "smallest_fb"
        d = answer[key]["fb_layers"]
        if d is None:
            continue
        what = "smallest robust f*_a" if t == "robust_fa" else "smallest f_b"
        ax.axvline(
            d,
            color="tab:red" if t == target else "0.4",
            ls=style,
            lw=1.6 if t == target else 1.0,
            label=f"{what}: |f_b| = {d} (a = {n - d})",
        )


def _plot_rho(rho: Any, summaries: list[DepthSummary], n: int) -> Any:
    """ρ_{a+1} per depth on the second axis ``rho``, both readings; nothing without MI."""
    depths = [s.fb_layers for s in summaries]
    rho_min = [rho_a1(s.rho, n, s.fb_layers) for s in summaries]
    rho_best = [rho_a1(s.rho_best, n, s.fb_layers) for s in summaries]
    if all(math.isnan(v) for v in rho_min + rho_best):
        return rho
    for values, marker, ls, which in (
        (rho_min, "s", "-", "min over trials"),
        (rho_best, "^", "--", "best trial"),
    ):
        rho.plot(
            depths,
            values,
            color="tab:orange",
            marker=marker,
            ms=4,
            lw=1,
            ls=ls,
            label=rf"$\rho_{{a+1}}$, {which}",
        )
    rho.set_ylabel(r"$\rho_{a+1}$ (bits)", color="tab:orange")
    rho.set_ylim(bottom=0)
    return rho
