"""The Ray Tune system end to end at CI size: searches, agreement, retries, reports, TensorBoard."""

import json
import pickle
from pathlib import Path

import pytest
import ray
import torch
from conftest import DIGITS_SEARCH, package_logs

from semirobust_ray import report
from semirobust_ray.cli import report_main
from semirobust_ray.config import ExperimentConfig
from semirobust_ray.ray_search import SearchError, run_search
from semirobust_ray.searchers import BisectionSearcher
from semirobust_ray.trial import algorithm1_trainable

CI_SEARCH = {
    **DIGITS_SEARCH,
    "split_depths": [1, 3, 6],
    "k": 0.05,
    "mi": True,
    "max_failures": 1,
}


@pytest.fixture(scope="module")
def searches(ray_local, tmp_path_factory):
    """One grid and one bisection search over the same problem (shared baseline cache); the
    grid's trials measure their test Acc and MI themselves (``test_eval: all``), the
    bisection's best trial per depth is evaluated after the search (``best``, the default)."""
    root = tmp_path_factory.mktemp("searches")
    cache = root / "cache"
    out = {}
    for algo, test_eval in (("grid", "all"), ("bisection", "best")):
        config = ExperimentConfig.from_dict(
            {**CI_SEARCH, "search": algo, "test_eval": test_eval, "cache_dir": str(cache)}
        )
        out[algo] = run_search(config, storage_path=str(root), name=algo, verbose=0)
    return out


def _trial_epochs(outcome) -> int:
    return sum(t["epochs_run"] for t in outcome.results["trials"])


def test_grid_and_bisection_find_the_same_minimal_split(searches):
    grid, bisection = searches["grid"], searches["bisection"]
    assert len(grid.results["trials"]) == 3  # every depth x T
    assert grid.answer_fb_layers == bisection.answer_fb_layers
    expected = report.minimal_split(grid.results)["answer"]["fb_layers"]
    assert grid.answer_fb_layers == expected
    assert _trial_epochs(bisection) <= _trial_epochs(grid)


QUICKSTART = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"


def _quickstart_config(algo: str, cache: Path) -> ExperimentConfig:
    from semirobust_ray.config import load_config

    return load_config(QUICKSTART, [f"search={algo}", "mi=false", f"cache_dir={cache}"])


@pytest.fixture(scope="module")
def quickstart(ray_local, tmp_path_factory):
    """The quickstart itself, searched both ways (without MI, which does not move the answer),
    with the default ``test_eval: best``."""
    root = tmp_path_factory.mktemp("quickstart")
    return {
        algo: run_search(
            _quickstart_config(algo, root / "cache"), storage_path=str(root), name=algo, verbose=0
        )
        for algo in ("grid", "bisection")
    }


def test_quickstart_bisection_agrees_with_grid(quickstart):
    grid, bisection = quickstart["grid"], quickstart["bisection"]
    assert len(grid.results["trials"]) == 12
    if not grid.answer["premise_violations"]:  # monotone outcomes: the same answer as grid
        assert bisection.answer_fb_layers == grid.answer_fb_layers
    assert _trial_epochs(bisection) < _trial_epochs(grid)
    evidence = {e["fb_layers"]: e["reached"] for e in grid.answer["evidence"]}
    for e in bisection.answer["evidence"]:  # the same trials, whoever ran them
        assert e["reached"] == evidence[e["fb_layers"]]


def test_test_eval_best_evaluates_each_depths_best_trial_by_validation(quickstart, searches):
    """``test_eval: best``: of the quickstart grid's 2 trials per depth exactly one has a test
    Acc, the one with the best final validation accuracy (ties: the lower index), stored under
    evaluations/; ``all`` (the CI grid) evaluated every trial inside the trial."""
    import math

    grid = quickstart["grid"]
    trials = grid.results["trials"]
    for depth in range(1, 7):
        ours = sorted((t for t in trials if t["fb_layers"] == depth), key=lambda t: t["trial"])
        assert len(ours) == 2
        best = max(ours, key=lambda t: (t["val_acc"], -t["trial"]))
        assert [t["test_evaluated"] for t in ours] == [t is best for t in ours]
        assert 0.0 <= best["acc"] <= 1.0 and 0.0 <= best["clean_acc"] <= 1.0
        other = next(t for t in ours if t is not best)
        assert math.isnan(other["acc"]) and math.isnan(other["clean_acc"])
    stored = sorted((Path(grid.experiment_dir) / "evaluations").glob("*.json"))
    assert len(stored) == 6
    every = searches["grid"].results["trials"]
    assert all(t["test_evaluated"] and t["mi"] for t in every)
    assert not (Path(searches["grid"].experiment_dir) / "evaluations").exists()


