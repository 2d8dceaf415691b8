"""Report: Table 1 numbers, the minimal split, files, CLI, and rebuilding from a Tune directory."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from semirobust_ray.cli import report_main
from semirobust_ray.report import (
    answer_lines,
    minimal_split,
    rho_column,
    table1,
    table1_markdown,
    write_report,
)
from semirobust_ray.results import ReportError, load_results

N = 6  # layers of the hand-built model
ACC_STAR = 0.60
K = 0.05
REPO = Path(__file__).resolve().parents[1]

# depth -> per-trial (acc, reached, epochs_run); reached means within k on validation.
TRIALS = {
    1: [(0.30, False, 3), (0.35, False, 3)],
    2: [(0.50, False, 3), (0.52, False, 3)],
    3: [(0.56, True, 2), (0.58, True, 1)],
    4: [(0.59, True, 1), (0.57, True, 2)],
}


def bits(depth: int, trial: int, j: int) -> float:
    """A distinct, recognisable MI value per (depth, trial, pair)."""
    return round(2.0 + 0.5 * j + 0.1 * depth + (0.3 if trial == 0 else 0.0), 4)


def trial_dict(depth: int, t: int, acc: float, reached: bool, epochs: int) -> dict[str, Any]:
    a = N - depth
    # Pairs (j−1, j) for j = a+1..n, as algorithm1.trial_mi measures them (j ≥ 2).
    mi = [
        {"j": j, "prev": f"layer{j - 1}", "next": f"layer{j}", "bits": bits(depth, t, j)}
        for j in range(max(a + 1, 2), N + 1)
    ]
    history = [
        {
            "epoch": e + 1,
            "loss": 1.0,
            "train_acc": 0.5,
            "val_robust_acc": acc,
            "gap": 0.1,
            "seconds": 0.1,
        }
        for e in range(epochs)
    ]
    return {
        "fb_layers": depth,
        "trial": t,
        "seed": 100 * depth + t,
        "acc_star": ACC_STAR,
        "acc_sr": 0.10 * depth,
        "acc": acc,
        "clean_acc": 0.9,
        "best_epoch": epochs,
        "epochs_run": epochs,
        "reached": reached,
        "seconds": 1.0,
        "history": history,
        "mi": mi,
        "diff": ACC_STAR - acc,
    }


def make_results() -> dict[str, Any]:
    trials = [
        trial_dict(d, t, acc, reached, ep)
        for d, runs in TRIALS.items()
        for t, (acc, reached, ep) in enumerate(runs)
    ]
    return {
        "config": {
            "model": "smallcnn",
            "dataset": "digits",
            "k": K,
            "epochs": 3,
            "trials_per_depth": 2,
            "split_depths": [1, 2, 3, 4],
        },
        "num_layers": N,
        "baseline": {"acc_star": ACC_STAR, "acc_star_val": 0.61, "clean_acc_robust": 0.8},
        "trials": trials,
    }


@pytest.fixture
def results() -> dict[str, Any]:
    return make_results()


def test_table1_numbers(results: dict[str, Any]) -> None:
    df = table1(results)
    assert list(df["|f_b|"]) == [1, 2, 3, 4]
    assert set(df["Model"]) == {"SmallCNN"} and set(df["Dataset"]) == {"Digits"}
    for _, row in df.iterrows():
        d = int(row["|f_b|"])
        accs = [acc for acc, _, _ in TRIALS[d]]
        assert row["Acc"] == pytest.approx(max(accs))  # Acc = best trial
        assert row["Acc*"] == pytest.approx(ACC_STAR)
        assert row["Diff"] == pytest.approx(ACC_STAR - max(accs))
        assert row["Trials"] == 2
        assert bool(row["Reached"]) == any(r for _, r, _ in TRIALS[d])
        # ρ_n: the last pair (j = n) is in every f_b; min over trials = the trial without +0.3.
        assert row["ρ_n"] == pytest.approx(min(bits(d, 0, N), bits(d, 1, N)))
        # ρ_{n-3} is the pair ending at layer 3: in f_b only when a + 1 <= 3, i.e. |f_b| >= 4.
        if d >= 4:
            assert row[rho_column(3)] == pytest.approx(bits(d, 1, 3))
        else:
            assert math.isnan(row[rho_column(3)])
        # n = 6 has no pair ending at layer −1, −5, −9.
        for x in (7, 11, 15):
            assert math.isnan(row[rho_column(x)])


def test_acc_sr_is_the_best_trials(results: dict[str, Any]) -> None:
    df = table1(results).set_index("|f_b|")
    assert df.loc[3, "Acc_sr"] == pytest.approx(0.3)


def test_rho_outside_fb_is_nan_even_if_measured() -> None:
    """A stray MI entry for a pair outside f_b (e.g. from f_a) must not appear in Table 1."""
    res = make_results()
    res["num_layers"] = 16
    for t in res["trials"]:
        t["mi"] = [{"j": j, "prev": "p", "next": "n", "bits": float(j)} for j in range(2, 17)]
    df = table1(res).set_index("|f_b|")
    assert df.loc[4, "ρ_n"] == 16.0 and df.loc[4, rho_column(3)] == 13.0
    assert math.isnan(df.loc[3, rho_column(3)])  # a = 13: pair ending at 13 links f_a to f_a
    assert math.isnan(df.loc[4, rho_column(7)])


def test_rho_columns_for_deep_split() -> None:
    """|f_b| = 12 of a 16-layer net fills ρ_n … ρ_{n−11} but not ρ_{n−15}."""
    res = make_results()
    res["num_layers"] = 16
    res["trials"] = [trial_dict(1, 0, 0.5, True, 1)]
    res["trials"][0].update(
        fb_layers=12, mi=[{"j": j, "prev": "p", "next": "n", "bits": j / 2} for j in range(5, 17)]
    )
    row = table1(res).iloc[0]
    assert [row[rho_column(x)] for x in (0, 3, 7, 11)] == [8.0, 6.5, 4.5, 2.5]
    assert math.isnan(row[rho_column(15)])


def test_markdown_is_percent(results: dict[str, Any]) -> None:
    md = table1_markdown(table1(results))
    lines = md.strip().splitlines()
    assert len(lines) == 2 + 4
    assert "\\|f_b\\|" in lines[0] and "Acc* (%)" in lines[0] and "ρ_{n-3}" in lines[0]
    row4 = lines[-1].split("|")
    assert " 60.0 " in row4 and " 59.0 " in row4 and " 1.0 " in row4  # Acc*, Acc, Diff


def test_markdown_leaves_out_rho_columns_no_depth_fills(results: dict[str, Any]) -> None:
    """A 6-layer network has no ρ_{n-7}: the markdown drops the column, the CSV keeps it."""
    df = table1(results)
    assert rho_column(7) in df.columns and df[rho_column(7)].isna().all()
    md = table1_markdown(df)
    header = md.splitlines()[0]
    assert "ρ_{n-3}" in header and "ρ_{n-3} (best)" in header
    assert "ρ_{n-7}" not in header and "ρ_{n-11}" not in header
    lines = md.replace("\\|", "").splitlines()
    cells = [len(line.split("|")) for line in lines]
    assert len(set(cells)) == 1  # every row has the header's columns


def test_minimal_split_gives_both_readings_of_the_answer(results: dict[str, Any]) -> None:
    m = minimal_split(results)
    # Default target: the smallest robust f*_a = the LARGEST reaching |f_b| (4 of 6 layers).
    assert m["minimise"] == "robust_fa"
    assert m["answer"] == m["smallest_robust_fa"]
    assert m["answer"]["fb_layers"] == 4 and m["answer"]["robust_layers"] == 2
    assert m["answer"]["acc"] == pytest.approx(0.59)
    assert m["answer"]["statement"] == (
        "smallest robust f*_a: the first 2 of 6 layers must be robust; the last 4 layers can be "
        "trained in 3 epochs to come within k = 0.05 of Acc*"
    )
    # Two trials a depth settle nothing at 90 %: the interval runs from "no depth" to |f_b| = 4,
    # i.e. anywhere from all 6 layers to the first 2 robust, and the answer is undetermined.
    assert m["answer"]["interval"]["fb_layers"] == [None, 4]
    assert m["answer"]["interval"]["robust_layers"] == [2, 6]
    assert m["answer"]["interval_statement"] == (
        "90 % interval: between 2 and 6 of the 6 layers must be robust"
    )
    assert m["answer"]["determined"] is False and m["answer"]["why"].startswith("undetermined")
    # The monotone fit pools 1..4 (0, 0, 2 and 2 of 2 reached) into one rate, 4 of 8 = q.
    assert [r["fit"] for r in m["answer"]["reach"]] == pytest.approx([0.5] * 4)
    # The second reading: the smallest reaching |f_b| (its fit: 1 at 3 and 4, 0 below).
    assert m["smallest_fb"]["fb_layers"] == 3 and m["smallest_fb"]["robust_layers"] == 3
    assert m["smallest_fb"]["acc"] == pytest.approx(0.58)
    assert [r["fit"] for r in m["smallest_fb"]["reach"]] == pytest.approx([0, 0, 1, 1])
    assert m["acc_star"] == pytest.approx(ACC_STAR) and m["k"] == K and m["epochs"] == 3
    ev = {e["fb_layers"]: e for e in m["evidence"]}
    assert sorted(ev) == [1, 2, 3, 4]
    assert [ev[d]["reached"] for d in (1, 2, 3, 4)] == [0, 0, 2, 2]
    assert ev[3]["epochs"] == 3 and ev[3]["trials"] == 2 and ev[3]["best_trial"] == 1
    assert ev[2]["acc"] == pytest.approx(0.52) and ev[2]["robust_layers"] == 4
    json.dumps(m, allow_nan=False)  # strict JSON: no NaN


def test_minimal_split_lists_outcomes_that_contradict_the_premise(
    results: dict[str, Any],
) -> None:
    # Small f_b missed and larger ones reached: the opposite of robust_fa's premise.
    m = minimal_split(results)
    assert "a smaller f_b" in m["premise"]
    assert m["premise_violations"] == [
        {"reached": 3, "missed_before": [1, 2]},
        {"reached": 4, "missed_before": [1, 2]},
    ]
    # The mirrored premise of "minimise: fb" (a larger f_b is at least as easy) holds here.
    results["config"]["minimise"] = "fb"
    m = minimal_split(results)
    assert m["answer"]["fb_layers"] == 3 and m["premise_violations"] == []


def _replicated(results: dict[str, Any], trials: int, reaches: Any) -> None:
    """``trials`` trials at each depth of ``results``, reaching where ``reaches(depth)``."""
    first = {t["fb_layers"]: t for t in results["trials"] if t["trial"] == 0}
    results["trials"] = [
        {**first[d], "trial": t, "reached": bool(reaches(d))}
        for d in sorted(first)
        for t in range(trials)
    ]


def test_minimal_split_on_a_monotone_frontier(results: dict[str, Any]) -> None:
    """Small f_b reaches, large f_b does not, six trials a depth: the 90 % interval closes on
    the boundary; without the depth beyond it, it keeps that untried depth inside."""
    results["config"]["split_depths"] = [1, 2, 3, 4, 5, 6]
    _replicated(results, 6, lambda d: d <= 2)
    m = minimal_split(results)
    assert m["answer"]["fb_layers"] == 2 and m["answer"]["interval"]["fb_layers"] == [2, 2]
    assert m["answer"]["determined"] is True and m["answer"]["width"] == 0
    assert m["answer"]["interval_statement"] == (
        "90 % interval: exactly 4 of the 6 layers must be robust"
    )
    assert m["premise_violations"] == []
    assert m["smallest_fb"]["fb_layers"] == 1
    # Depth 3 not tried: 3 may reach or not, so it stays inside the interval (2 to 3).
    results["trials"] = [t for t in results["trials"] if t["fb_layers"] != 3]
    m = minimal_split(results)
    assert m["answer"]["fb_layers"] == 2 and m["answer"]["interval"]["fb_layers"] == [2, 3]
    assert m["answer"]["width"] == 1 and m["answer"]["determined"] is True  # answer_width 1
    results["config"]["answer_width"] = 0
    m = minimal_split(results)
    assert m["answer"]["determined"] is False and "answer_width 0" in m["answer"]["why"]


def test_minimal_split_counts_a_failed_trial_as_a_miss(results: dict[str, Any]) -> None:
    _replicated(results, 6, lambda d: d <= 2)
    results["failed"] = [{"trial_dir": "x", "failure": "diverged: nan", "fb_layers": 2}]
    reach = {r["fb_layers"]: r for r in minimal_split(results)["answer"]["reach"]}
    assert (reach[2]["reached"], reach[2]["trials"]) == (6, 7)


def test_minimal_split_warns_when_test_diff_exceeds_k(results: dict[str, Any]) -> None:
    """Reached on the validation check, but the test Diff says otherwise: say so."""
    assert minimal_split(results)["warning"] is None  # Diff within k: nothing to say
    for t in results["trials"]:
        if t["fb_layers"] == 4:
            t["acc"] = ACC_STAR - 0.09
    results["config"]["stop_attack"] = "pgd"
    m = minimal_split(results)
    assert m["answer"]["fb_layers"] == 4
    # Test sample size unknown (an old baseline, no eval_samples): no standard error to give.
    assert m["warning"].startswith("on the test split Acc* - Acc = 9.0 points > k")
    assert "(pgd) may have overstated" in m["warning"]
    # 2,000 test images: SE = sqrt((0.6·0.4 + 0.51·0.49) / 2000) = 1.6 points, and the Diff
    # exceeds k = 5 by 4 points > 2 SE: the check overstated robustness.
    results["baseline"]["test_images"] = 2000
    warning = minimal_split(results)["warning"]
    assert warning.startswith(
        "on the test split Acc* - Acc = 9.0 ± 1.6 points (standard error, 2,000 test images) > k"
    )
    assert "the validation check (pgd) overstated robustness" in warning
    # Unset under an AutoAttack evaluation, the check was APGD-CE: the warning names that.
    results["config"].update(stop_attack=None, eval_attack="autoattack")
    assert "the validation check (apgd-ce) overstated" in minimal_split(results)["warning"]
    # 100 test images (eval_samples stands in for an old baseline's count): SE 7.0 points, so
    # 4 points over k is within the test sample's noise, and the warning says so.
    del results["baseline"]["test_images"]
    results["config"]["eval_samples"] = 100
    warning = minimal_split(results)["warning"]
    assert "9.0 ± 7.0 points (standard error, 100 test images)" in warning
    assert "within twice its standard error of k" in warning
    assert "overstated robustness;" not in warning


def test_minimal_split_none_reached(results: dict[str, Any]) -> None:
    for t in results["trials"]:
        t["reached"] = False
    m = minimal_split(results)
    for reading in ("answer", "smallest_robust_fa", "smallest_fb"):
        assert m[reading]["fb_layers"] is None and m[reading]["acc"] is None
    assert m["answer"]["statement"].startswith("no candidate |f_b| brought the network within")
    assert m["acc_star"] == pytest.approx(ACC_STAR)  # from the baseline


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 300 and height > 200


def test_write_report_files(results: dict[str, Any], tmp_path: Path) -> None:
    paths = {key: Path(p) for key, p in write_report(results, tmp_path).items()}
    names = {p.name for p in paths.values()}
    assert names == {
        "table1.csv",
        "table1.md",
        "rho_vs_depth.png",
        "frontier.csv",
        "frontier.png",
        "minimal_split.json",
    }
    csv = pd.read_csv(tmp_path / "table1.csv")
    assert list(csv["|f_b|"]) == [1, 2, 3, 4]
    assert csv["Acc"].max() == pytest.approx(0.59)  # CSV keeps fractions
    stored = json.loads((tmp_path / "minimal_split.json").read_text())
    assert stored["answer"]["fb_layers"] == 4 and stored["smallest_fb"]["fb_layers"] == 3
    md = (tmp_path / "table1.md").read_text()
    assert "Smallest robust f*_a: the first 2 of 6 layers must be robust" in md
    assert "Smallest f_b: adversarially training only the last 3 layers" in md
    _assert_png(tmp_path / "rho_vs_depth.png")
    _assert_png(tmp_path / "frontier.png")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries
    # Readable by others as a plain open() would leave them (not mkstemp's private 0600), so a
    # collaborator or a TensorBoard server under another account can read the report.
    umask = os.umask(0)
    os.umask(umask)
    for path in paths.values():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_figure_without_mi(results: dict[str, Any], tmp_path: Path) -> None:
    for t in results["trials"]:
        t["mi"] = []
    write_report(results, tmp_path)
    _assert_png(tmp_path / "rho_vs_depth.png")
    assert math.isnan(table1(results)["ρ_n"].iloc[0])


def test_load_runner_results(results: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps(results))
    loaded = load_results(tmp_path)
    assert len(loaded["trials"]) == 8
    assert load_results(tmp_path / "results.json")["num_layers"] == N


def write_tune_dir(root: Path, results: dict[str, Any]) -> None:
    """A Tune experiment directory as the search layer writes it, plus one unfinished trial."""
    root.mkdir(parents=True, exist_ok=True)
    meta = {k: results[k] for k in ("config", "num_layers", "baseline")}
    (root / "search").mkdir()
    (root / "search" / "search_meta.json").write_text(json.dumps(meta))
    for i, t in enumerate(results["trials"]):
        d = root / f"trainable_{i:05d}_{i}_fb_layers={t['fb_layers']}"
        d.mkdir()
        lines = [
            {"epoch": h["epoch"], "val_robust_acc": h["val_robust_acc"], "training_iteration": e}
            for e, h in enumerate(t["history"], 1)
        ]
        lines.append({"done": True, "trial_result_json": json.dumps(t)})
        (d / "result.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
        (d / "params.json").write_text(json.dumps({"fb_layers": t["fb_layers"]}))
    d = root / "trainable_00099_99_fb_layers=5"
    d.mkdir()
    (d / "params.json").write_text(json.dumps({"fb_layers": 5}))
    (d / "result.json").write_text(
        json.dumps({"epoch": 1, "training_iteration": 1, "gap": 0.2}) + "\n" + '{"epoch": 2, "ga'
    )  # the second line was cut off by a crash


def test_rebuild_from_tune_dir(results: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path / "search"
    write_tune_dir(root, results)
    loaded = load_results(root)
    assert len(loaded["trials"]) == 8
    assert [u["params"]["fb_layers"] for u in loaded["unfinished"]] == [5]
    assert loaded["unfinished"][0]["reports"] == 1
    pd.testing.assert_frame_equal(table1(loaded), table1(results))
    assert report_main([str(root)]) == 0
    m = json.loads((root / "minimal_split.json").read_text())
    assert m["answer"]["fb_layers"] == 4 and len(m["unfinished"]) == 1
    assert 5 not in [e["fb_layers"] for e in m["evidence"]]
    _assert_png(root / "rho_vs_depth.png")


def test_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ReportError, match="neither"):
        load_results(tmp_path)
    assert report_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert report_main([str(tmp_path / "missing")]) == 2
    (tmp_path / "results.json").write_text('{"config": {}, "num_l')
    with pytest.raises(ReportError, match="not valid JSON"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"config": {}, "num_layers": 3}))
    with pytest.raises(ReportError, match="baseline"):
        load_results(tmp_path)
    good = make_results()
    del good["trials"][0]["acc"]
    (tmp_path / "results.json").write_text(json.dumps(good))
    with pytest.raises(ReportError, match="lacks acc"):
        load_results(tmp_path)


def test_cli_subprocess(results: dict[str, Any], tmp_path: Path) -> None:
    """The real ``python -m`` entry point prints the table and the minimal split."""
    (tmp_path / "results.json").write_text(json.dumps(results))
    ok = subprocess.run(
        [sys.executable, "-m", "semirobust_ray.report", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "|f_b|" in ok.stdout
    assert "Smallest robust f*_a: the first 2 of 6 layers must be robust" in ok.stdout
    assert "Smallest f_b: adversarially training only the last 3 layers" in ok.stdout
    assert (tmp_path / "table1.md").is_file()
    # The error path (exit 2, one line, no traceback) is checked in-process in test_errors;
    # a second interpreter start would double this test's time for the same code path.


def test_labels_name_a_narrowed_model_and_a_file_dataset() -> None:
    res = make_results()
    res["config"] = {
        **res["config"],
        "model": "vgg16",
        "width": 0.125,
        "dataset": "npz",
        "data_path": "../shared/datasets/cifar10_subset.npz",
    }
    row = table1(res).iloc[0]
    assert (row["Model"], row["Dataset"]) == ("VGG16 (width 0.125)", "cifar10_subset")


def test_minimal_split_states_the_noise_floor(results: dict[str, Any]) -> None:
    """With the validation size stored, the answer carries the check's noise floor: 144 images
    at Acc*_val 0.61 give a standard error of 4.1 points, so k = 5 points is not resolved."""
    assert minimal_split(results)["noise_floor"] is None  # stored before the size was kept
    results["baseline"]["val_images"] = 144
    for t in results["trials"]:
        t.update(gap_se=0.02, val_images=144, gap_images=1)
    floor = minimal_split(results)["noise_floor"]
    assert floor["se"] == pytest.approx(math.sqrt(0.61 * 0.39 / 144))
    assert floor["resolved"] is False and floor["images_needed"] == 381
    assert floor["trial_se_median"] == pytest.approx(0.02)
    assert "use >= 381 validation images" in floor["warning"]


def test_minimal_split_states_the_test_splits_noise(results: dict[str, Any]) -> None:
    """Every test accuracy carries its sampling error: 250 test images at Acc* 0.60 give 3.1
    points for one accuracy and 4.4 for a Diff (unpaired), in the JSON and the closing lines."""
    assert minimal_split(results)["test_noise"] is None  # size unknown: nothing is claimed
    results["baseline"]["test_images"] = 250
    m = minimal_split(results)
    noise = m["test_noise"]
    assert noise["test_images"] == 250
    assert noise["acc_star_se"] == pytest.approx(math.sqrt(0.6 * 0.4 / 250))
    assert noise["diff_se"] == pytest.approx(math.sqrt(2 * 0.6 * 0.4 / 250))
    assert (
        "Test split: Acc*, Acc_sr and Acc on 250 images, each ± 3.1 points (standard error at "
        "Acc*); a Diff ± 4.4 at most (unpaired)."
    ) in answer_lines(m)


def test_a_search_stored_with_seeds_reports_as_one_with_trials_per_depth(
    results: dict[str, Any], tmp_path: Path
) -> None:
    """Searches of earlier versions store T as ``seeds``; their reports read it all the same."""
    old = {**results, "config": {**results["config"], "seeds": 2}}
    del old["config"]["trials_per_depth"]
    expected = minimal_split(results)
    assert minimal_split(old) == expected  # a results dict as given
    assert "T = 2" in expected["stop"]
    write_tune_dir(tmp_path / "old", old)
    loaded = load_results(tmp_path / "old")
    assert loaded["config"]["trials_per_depth"] == 2 and "seeds" not in loaded["config"]
    assert minimal_split(loaded)["answer"] == expected["answer"]
    assert report_main([str(tmp_path / "old")]) == 0
