"""Faults a long search must survive without losing finished work, and reproducible numbers.

- The driver (``launch/search.py``) interrupted with SIGINT or killed with SIGKILL mid-search:
  ``--resume`` finishes it, finished trials are not re-run, trials in flight continue from their
  last checkpoint.
- A trial's worker process dies mid-epoch: the trial is retried from its checkpoint and the
  search reports exactly what a fault-free search reports.
- A trial whose loss diverges ends as a failed trial with its reason; the search goes on.
- A damaged baseline (cache entry or the copy stored with a search) is detected and rebuilt.
- The same config and seed give the same Acc*, Acc_sr, Acc and ρ twice on CPU.

The subprocess tests come first in this module: they start their own local Ray (``--address
local``); the in-process tests share one Ray instance started afterwards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import DIGITS_SEARCH, package_logs
from launcher import (
    assert_kept_and_continued,
    driver_lines,
    launch_cmd,
    lines,
    run_to_end,
    run_until_signal,
)

from semirobust_ray.baseline import get_baseline, load_baseline
from semirobust_ray.config import ExperimentConfig
from semirobust_ray.experiment import prepare
from semirobust_ray.results import load_results
from semirobust_ray.storage import CorruptFileError, Store, read_json
from semirobust_ray.trial import algorithm1_trainable

ROOT = Path(__file__).resolve().parents[1]

# CI size (like tests/test_search.py's CI_SEARCH, same baseline): 4 grid trials of 1-3 epochs,
# so that a resumed search still has a trial in flight when the second signal is due.
# With MI measured inside each trial (test_eval: all) each trial reserves both CPUs, so trials
# run one after another and the moment "one trial finished, the next has a checkpoint but no
# result" exists for a few seconds.
FAULT_SEARCH = {
    **DIGITS_SEARCH,
    "test_eval": "all",
    "epochs": 3,
    "split_depths": [1, 2, 4, 6],
    "k": 0.0,
    "mi": True,
    "max_failures": 1,
    "search": "grid",
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One baseline cache for the module: trained by the first search, reused by the rest."""
    return tmp_path_factory.mktemp("baseline-cache")


# --- driver interrupted or killed ----------------------------------------------------------


def _launch(storage: Path, cache: Path) -> list[str]:
    return launch_cmd(str(storage), {**FAULT_SEARCH, "cache_dir": str(cache)})


def _resume(cmd: list[str], log: Path) -> subprocess.CompletedProcess:
    return run_to_end([*cmd, "--resume"], log)


def _assert_complete(exp_dir: Path) -> None:
    results = load_results(exp_dir)
    coords = sorted((t["fb_layers"], t["trial"]) for t in results["trials"])
    assert coords == [(d, 0) for d in FAULT_SEARCH["split_depths"]]  # each exactly once
    assert results["unfinished"] == []
    minimal = json.loads((exp_dir / "minimal_split.json").read_text())
    assert [e["fb_layers"] for e in minimal["evidence"]] == FAULT_SEARCH["split_depths"]
    assert all(e["trials"] == 1 for e in minimal["evidence"])


def test_interrupted_then_killed_driver_resumes_without_losing_or_rerunning_trials(
    tmp_path, cache_dir
):
    """SIGINT (Ctrl+C), resume, SIGKILL of the resumed driver, resume again: one search."""
    exp_dir = tmp_path / "store" / "x"
    store = Store(exp_dir)
    cmd = _launch(tmp_path / "store", cache_dir)

    code, err, first = run_until_signal(cmd, store, signal.SIGINT, tmp_path / "run1.log")
    assert code == 130, err[-2000:]
    assert (
        "interrupted: finished trials are kept; continue with the same command plus --resume" in err
    )
    assert "Traceback" not in driver_lines(err)
    assert not (exp_dir / "minimal_split.json").exists()  # no report that looks final

    code, err, second = run_until_signal(
        [*cmd, "--resume"], store, signal.SIGKILL, tmp_path / "run2.log", after=first[0]
    )
    assert code == -signal.SIGKILL
    # Whether a trial is still in flight once the driver is gone depends on timing (after Ctrl+C
    # Tune may let it finish); those that are must continue from their checkpoint (checked
    # below). Continuation itself is proven deterministically by the worker-kill test.
    for rel, data in first[0].items():
        assert store.read_bytes(rel) == data, f"finished trial was re-run: {rel}"

    done = _resume(cmd, tmp_path / "run3.log")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in driver_lines(done.stderr)
    assert_kept_and_continued(store, first, second)
    _assert_complete(exp_dir)
    # Readable output: trials named by depth and index, no checkpoint line after every epoch.
    output = (tmp_path / "run1.log").read_text() + done.stdout + done.stderr
    assert "Checkpoint successfully created" not in output
    assert re.search(r"\bfb0\d-t0\b", done.stdout + done.stderr)
    trial_dirs = [d.name for d in exp_dir.iterdir() if d.is_dir() and d.name.startswith("fb")]
    assert trial_dirs and all(re.fullmatch(r"fb\d\d-t\d+-\w+", d) for d in trial_dirs)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_driver_signal_then_resume_finishes_the_search(tmp_path, cache_dir, sig):
    exp_dir = tmp_path / "store" / "x"
    store = Store(exp_dir)
    cmd = _launch(tmp_path / "store", cache_dir)
    code, err, snapshot = run_until_signal(cmd, store, sig, tmp_path / "run1.log")
    assert code == (130 if sig == signal.SIGINT else -signal.SIGKILL), err[-2000:]
    done = _resume(cmd, tmp_path / "run2.log")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_kept_and_continued(store, snapshot)
    _assert_complete(exp_dir)