def test_reevaluate_skips_trials_without_a_test_evaluation(quickstart, logs):
    from semirobust_ray.baseline import load_baseline
    from semirobust_ray.reevaluate import _networks_to_check
    from semirobust_ray.searchdir import BASELINE_DIR
    from semirobust_ray.storage import Store

    grid = quickstart["grid"]
    store = Store(grid.experiment_dir)
    baseline = load_baseline(store.child(BASELINE_DIR))
    networks = _networks_to_check(store, grid.results["trials"], 0, baseline, None)
    evaluated = [t for t in grid.results["trials"] if t["test_evaluated"]]
    assert len(networks) == 1 + len(evaluated) == 7  # Acc*, then one trial per depth
    assert [n.reported_acc for n in networks[1:]] == [
        t["acc"] for t in sorted(evaluated, key=lambda t: t["fb_layers"])
    ]
    assert any("skipping 6 of 12 trial(s) without a test evaluation" in line for line in logs)


def test_resume_after_stopping_in_the_final_evaluations_redoes_none_that_finished(quickstart, logs):
    """A search stopped during its test evaluations leaves the finished ones stored (each is
    written as it completes) and the rest missing: the resume evaluates only the missing."""
    grid = quickstart["grid"]
    d = Path(grid.experiment_dir)
    stored = sorted((d / "evaluations").glob("*.json"))
    kept, lost = stored[:4], stored[4:]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in kept}
    lost_bytes = {p: p.read_bytes() for p in lost}
    for p in lost:
        p.unlink()
    logs.clear()
    again = run_search(
        _quickstart_config("grid", d.parent / "cache"),
        storage_path=str(d.parent),
        name="grid",
        resume=True,
        verbose=0,
    )
    assert any("test-set evaluation of 2 trial(s)" in line for line in logs), logs
    # Before any trial, once: 144 validation images cannot resolve the quickstart's k = 0.05.
    floor = [line for line in logs if line.startswith("[noise floor]")]
    assert len(floor) == 1 and "on 144 validation images" in floor[0], floor
    for p, (data, mtime) in before.items():
        assert p.read_bytes() == data and p.stat().st_mtime_ns == mtime  # not redone
    for p, data in lost_bytes.items():
        redone, old = json.loads(p.read_text()), json.loads(data)
        assert {k: redone[k] for k in ("acc", "clean_acc", "mi")} == {
            k: old[k] for k in ("acc", "clean_acc", "mi")
        }
    assert [t["acc"] for t in again.results["trials"] if t["test_evaluated"]] == [
        t["acc"] for t in grid.results["trials"] if t["test_evaluated"]
    ]


def test_search_writes_report_meta_and_baseline(searches):
    d = Path(searches["grid"].experiment_dir)
    for name in (
        "table1.md",
        "table1.csv",
        "rho_vs_depth.png",
        "minimal_split.json",
        "search/search_meta.json",
        "baseline/baseline.json",
        "baseline/robust.pt",
    ):
        assert (d / name).is_file(), name
    minimal = json.loads((d / "minimal_split.json").read_text())
    assert minimal["answer"]["fb_layers"] == searches["grid"].answer_fb_layers
    assert {e["fb_layers"] for e in minimal["evidence"]} == {1, 3, 6}
    trials = searches["grid"].results["trials"]
    assert all(t["mi"] for t in trials)  # every trial measured its I_j
    assert {len(t["mi"]) for t in trials} == {1, 3, 5}  # |f_b| pairs from f_a's last layer


