"""The Python API as a notebook uses it, starting with ``docs/python-api.md`` run as it stands."""

import contextlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure

import semirobust_ray as sr
from semirobust_ray.ray_search import SearchError, SearchInterrupted
from semirobust_ray.results import ReportError
from semirobust_ray.searchdir import SearchDirError

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "python-api.md"
#: The settings of the documented search; a search with them under its name is the same one.
DOC_SEARCH = dict(
    split_depths=[2, 4, 6], trials_per_depth=1, steps=3, baseline_epochs=3, baseline_adv_epochs=3
)


def doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def doc(ray_local, tmp_path_factory):
    """Every ``python`` block of the page, in order, in one namespace, in a fresh directory;
    returns (that directory, the namespace, what the blocks printed)."""
    root = tmp_path_factory.mktemp("notebook")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("SEMIROBUST_CACHE", str(root / "cache"))
    # A bare notebook: no logging configured (pytest's capture handlers set aside), so the
    # API's progress lines reach stdout as a notebook would show them.
    mp.setattr(logging.getLogger(), "handlers", [])
    mp.setattr(logging.getLogger("semirobust_ray"), "handlers", [])
    namespace: dict = {}
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            for i, block in enumerate(doc_blocks()):
                exec(compile(block, f"{DOC.name}, python block {i + 1}", "exec"), namespace)
    finally:
        mp.undo()
    return root, namespace, out.getvalue()


def trial_dirs(path: Path) -> list[str]:
    return sorted(p.parent.name for p in path.rglob("result.json"))


def test_the_documented_example_answers_in_both_readings(doc):
    root, ns, printed = doc
    result = ns["result"]
    assert isinstance(result, sr.SearchResult)
    assert Path(result.path) == root / "results" / "notebook-demo"
    assert result.finished
    # The printed answer is both readings in words, as the launcher prints them.
    assert "layers must be robust" in printed
    for reading in ("smallest_robust_fa", "smallest_fb"):
        assert result.answer[reading]["statement"][1:] in repr(result)  # capitalised there
    n = result.num_layers
    assert n == 6
    if result.fb_layers is not None:
        assert result.robust_layers == n - result.fb_layers
        assert result.fb_layers in (2, 4, 6)
    assert 0 < result.acc_star <= 1


