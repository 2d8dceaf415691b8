"""The adaptive search under Ray Tune, end to end on the digits data: trials side by side, the
answer with its interval, and a resume in the middle of the search that keeps every outcome."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from conftest import DIGITS_SEARCH

from semirobust_ray.config import ExperimentConfig
from semirobust_ray.ray_search import SearchInterrupted, run_search

ADAPTIVE = {
    **DIGITS_SEARCH,
    "split_depths": [1, 2, 3, 4, 5, 6],
    "epochs": 1,
    "mi": False,
    "search": "adaptive",
    "max_trials": 8,
    "answer_width": 0,  # run the whole budget: the test counts trials
}


def _config(root: Path, **changes) -> ExperimentConfig:
    return ExperimentConfig.from_dict({**ADAPTIVE, "cache_dir": str(root / "cache"), **changes})


def _finished_trials(exp_dir: Path) -> dict[str, dict]:
    """trial directory -> its final result row, for every trial that finished."""
    out = {}
    for path in exp_dir.glob("fb*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        final = [r for r in rows if r.get("trial_result_json")]
        if final:
            out[path.parent.name] = {**final[-1], "_rows": rows}
    return out


def test_adaptive_search_runs_trials_side_by_side_and_reports_an_interval(ray_local, tmp_path):
    outcome = run_search(_config(tmp_path), storage_path=str(tmp_path), name="adaptive", verbose=0)
    trials = outcome.results["trials"]
    assert len(trials) == 8  # the budget, no more
    pairs = [(t["fb_layers"], t["trial"]) for t in trials]
    assert len(set(pairs)) == 8  # a depth tried again gets its next trial index (seed)
    for depth in {d for d, _ in pairs}:
        indices = sorted(i for d, i in pairs if d == depth)
        assert indices == list(range(len(indices)))
    # The two slots of the local Ray instance were used at once: some trials overlapped.
    rows = _finished_trials(Path(outcome.experiment_dir))
    spans = sorted(
        (r["_rows"][0]["timestamp"] - r["_rows"][0]["time_this_iter_s"], r["timestamp"])
        for r in rows.values()
    )
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False))
    answer = outcome.answer
    assert answer["stop"].startswith("adaptive: max_trials = 8 spent (8 trials)")
    reading = answer["answer"]
    assert reading["interval"]["level"] == 0.9
    assert sum(r["trials"] for r in reading["reach"]) == 8
    minimal = json.loads((Path(outcome.experiment_dir) / "minimal_split.json").read_text())
    assert minimal["answer"]["interval"] == reading["interval"]
    assert minimal["answer"]["interval_statement"].startswith("90 % interval")


def test_adaptive_search_resumed_mid_search_keeps_every_outcome(ray_local, tmp_path, monkeypatch):
    """SIGINT once the searcher has seen three trials finish, then --resume: the finished
    trials are neither run again nor forgotten by the searcher, and the budget counts them."""
    from semirobust_ray.searchers import AdaptiveSearcher

    storage, name = tmp_path / "runs", "stopped"
    config = _config(tmp_path, max_concurrent=1)
    exp_dir = storage / name
    complete = AdaptiveSearcher.on_trial_complete

    def interrupt_after_three(self, trial_id, result=None, error=False):
        complete(self, trial_id, result, error)
        if sum(self.search.trials.values()) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # in the driver, where the searcher runs

    monkeypatch.setattr(AdaptiveSearcher, "on_trial_complete", interrupt_after_three)
    with pytest.raises(SearchInterrupted):
        run_search(config, storage_path=str(storage), name=name, verbose=0)
    monkeypatch.setattr(AdaptiveSearcher, "on_trial_complete", complete)
    before = {d: r["_rows"] for d, r in _finished_trials(exp_dir).items()}
    assert 3 <= len(before) < 8

    outcome = run_search(config, storage_path=str(storage), name=name, resume=True, verbose=0)
    after = _finished_trials(exp_dir)
    assert len(after) == len(outcome.results["trials"]) == 8
    for d, rows in before.items():  # kept as they were: not re-run
        assert after[d]["_rows"] == rows
    pairs = [(t["fb_layers"], t["trial"]) for t in outcome.results["trials"]]
    assert len(set(pairs)) == 8  # the restored searcher remembered what it had issued