def test_report_is_rebuilt_from_stored_results_alone(searches, capsys):
    d = Path(searches["bisection"].experiment_dir)
    before = (d / "table1.md").read_text()
    for name in ("table1.md", "table1.csv", "rho_vs_depth.png", "minimal_split.json"):
        (d / name).unlink()
    assert report_main([str(d)]) == 0
    assert (d / "table1.md").read_text() == before
    assert (d / "rho_vs_depth.png").stat().st_size > 1000
    capsys.readouterr()


def test_tensorboard_events_hold_the_reported_scalars(searches):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d = Path(searches["grid"].experiment_dir)
    events = sorted(d.glob("fb*/events.out.tfevents.*"))  # one run per trial
    assert len(events) == 3
    tags = set()
    for ev in events:
        acc = EventAccumulator(str(ev))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    for tag in ("acc", "val_robust_acc", "gap", "loss", "acc_sr", "I_j/06"):
        assert f"ray/tune/{tag}" in tags, tag


def test_the_baseline_is_a_tensorboard_run_beside_the_trials(searches):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d = Path(searches["grid"].experiment_dir)
    (events,) = sorted((d / "baseline").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events))
    acc.Reload()
    adversarial = [e.value for e in acc.Scalars("ray/tune/loss")]
    regular = [e.value for e in acc.Scalars("ray/tune/baseline/regular_loss")]
    assert len(adversarial) == CI_SEARCH["baseline_adv_epochs"]
    assert len(regular) == CI_SEARCH["baseline_epochs"]
    history = searches["grid"].results["baseline"]["history"]
    assert adversarial == pytest.approx([h["loss"] for h in history if h["stage"] == "adversarial"])
    (acc_star,) = acc.Scalars("ray/tune/acc_star")
    assert acc_star.value == pytest.approx(searches["grid"].results["baseline"]["acc_star"])


def test_a_lost_acc_sr_board_leaves_each_trial_measuring_acc_sr_itself(ray_local):
    """Sharing Acc_sr is a saving, not a dependency: with the board's actor gone (its node
    lost) a trial is told to measure the value itself instead of failing."""
    from semirobust_ray.trial import RayAccSr, start_acc_sr_board

    board = start_acc_sr_board({3: 0.5})
    share = RayAccSr(board)
    assert share.claim(3, 0) == 0.5 and share.claim(4, 0) is True and share.claim(4, 1) is False
    ray.kill(board)
    assert share.claim(5, 0) is True
    share.put(5, 0.25)  # nowhere to put it: no error either
    assert share.wait(4, 5.0) is None


def test_trials_of_a_depth_share_one_acc_sr_evaluation(searches, tmp_path):
    """Two trials of a depth run at once (no MI: one CPU each); one measures Acc_sr, the other
    takes its value from the search's board."""
    cache = Path(searches["grid"].experiment_dir).parent / "cache"
    config = ExperimentConfig.from_dict(
        {
            **CI_SEARCH,
            "search": "grid",
            "trials_per_depth": 2,
            "split_depths": [1, 6],
            "mi": False,
            "cache_dir": str(cache),
        }
    )
    outcome = run_search(config, storage_path=str(tmp_path), name="share", verbose=0)
    trials = outcome.results["trials"]
    assert len(trials) == 4
    for depth in (1, 6):
        ours = [t for t in trials if t["fb_layers"] == depth]
        assert sum(t["measured_acc_sr"] for t in ours) == 1
        assert len({t["acc_sr"] for t in ours}) == 1


def test_existing_search_is_not_overwritten(searches):
    d = Path(searches["grid"].experiment_dir)
    config = ExperimentConfig.from_dict({**CI_SEARCH, "search": "grid"})
    with pytest.raises(SearchError, match="already holds a search: pass --resume"):
        run_search(config, storage_path=str(d.parent), name="grid")
    with pytest.raises(SearchError, match="holds no search to resume"):
        run_search(config, storage_path=str(d.parent), name="nothing", resume=True)