# --- determinism ---------------------------------------------------------------------------


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if not k.endswith("seconds")}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def test_same_config_and_seed_give_the_same_numbers_twice(tmp_path):
    """Baseline (Acc*) retrained from scratch in each run, then trials with MI (ρ)."""
    from semirobust_ray.runner import run_algorithm1

    # One thread, as in a Ray trial: with several, a busy machine slows PyTorch's OpenMP down
    # many times over (and sums may round differently from a trial's).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = [
            run_algorithm1(
                ExperimentConfig.from_dict(
                    {
                        **FAULT_SEARCH,
                        "baseline_epochs": 2,
                        "baseline_adv_epochs": 2,
                        "split_depths": [4],
                        "cache_dir": str(tmp_path / f"cache{i}"),
                    }
                ),
            )
            for i in (1, 2)
        ]
    finally:
        torch.set_num_threads(threads)
    a, b = (_without_timing(r) for r in runs)
    assert a["baseline"]["acc_star"] == b["baseline"]["acc_star"]
    for ta, tb in zip(a["trials"], b["trials"], strict=True):
        assert (ta["acc_sr"], ta["acc"]) == (tb["acc_sr"], tb["acc"])
        assert [p["bits"] for p in ta["mi"]] == [p["bits"] for p in tb["mi"]]
        assert ta["mi"]
    assert a["config"].pop("cache_dir") != b["config"].pop("cache_dir")  # two trainings
    assert a == b
    digest = {hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest() for r in (a, b)}
    assert len(digest) == 1


# --- in-process searches on one shared Ray instance ----------------------------------------


def _config(cache_dir: Path, **changes) -> ExperimentConfig:
    return ExperimentConfig.from_dict({**FAULT_SEARCH, "cache_dir": str(cache_dir), **changes})


@pytest.fixture(scope="module")
def clean(ray_local, cache_dir, tmp_path_factory):
    """A fault-free search at depth 6: the reference the faulty one must equal."""
    from semirobust_ray.ray_search import run_search

    root = tmp_path_factory.mktemp("clean")
    config = _config(cache_dir, split_depths=[6])
    return run_search(config, storage_path=str(root), name="clean", verbose=0)


def make_dying_trainable(marker: Path, depth: int):
    """The real trainable, except that at ``depth`` the worker process is SIGKILLed in the middle
    of epoch 2 (after epoch 1's checkpoint), once. No Python exception: the process vanishes.
    A closure, so Ray ships it by value to its workers."""

    def dying_trainable(config, **shared):
        import semirobust_ray.algorithm1 as a1

        if config["fb_layers"] != depth or marker.exists():
            return algorithm1_trainable(config, **shared)
        original = a1.train_epoch
        epochs = []

        def train_epoch(*args, attack, **kwargs):
            epochs.append(1)
            if len(epochs) < 2:
                return original(*args, attack=attack, **kwargs)
            batches = []

            def lethal_attack(*a, **k):
                batches.append(1)
                if len(batches) == 3:  # third batch of epoch 2
                    marker.write_text("killed mid-epoch")
                    os.kill(os.getpid(), signal.SIGKILL)
                return attack(*a, **k)

            return original(*args, attack=lethal_attack, **kwargs)

        a1.train_epoch = train_epoch
        return algorithm1_trainable(config, **shared)

    return dying_trainable