def test_frontier_table1_and_trials_are_the_searchs_numbers(doc):
    root, ns, _ = doc
    result, frontier, history = ns["result"], ns["frontier"], ns["history"]
    stored = pd.read_csv(Path(result.path) / "frontier.csv")
    assert list(frontier["fb_layers"]) == list(stored["fb_layers"])
    # frontier.csv keeps 6 significant digits (report.write_report's "%.6g"): up to 5e-6
    # relative, more than approx's default 1e-6 allows for some values (0.12534815 -> 0.125348).
    # Diff is NaN for the trials without a test evaluation (test_eval: best), in both.
    for column in ("diff", "val_gap"):
        assert frontier[column].to_numpy() == pytest.approx(
            stored[column].to_numpy(), rel=5e-6, nan_ok=True
        )
    assert frontier["diff"].notna().sum() == frontier["fb_layers"].nunique()  # one per depth
    assert set(frontier["fb_layers"]) <= {2, 4, 6}
    assert len(result.table1) == frontier["fb_layers"].nunique()
    # One history row per epoch each trial trained, labelled with its trial.
    assert len(history) == frontier["epochs_run"].sum()
    assert {"fb_layers", "trial", "epoch", "val_robust_acc", "gap"} <= set(history.columns)
    for (fb, t), rows in history.groupby(["fb_layers", "trial"]):
        assert list(rows["epoch"]) == list(range(1, len(rows) + 1)), (fb, t)
    assert isinstance(ns["fig"], Figure) and ns["fig"].axes
    assert isinstance(result.rho_figure(), Figure)
    for png in ("frontier.png", "rho_vs_depth.png"):
        assert (root / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_and_a_second_run_of_the_cell_return_the_stored_search(doc):
    root, ns, printed = doc
    result = ns["result"]
    loaded = sr.load(result.path)
    pd.testing.assert_frame_equal(loaded.table1, result.table1)
    assert loaded.answer == result.answer
    # The cell run twice: a note, the same search, no trial started again.
    assert "already holds this search: returning it as stored" in printed
    assert ns["again"].answer == result.answer
    assert len(trial_dirs(Path(result.path))) == len(result.frontier)


def test_the_same_name_with_other_settings_is_a_one_line_error(doc):
    root, ns, _ = doc
    path = Path(ns["result"].path)
    before = trial_dirs(path)
    with pytest.raises(SearchError) as err:
        sr.search(
            "quickstart",
            name="notebook-demo",
            storage_path=str(root / "results"),
            **{**DOC_SEARCH, "trials_per_depth": 2},
        )
    message = str(err.value)
    assert "\n" not in message
    assert "trials_per_depth (1 -> 2)" in message and "name=" in message
    assert trial_dirs(path) == before


def test_resume_of_a_finished_search_keeps_it_and_refuses_new_measurements(doc):
    _, ns, _ = doc
    result = ns["result"]
    before = trial_dirs(Path(result.path))
    resumed = result.resume(max_concurrent=1)
    assert resumed.answer["evidence"] == result.answer["evidence"]
    assert trial_dirs(Path(result.path)) == before
    with pytest.raises(SearchDirError, match=r"other settings of k \(0\.05 -> 0\.2\)"):
        result.resume(k=0.2)


def test_load_of_a_path_without_a_search_is_a_one_line_error(tmp_path):
    with pytest.raises(ReportError, match="holds neither results.json") as err:
        sr.load(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(ReportError, match="is not a directory"):
        sr.load(tmp_path / "missing")


def test_an_interrupted_search_says_how_to_resume_and_resumes(doc, monkeypatch):
    """Ctrl-C in the middle of the trials (SIGINT, as a notebook's stop button sends it)."""
    root, _, _ = doc
    monkeypatch.setenv("SEMIROBUST_CACHE", str(root / "cache"))  # the documented baseline
    storage = root / "interrupted"
    name = "stopped"
    settings = {**DOC_SEARCH, "search": "grid", "max_concurrent": 1, "epochs": 2}

    def interrupt_after_the_first_epoch() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if any(p.read_text().strip() for p in storage.rglob("result.json")):
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=interrupt_after_the_first_epoch, daemon=True)
    watcher.start()
    with pytest.raises(SearchInterrupted) as err:
        sr.search("quickstart", name=name, storage_path=str(storage), verbose=0, **settings)
    watcher.join(timeout=5)
    path = storage / name
    assert f"search '{name}' interrupted: finished trials are kept" in str(err.value)
    assert f"sr.load({str(path)!r}).resume()" in str(err.value)
    stopped = sr.load(path)
    assert not stopped.finished
    assert "unfinished: resume() continues it" in repr(stopped)

    finished = stopped.resume()
    assert finished.finished
    assert sorted(finished.frontier["fb_layers"]) == [2, 4, 6]
    assert sr.load(path).answer == finished.answer


def test_run_algorithm1_needs_no_ray(doc, tmp_path):
    """The in-process runner, in a fresh interpreter: Ray is never imported."""
    root, ns, _ = doc
    code = (
        "import sys, json, semirobust_ray as sr\n"
        f"r = sr.run_algorithm1('quickstart', out_dir='out', **{DOC_SEARCH!r})\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
        "print(json.dumps(r.answer['evidence']))\n"
    )
    env = {**os.environ, "SEMIROBUST_CACHE": str(root / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    evidence = json.loads(done.stdout.strip().splitlines()[-1])
    assert [e["fb_layers"] for e in evidence] == [2, 4, 6]  # every depth, the grid protocol
    loaded = sr.load(tmp_path / "out" / "results.json")
    assert loaded.answer["evidence"] == evidence
    assert loaded.finished
    # The same baseline as the Ray search's (cached): the same Acc*.
    assert loaded.acc_star == pytest.approx(ns["result"].acc_star)


def test_only_the_ray_edge_imports_ray():
    """The layout the README's Development section describes: every module but ``trial``,
    ``searchers``, ``cluster`` and ``ray_search`` (the Ray edge) imports without Ray, so the science, the runner, the report,
    the independent ``reevaluate`` check, the command line and the API's loaders run without it."""
    edge = {"trial", "searchers", "cluster", "ray_search"}
    modules = sorted(
        p.stem for p in (ROOT / "semirobust_ray").glob("*.py") if p.stem not in edge | {"__init__"}
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module('semirobust_ray.' + m)\n"
        "ray = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        f"ours = {{'semirobust_ray.' + m for m in {sorted(edge)!r}}} & set(sys.modules)\n"
        "assert not ray and not ours, (ray[:5], ours)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(modules) >= 20