def make_flaky_trainable(marker: Path):
    """A trainable that fails once, right after the first epoch's checkpoint, like a worker
    dying mid-trial. Built as a closure so Ray ships it by value to its workers."""

    def flaky_trainable(config, **shared):
        from ray import tune

        import semirobust_ray.trial as trial_module

        if tune.get_checkpoint() is not None:
            marker.with_suffix(".resumed").write_text("from checkpoint")
        if marker.exists():
            return algorithm1_trainable(config, **shared)
        original = trial_module.run_trial

        def failing(*args, on_epoch, **kwargs):
            def hook(record, state):
                on_epoch(record, state)
                marker.write_text("failed once")
                raise RuntimeError("injected fault after epoch 1")

            return original(*args, on_epoch=hook, **kwargs)

        trial_module.run_trial = failing
        try:
            return algorithm1_trainable(config, **shared)
        finally:
            trial_module.run_trial = original

    return flaky_trainable


def test_failed_trial_resumes_from_checkpoint_with_the_same_result(searches, tmp_path):
    marker = tmp_path / "fault"
    config = ExperimentConfig.from_dict(
        {
            **CI_SEARCH,
            "split_depths": [6],
            "k": 0.0,
            "cache_dir": str(Path(searches["grid"].experiment_dir).parent / "cache"),
        }
    )
    outcome = run_search(
        config,
        storage_path=str(tmp_path),
        name="flaky",
        verbose=0,
        trainable_fn=make_flaky_trainable(marker),
    )
    assert marker.read_text() == "failed once"
    assert marker.with_suffix(".resumed").read_text() == "from checkpoint"
    (faulty,) = outcome.results["trials"]
    clean = next(t for t in searches["grid"].results["trials"] if t["fb_layers"] == 6)
    assert faulty["epochs_run"] == clean["epochs_run"] == 2

    def numbers(h):
        return [{k: v for k, v in e.items() if not k.endswith("seconds")} for e in h]

    assert numbers(faulty["history"]) == numbers(clean["history"])
    assert faulty["acc"] == clean["acc"]