def _numbers(trial: dict) -> dict:
    """A trial's result without wall-clock fields, the trial directory's name, and which trial
    of its depth happened to measure the shared Acc_sr (its value is compared)."""
    skip = ("trial_dir", "measured_acc_sr")
    out = {k: v for k, v in trial.items() if k not in skip and not k.endswith("seconds")}
    out["history"] = [
        {k: v for k, v in h.items() if not k.endswith("seconds")} for h in trial["history"]
    ]
    return out


def test_worker_killed_mid_epoch_resumes_from_checkpoint_with_the_same_report(
    clean, cache_dir, tmp_path
):
    from semirobust_ray.ray_search import run_search

    marker = tmp_path / "fault"
    outcome = run_search(
        _config(cache_dir, split_depths=[6]),
        storage_path=str(tmp_path),
        name="dying",
        verbose=0,
        trainable_fn=make_dying_trainable(marker, depth=6),
    )
    assert marker.read_text() == "killed mid-epoch"
    (trial_dir,) = Path(outcome.experiment_dir).glob("fb06-*")
    last = lines((trial_dir / "result.json").read_bytes())[-1]
    assert last["resumed"] == 1  # continued from epoch 1's checkpoint, not from scratch
    assert outcome.answer_fb_layers == clean.answer_fb_layers
    got = sorted((_numbers(t) for t in outcome.results["trials"]), key=lambda t: t["fb_layers"])
    want = sorted((_numbers(t) for t in clean.results["trials"]), key=lambda t: t["fb_layers"])
    # The fault strikes in epoch 2, so the clean trial must train at least 2 epochs; how many
    # (2 or all 3, k = 0) depends on the machine's floating-point sums.
    assert [t["epochs_run"] >= 2 for t in want] == [True], (
        "the fault (mid-epoch 2) must hit a trial that trains at least 2 epochs"
    )
    assert got == want
    d = Path(outcome.experiment_dir)
    assert (d / "table1.csv").read_text() == (Path(clean.experiment_dir) / "table1.csv").read_text()


def make_diverging_trainable(depth: int, lr: float = 1e6):
    """The real trainable with a learning rate that blows the loss up at one depth."""

    def diverging_trainable(config, **shared):
        if config["fb_layers"] == depth:
            config = {**config, "lr": lr}
        return algorithm1_trainable(config, **shared)

    return diverging_trainable


def test_diverged_trial_fails_with_its_reason_and_the_search_goes_on(
    ray_local, cache_dir, tmp_path
):
    from semirobust_ray.ray_search import run_search

    outcome = run_search(
        _config(cache_dir, split_depths=[1, 6]),
        storage_path=str(tmp_path),
        name="nan",
        verbose=0,
        trainable_fn=make_diverging_trainable(depth=6),
    )
    d = Path(outcome.experiment_dir)
    assert [t["fb_layers"] for t in outcome.results["trials"]] == [1]
    (trial_dir,) = d.glob("fb06-*")
    last = lines((trial_dir / "result.json").read_bytes())[-1]
    assert last["diverged"] == 1 and last["failure"].startswith("diverged: training loss became")
    assert not (trial_dir / "error.txt").exists()  # ended, not crashed: no pointless retries
    minimal = json.loads((d / "minimal_split.json").read_text())
    assert [e["fb_layers"] for e in minimal["evidence"]] == [1]
    (failed,) = minimal["failed"]
    assert failed["fb_layers"] == 6 and failed["failure"] == last["failure"]
    assert minimal["unfinished"] == []
    assert "| 1 |" in (d / "table1.md").read_text()


# --- damaged baselines ---------------------------------------------------------------------


def _flip_byte(path: Path) -> None:
    """Modify a file in place without changing its length (bit rot, a bad copy)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def cached_entry(clean, cache_dir, tmp_path):
    """A private copy of the module's cached baseline entry, free to damage."""
    exp = prepare(_config(cache_dir))
    good = get_baseline(exp)
    assert good.reused
    copy = tmp_path / "cache"
    (copy / good.key).mkdir(parents=True)
    for f in Path(good.path).iterdir():
        (copy / good.key / f.name).write_bytes(f.read_bytes())
    return exp, good, copy