def run_scripted(depths, outcome, *, trials=1, target="robust_fa", slots=1):
    """Drive a BisectionSearcher as Tune would, with ``slots`` trials in flight at once and the
    oldest finishing first; ``outcome(depth, trial)`` says whether that trial reached."""
    with package_logs() as logs:
        s = BisectionSearcher(
            depths, trials, target=target, parallel_probes=max(1, slots // trials)
        )
        running: list[tuple[str, int, int]] = []
        probed: list[int] = []
        n = 0
        while True:
            while len(running) < slots:
                suggestion = s.suggest(f"t{n}")
                if suggestion is None or suggestion == s.FINISHED:
                    break
                running.append((f"t{n}", suggestion["fb_layers"], suggestion["trial"]))
                probed.append(suggestion["fb_layers"])
                n += 1
            if not running:
                break
            trial_id, depth, trial = running.pop(0)
            s.on_trial_complete(trial_id, {"reached": int(outcome(depth, trial))})
        assert s.finished and s.suggest("last") == s.FINISHED
        return s, probed, logs


def grid_answer(depths, reached, target="robust_fa"):
    hits = [d for d in depths if reached(d)]
    return (max(hits) if target == "robust_fa" else min(hits)) if hits else None


DEPTHS = list(range(1, 9))


@pytest.mark.parametrize("boundary", range(0, 9))
@pytest.mark.parametrize("slots", [1, 3])
def test_bisection_on_monotone_outcomes_equals_grid_and_probes_both_sides(boundary, slots):
    # robust_fa's premise holds: every |f_b| <= boundary reaches, every larger one misses.
    def reached(d):
        return d <= boundary

    s, probed, logs = run_scripted(DEPTHS, lambda d, t: reached(d), slots=slots)
    answer = grid_answer(DEPTHS, reached)
    assert s.minimal_depth == answer
    if answer is not None:
        assert answer in probed  # the answer reaches ...
    if boundary < 8:
        assert boundary + 1 in probed  # ... and the depth beyond it was probed and missed
    assert not logs  # nothing contradicted the premise
    if slots == 1:
        assert len(set(probed)) <= 4  # ceil(log2(8 + 1)) probes, not 8


@pytest.mark.parametrize("boundary", range(1, 10))
def test_bisection_for_the_smallest_fb_mirrors_the_premise(boundary):
    def reached(d):
        return d >= boundary

    s, probed, _ = run_scripted(DEPTHS, lambda d, t: reached(d), target="fb")
    assert s.minimal_depth == grid_answer(DEPTHS, reached, target="fb")
    if 1 < boundary <= 8:
        assert {boundary, boundary - 1} <= set(probed)


def test_bisection_reports_a_contradicted_premise_and_probes_the_depths_between():
    # |f_b| = 7 reaches although 5 and 6 do not: the premise is false here.
    table = {1: 1, 2: 1, 3: 1, 4: 1, 5: 0, 6: 0, 7: 1, 8: 0}
    s, probed, logs = run_scripted(DEPTHS, lambda d, t: table[d], slots=3)
    assert s.minimal_depth == 7 == grid_answer(DEPTHS, lambda d: table[d])
    assert 6 in probed  # the undecided depth between the miss and the reach was probed
    assert any("premise contradicted: |f_b| = 7 reached although |f_b| = 5" in m for m in logs)


def test_bisection_alone_cannot_see_a_non_monotone_region_it_never_probes():
    # Sequential probes go 5 (miss), 3 (miss), 2 (reach): |f_b| = 4 reaching is never seen. The
    # answer still rests on its own evidence (2 reached, 3 missed); only grid sees the rest.
    table = {1: 1, 2: 1, 3: 0, 4: 1, 5: 0, 6: 0, 7: 0, 8: 0}
    s, probed, logs = run_scripted(DEPTHS, lambda d, t: table[d])
    assert s.minimal_depth == 2 and 4 not in probed and not logs
    assert grid_answer(DEPTHS, lambda d: table[d]) == 4


def test_bisection_probe_reaches_when_any_of_its_trials_does():
    # Only the second of T = 2 trials reaches at depths <= 4.
    s, probed, _ = run_scripted(DEPTHS, lambda d, t: d <= 4 and t == 1, trials=2)
    assert s.minimal_depth == 4
    assert all(probed.count(d) <= 2 for d in probed)


def test_optuna_objective_minimises_the_chosen_target():
    from semirobust_ray.trial import objective

    # robust_fa: fewer robust layers (a larger |f_b|) is better, but only among reaching depths.
    scores = {d: objective(d, reached=d <= 4, num_layers=6) for d in range(1, 7)}
    assert min(scores, key=scores.get) == 4
    assert max(scores[d] for d in range(1, 5)) < min(scores[d] for d in (5, 6))
    scores = {d: objective(d, reached=d >= 3, num_layers=6, target="fb") for d in range(1, 7)}
    assert min(scores, key=scores.get) == 3


def test_bisection_state_survives_save_and_restore(tmp_path):
    s = BisectionSearcher(DEPTHS, 1)  # a lambda: it must not be pickled
    first = s.suggest("a")
    s.on_trial_complete("a", {"reached": 1})
    s.save(str(tmp_path / "searcher.pkl"))
    restored = BisectionSearcher(DEPTHS, 1)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("b") == s.suggest("b") != first
    # Tune pickles the searcher with the experiment state, whatever log it was given.
    clone = pickle.loads(pickle.dumps(s))
    assert clone.suggest("c") == s.suggest("c")


@pytest.mark.parametrize(
    ("overrides", "expected_trials"),
    [({"search": "optuna", "num_samples": 3}, 3), ({"search": "grid", "scheduler": "asha"}, 3)],
    ids=["optuna", "grid+asha"],
)
def test_optuna_search_and_asha_scheduler_complete(searches, tmp_path, overrides, expected_trials):
    cache = Path(searches["grid"].experiment_dir).parent / "cache"
    config = ExperimentConfig.from_dict(
        {**CI_SEARCH, **overrides, "mi": False, "cache_dir": str(cache)}
    )
    outcome = run_search(config, storage_path=str(tmp_path), name="x", verbose=0)
    trials = outcome.results["trials"]
    # ASHA ends poor trials before their final report: they are listed as unfinished and
    # count as not reaching Acc* - k
    assert len(trials) + len(outcome.results.get("unfinished", [])) == expected_trials
    assert trials, "at least the best trial runs to the end"
    assert {t["fb_layers"] for t in trials} <= {1, 3, 6}
    if outcome.answer_fb_layers is not None:
        assert any(t["reached"] for t in trials if t["fb_layers"] == outcome.answer_fb_layers)


def test_official_autoattack_reevaluation_matches_reported_acc(
    logs, ray_local, tmp_path, monkeypatch
):
    """A separate script re-runs AutoAttack on the stored networks: same numbers, and a network
    that is not the one the trial reported is caught."""
    from semirobust_ray.reevaluate import main as reevaluate_main
    from semirobust_ray.reevaluate import reevaluate
    from semirobust_ray.results import FINAL_FB_FILE
    from semirobust_ray.storage import load_state, save_state

    config = ExperimentConfig.from_dict(
        {
            **DIGITS_SEARCH,
            "eval_attack": "autoattack",
            "stop_attack": "pgd",
            "eval_samples": 10,
            "split_depths": [2],
            "mi": False,
            "search": "grid",
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    outcome = run_search(config, storage_path=str(tmp_path), name="aa", verbose=0)
    exp_dir = Path(outcome.experiment_dir)
    table = reevaluate(exp_dir)
    assert list(table["fb_layers"].fillna(0)) == [0, 2]  # Acc* first, then the trial
    assert table["reported_acc"].iloc[1] == outcome.results["trials"][0]["acc"]
    assert (table["abs_diff"] < 1e-6).all(), table  # reported values went through float32
    assert (exp_dir / "reevaluation.csv").is_file()
    logs.clear()
    again = reevaluate(exp_dir, resume=True)  # nothing is attacked again
    assert len(logs) == 2 and all("kept from reevaluation.csv" in line for line in logs)
    assert list(again["autoattack_acc"]) == list(table["autoattack_acc"])

    # Replace the trial's final f_b by one with a zeroed output layer: the check must fail.
    final = sorted(exp_dir.glob(f"*/checkpoint_*/{FINAL_FB_FILE}"))[-1]
    state = load_state(final)
    state["fb_state"] = {k: v * 0 if "weight" in k else v for k, v in state["fb_state"].items()}
    save_state(final, state)
    assert reevaluate_main([str(exp_dir)]) == 1
    assert reevaluate_main([str(tmp_path / "nothing")]) == 2
    assert reevaluate_main([str(exp_dir), "--threads", "0"]) == 2

    # On a CPU the attack runs with the trials' thread count (cpus_per_trial, here 1) unless
    # told otherwise, and the caller's setting comes back afterwards.
    import semirobust_ray.reevaluate as reevaluate_module

    seen: list[int] = []

    def counting_attack(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return 0.5

    monkeypatch.setattr(reevaluate_module, "autoattack_accuracy", counting_attack)
    before = torch.get_num_threads()
    reevaluate(exp_dir, device="cpu")
    reevaluate(exp_dir, device="cpu", threads=3)
    assert seen == [config.cpus_per_trial] * 2 + [3] * 2
    assert torch.get_num_threads() == before


def test_final_checkpoint_continues_the_trial_instead_of_restarting(searches):
    """Restored from its last checkpoint (the driver stopped before it recorded the final
    result), a trial re-measures its final network: no epoch is trained again."""
    from semirobust_ray.algorithm1 import TrialState, run_trial
    from semirobust_ray.baseline import load_baseline
    from semirobust_ray.experiment import prepare
    from semirobust_ray.ray_search import BASELINE_DIR
    from semirobust_ray.results import CHECKPOINT_FILE, FINAL_FB_FILE
    from semirobust_ray.storage import load_state

    exp_dir = Path(searches["grid"].experiment_dir)
    trial = next(t for t in searches["grid"].results["trials"] if t["fb_layers"] == 3)
    trial_dir = next(exp_dir.glob("fb03-*"))
    last = max(trial_dir.glob("checkpoint_*"), key=lambda p: p.name)
    assert (last / FINAL_FB_FILE).is_file()
    state = TrialState.from_dict(load_state(last / CHECKPOINT_FILE))
    assert state.epoch == trial["epochs_run"]

    config = ExperimentConfig.from_dict({**CI_SEARCH, "mi": False, "test_eval": "all"})
    again = run_trial(prepare(config), load_baseline(exp_dir / BASELINE_DIR), 3, 0, state=state)
    assert again.history == trial["history"]  # nothing retrained
    assert again.acc == trial["acc"]