@pytest.mark.parametrize("damage", ["truncated baseline.json", "same-length modified weights"])
def test_damaged_cache_entry_is_detected_and_rebuilt_never_used(
    logs, cached_entry, damage, monkeypatch
):
    import semirobust_ray.baseline as baseline_module

    exp, good, cache = cached_entry
    entry = cache / good.key
    if damage == "truncated baseline.json":
        meta = entry / "baseline.json"
        meta.write_bytes(meta.read_bytes()[: meta.stat().st_size // 2])
        with pytest.raises(CorruptFileError, match="is not valid JSON"):
            load_baseline(entry)
    else:
        size = (entry / "robust.pt").stat().st_size
        _flip_byte(entry / "robust.pt")
        assert (entry / "robust.pt").stat().st_size == size
        with pytest.raises(CorruptFileError, match="fails its checksum"):
            load_baseline(entry)

    trained = []

    def retrain(exp, *, key, path):  # stands in for minutes of training
        trained.append(key)
        return dataclasses.replace(good, path=path, reused=False)

    monkeypatch.setattr(baseline_module, "train_baseline", retrain)
    logs.clear()
    rebuilt = get_baseline(exp, cache_dir=str(cache))
    assert trained == [good.key] and not rebuilt.reused
    assert any("damaged, rebuilding" in line for line in logs)
    again = load_baseline(entry)  # the entry is whole again
    assert again.acc_star == good.acc_star


def _resume_copy(clean, tmp_path: Path):
    """``--resume`` of the copy of the clean search at ``tmp_path / "clean"``: (outcome, log)."""
    from semirobust_ray.ray_search import run_search

    with package_logs() as logs:
        outcome = run_search(
            ExperimentConfig.from_dict(clean.results["config"]),
            storage_path=str(tmp_path),
            name="clean",
            resume=True,
            verbose=0,
        )
    return outcome, logs


@pytest.mark.parametrize("damage", ["flipped byte in robust.pt", "truncated baseline.json"])
def test_resume_with_damaged_stored_baseline_recomputes_it(clean, damage, tmp_path):
    import shutil

    from semirobust_ray.ray_search import load_search_baseline

    exp_dir = tmp_path / "clean"
    shutil.copytree(clean.experiment_dir, exp_dir)
    bdir = exp_dir / "baseline"
    if damage.startswith("flipped"):
        _flip_byte(bdir / "robust.pt")
    else:
        meta = bdir / "baseline.json"
        meta.write_bytes(meta.read_bytes()[:40])
    key = clean.results["baseline"]["key"]
    with pytest.raises(CorruptFileError):
        load_search_baseline(str(exp_dir))
    before = {p: p.read_bytes() for p in exp_dir.glob("*/result.json")}

    outcome, logs = _resume_copy(clean, tmp_path)
    assert any("stored baseline unusable, recomputing it" in line for line in logs)
    assert load_search_baseline(str(exp_dir)).acc_star == clean.results["baseline"]["acc_star"]
    assert {p: p.read_bytes() for p in exp_dir.glob("*/result.json")} == before  # nothing re-ran
    assert outcome.answer_fb_layers == clean.answer_fb_layers
    assert read_json(exp_dir / "search" / "search_meta.json")["baseline"]["key"] == key


def test_resume_keeps_the_stored_baseline_when_newer_code_keys_it_differently(clean, tmp_path):
    """A search started with an older version resumes on its own Acc*, not a retrained one,
    and with its T stored under the key's old name, ``seeds``."""
    import shutil

    exp_dir = tmp_path / "clean"
    shutil.copytree(clean.experiment_dir, exp_dir)
    meta_path = exp_dir / "baseline" / "baseline.json"
    meta = read_json(meta_path)
    meta["key"] = "smallcnn-digits-keyed-by-an-older-version"
    meta_path.write_text(json.dumps(meta))
    search_meta_path = exp_dir / "search" / "search_meta.json"
    search_meta = read_json(search_meta_path)
    search_meta["config"]["seeds"] = search_meta["config"].pop("trials_per_depth")
    search_meta_path.write_text(json.dumps(search_meta))
    before = {p: p.read_bytes() for p in exp_dir.glob("*/result.json")}

    outcome, logs = _resume_copy(clean, tmp_path)
    assert any("keeping the search's stored baseline" in line for line in logs)
    assert not any("[search] baseline: regular" in line for line in logs)  # not retrained
    assert read_json(meta_path)["key"] == meta["key"]  # not replaced either
    assert {p: p.read_bytes() for p in exp_dir.glob("*/result.json")} == before
    assert outcome.results["baseline"]["acc_star"] == clean.results["baseline"]["acc_star"]
    assert (
        outcome.results["config"]["trials_per_depth"] == clean.results["config"]["trials_per_depth"]
    )
    assert outcome.answer_fb_layers == clean.answer_fb_layers  # reported as before
