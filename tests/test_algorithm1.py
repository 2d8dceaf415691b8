"""Algorithm 1 without Ray on real data: baseline, frozen f*_a, the k-stop, caching, resume."""

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import first_epoch_state

from semirobust_ray.algorithm1 import (
    TrialState,
    run_trial,
    semirobust_model,
    summarise_depth,
)
from semirobust_ray.baseline import get_baseline
from semirobust_ray.config import ConfigError, ExperimentConfig
from semirobust_ray.experiment import prepare
from semirobust_ray.runner import main as runner_main
from semirobust_ray.storage import load_state, save_state
from semirobust_ray.training import make_optimizer, seed_everything, train_epoch

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10_subset.npz"

DIGITS = dict(
    model="smallcnn",
    dataset="digits",
    attack="pgd",
    eps=0.1,
    alpha=0.025,
    steps=5,
    batch_size=64,
    lr=0.05,
    baseline_epochs=4,
    baseline_adv_epochs=4,
    epochs=2,
    trials_per_depth=1,
    mi=False,
    # Every trial measures its test Acc itself, so the tests below can compare trials' Acc;
    # test_eval: best (the default) is tested in test_final_eval.py.
    test_eval="all",
)


def _numbers(history: list[dict]) -> list[dict]:
    """A trial's epoch records without their wall-clock fields."""
    return [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in history]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    exp = prepare(ExperimentConfig.from_dict({**DIGITS, "cache_dir": str(cache)}))
    return exp, get_baseline(exp)


def test_adversarial_training_raises_robust_accuracy(digits):
    _, baseline = digits
    m = baseline.metrics
    assert m.clean_acc_regular > 0.9  # a working classifier first
    assert m.acc_star > m.robust_acc_regular + 0.2, m


def test_second_call_reuses_cached_baseline(logs, digits):
    exp, first = digits
    logs.clear()
    again = get_baseline(exp)
    assert again.reused and not first.reused
    assert any("reusing" in line for line in logs) and not any("epoch" in line for line in logs)
    assert again.acc_star == first.acc_star
    for k, v in first.robust_state.items():
        assert torch.equal(v, again.robust_state[k])


def test_changed_settings_miss_the_cache(digits):
    exp, first = digits
    other = prepare(exp.config.replace(baseline_adv_epochs=1))
    from semirobust_ray.baseline import baseline_key

    assert baseline_key(other) != first.key
    # trial-only settings keep the same baseline
    assert (
        baseline_key(prepare(exp.config.replace(k=0.2, epochs=7, trials_per_depth=3))) == first.key
    )
    # augmentation trains another baseline; spelling out digits' default (off) does not
    assert baseline_key(prepare(exp.config.replace(augment=True))) != first.key
    assert baseline_key(prepare(exp.config.replace(augment=False))) == first.key


def test_baseline_epochs_print_their_seconds_and_the_time_left(logs, digits, tmp_path):
    exp, _ = digits
    cheap = prepare(
        exp.config.replace(baseline_epochs=2, baseline_adv_epochs=3, cache_dir=str(tmp_path))
    )
    logs.clear()
    get_baseline(cheap)
    epochs = [line for line in logs if " epoch " in line]
    assert [line.split(":")[0] for line in epochs] == [
        "[baseline] regular epoch 1/2",
        "[baseline] regular epoch 2/2",
        "[baseline] adversarial epoch 1/3",
        "[baseline] adversarial epoch 2/3",
        "[baseline] adversarial epoch 3/3",
    ]
    for line in epochs:
        assert re.search(r"loss \d+\.\d{4}, \d+\.\d s/epoch, ", line), line
    left = [re.search(r"about (\d+) s left", line) for line in epochs]
    assert all(m for i, m in enumerate(left) if i not in (1, 4))  # the stage's last: done
    assert epochs[1].endswith("stage done") and epochs[4].endswith("stage done")


def test_stop_attack_measures_acc_star_val_and_eval_attack_acc_star(digits):
    """A different per-epoch check attack (C&W L2) beside the reported one (PGD): like with like."""
    from semirobust_ray.baseline import baseline_key
    from semirobust_ray.training import evaluate

    exp, _ = digits
    cheap = prepare(exp.config.replace(stop_attack="cw"))
    assert baseline_key(cheap) != baseline_key(exp)
    b = get_baseline(cheap)
    model = cheap.build_model()
    model.load_state_dict(b.robust_state)
    kw = {"batch_size": cheap.config.batch_size, "device": cheap.device}
    seed = cheap.config.seed
    x_val, y_val = cheap.eval_split("val")
    x_test, y_test = cheap.eval_split("test")
    cw_val = evaluate(model, x_val, y_val, attack=cheap.stop_attack(model, seed), **kw)
    pgd_val = evaluate(model, x_val, y_val, attack=cheap.eval_attack(model, seed), **kw)
    assert b.metrics.acc_star_val == cw_val != pgd_val
    assert b.metrics.acc_star == evaluate(
        model, x_test, y_test, attack=cheap.eval_attack(model, seed), **kw
    )


def test_damaged_cache_is_rebuilt_not_used(logs, digits, tmp_path):
    exp, first = digits
    exp2 = prepare(exp.config.replace(cache_dir=str(tmp_path)))
    b = get_baseline(exp2)
    weights = Path(b.path) / "robust.pt"
    weights.write_bytes(weights.read_bytes()[:100])  # a half-written file
    logs.clear()
    rebuilt = get_baseline(exp2)
    assert any("damaged" in line and "checksum" in line for line in logs)
    assert not rebuilt.reused and rebuilt.acc_star == pytest.approx(b.acc_star)
    assert get_baseline(exp2).reused  # and the cache is whole again


def test_adversarial_fb_epoch_leaves_fa_bit_identical(digits):
    exp, baseline = digits
    s = semirobust_model(exp, baseline, 2)
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    fb_keys = set(s.fb_state())
    gen = seed_everything(0)
    opt = make_optimizer(s.fb_parameters(), 0.05, 0.9, 5e-4)
    d = exp.data
    train_epoch(
        s.model,
        d.x_train,
        d.y_train,
        opt,
        batch_size=64,
        device=exp.device,
        generator=gen,
        attack=exp.train_attack(s.model, 0),
    )
    after = s.model.state_dict()
    for k in before:
        if k not in fb_keys:
            assert torch.equal(before[k], after[k]), f"f*_a changed: {k}"
    assert not torch.equal(before["net.17.weight"], after["net.17.weight"])
    # f*_a is the robust network's, f_b started from the regular one
    assert torch.equal(before["net.0.weight"], baseline.robust_state["net.0.weight"])
    assert torch.equal(before["net.17.weight"], baseline.regular_state["net.17.weight"])


def test_k_stop_ends_trial_as_soon_as_within_k(digits):
    exp, baseline = digits
    loose = prepare(exp.config.replace(k=0.99, epochs=5))
    result = run_trial(loose, baseline, 1, 0)
    assert result.epochs_run == 1 and result.reached
    strict = prepare(exp.config.replace(k=0.0, epochs=2))
    result = run_trial(strict, baseline, 6, 0)
    gaps = [h["gap"] for h in result.history]
    assert result.epochs_run == 2 or gaps[-1] <= 0.0


def test_trial_resumed_from_checkpoint_matches_uninterrupted(digits, tmp_path):
    """With augmentation on, so the checkpointed data generator must also replay the crops.

    The state goes through the checkpoint file (``save_state`` / ``load_state``, which loads
    with ``weights_only=True``) with the CUDA RNG states of more GPUs than this machine has,
    as a checkpoint from a bigger machine would: they round-trip as uint8 tensors and the
    resume restores what applies here without failing.
    """
    exp, baseline = digits
    exp = prepare(exp.config.replace(k=0.0, epochs=2, augment=True))
    full = run_trial(exp, baseline, 6, 0)
    ckpt = first_epoch_state(exp, baseline, 6, 0)
    # Captured only where this process initialised CUDA; one uint8 state per visible device.
    assert len(ckpt["cuda_rng"]) == (
        torch.cuda.device_count() if torch.cuda.is_initialized() else 0
    )
    # One state (16 bytes: seed and offset) per GPU of the bigger machine that wrote it.
    extra = [torch.zeros(16, dtype=torch.uint8) for _ in range(2)]
    ckpt["cuda_rng"] = ckpt["cuda_rng"] + extra
    save_state(tmp_path / "trial_state.pt", ckpt)
    loaded = TrialState.from_dict(load_state(tmp_path / "trial_state.pt"))
    assert len(loaded.cuda_rng) == len(ckpt["cuda_rng"])
    for got, want in zip(loaded.cuda_rng, ckpt["cuda_rng"], strict=True):
        assert got.dtype == torch.uint8 and torch.equal(got, want)
    assert torch.equal(loaded.torch_rng, ckpt["torch_rng"])
    resumed = run_trial(exp, baseline, 6, 0, state=loaded)
    assert full.epochs_run == 2, "the test needs a trial that does not stop after one epoch"

    assert _numbers(resumed.history) == _numbers(full.history)
    assert resumed.acc == full.acc and resumed.acc_sr == full.acc_sr
    # ... and the same outcome: the final network's paired check.
    outcome = ("reached", "gap_images", "val_images", "gap_se", "val_acc", "best_epoch")
    assert [getattr(resumed, f) for f in outcome] == [getattr(full, f) for f in outcome]
    plain = run_trial(prepare(exp.config.replace(augment=False)), baseline, 6, 0)
    assert _numbers(plain.history) != _numbers(full.history)  # augmentation did take part


def test_same_seed_same_numbers(digits):
    exp, baseline = digits
    a = run_trial(exp, baseline, 2, 0)
    b = run_trial(exp, baseline, 2, 0)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history] and a.acc == b.acc
    summary = summarise_depth([a, b])
    assert summary.acc == a.acc and summary.trials == 2


def test_split_depth_beyond_model_is_rejected_before_compute():
    with pytest.raises(ConfigError, match=r"split_depths \[7\] out of range for smallcnn.*1\.\.6"):
        prepare(ExperimentConfig.from_dict({**DIGITS, "split_depths": [2, 7]}))


def test_runner_end_to_end_writes_results(tmp_path, capsys, digits):
    exp, _ = digits
    code = runner_main(
        [
            "--set",
            f"cache_dir={exp.config.cache_dir}",
            *[f"--set={k}={json.dumps(v)}" for k, v in DIGITS.items()],
            "--set",
            "split_depths=[1,6]",
            "--set",
            "mi=true",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [d["fb_layers"] for d in results["depths"]] == [1, 6]
    reached = {d["fb_layers"]: d["reached"] for d in results["depths"]}
    hits = [d for d, ok in reached.items() if ok]
    assert results["answer"]["answer"]["fb_layers"] == (max(hits) if hits else None)
    assert results["answer"]["smallest_fb"]["fb_layers"] == (min(hits) if hits else None)
    pairs = results["trials"][0]["mi"]
    assert [p["j"] for p in pairs] == [6] and pairs[0]["bits"] >= 0  # |f_b|=1: pair (5, 6)
    out = capsys.readouterr().out
    assert "smallest robust f*_a" in out and "smallest f_b" in out


def test_runner_bad_input_is_one_line_error(capsys):
    assert runner_main(["--set", "model=resnet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model: unknown value 'resnet'") and "\n" not in err


@pytest.mark.skipif(not CIFAR.exists(), reason=f"shared CIFAR-10 subset not found at {CIFAR}")
def test_cifar10_subset_trial_runs_on_real_images(tmp_path):
    exp = prepare(
        ExperimentConfig.from_dict(
            {
                **DIGITS,
                "dataset": "npz",
                "data_path": str(CIFAR),
                "eps": 8 / 255,
                "alpha": 2 / 255,
                "max_train": 400,
                "max_test": 100,
                "baseline_epochs": 1,
                "baseline_adv_epochs": 1,
                "epochs": 1,
                "cache_dir": str(tmp_path),
            }
        )
    )
    assert exp.data.image_size == 32 and exp.data.num_classes == 10
    assert exp.config.augment_enabled  # natural images: trained with crops and flips
    baseline = get_baseline(exp)
    result = run_trial(exp, baseline, 2, 0)
    assert 0.0 <= result.acc <= 1.0 and result.epochs_run == 1
    # The outcome is paired on every validation image of the real images.
    from semirobust_ray.paired import unpack_correct, within_k

    n = len(exp.data.y_val)
    assert baseline.metrics.val_images == result.val_images == n
    assert unpack_correct(baseline.metrics.val_correct).sum() == round(
        baseline.metrics.acc_star_val * n
    )
    assert result.gap_images == round((baseline.metrics.acc_star_val - result.val_acc) * n)
    assert result.reached == within_k(result.gap_images, n, exp.config.k)


@pytest.mark.parametrize("method", ["fast", "free"])
def test_cheaper_trial_training_methods_run_and_keep_fa_frozen(digits, method):
    exp, baseline = digits
    exp = prepare(exp.config.replace(train_method=method, epochs=1, k=0.0))
    result = run_trial(exp, baseline, 2, 0)
    assert result.epochs_run == 1 and 0.0 <= result.acc <= 1.0
    assert result.acc > result.acc_sr  # training f_b helped against the evaluation attack


def test_bf16_precision_trains_fb_and_changes_the_cache_key(digits):
    from semirobust_ray.baseline import baseline_key

    exp, baseline = digits
    bf16 = prepare(exp.config.replace(precision="bf16", epochs=1, k=0.0))
    assert baseline_key(bf16) != baseline.key  # a bf16 baseline is a different baseline
    result = run_trial(bf16, baseline, 2, 0)
    assert result.epochs_run == 1 and result.acc > result.acc_sr


def test_checkpoint_without_cuda_rng_still_loads():
    """Checkpoints written before the CUDA RNG was saved resume with seeded CUDA RNGs."""
    old = {
        "epoch": 1,
        "acc_sr": 0.5,
        "history": [],
        "fb_state": {},
        "optimizer_state": {},
        "best_epoch": 1,
        "best_val": 0.5,
        "best_fb_state": {},
        "data_rng": torch.Generator().get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    assert TrialState.from_dict(old).cuda_rng == []


def test_deterministic_option_is_a_no_op_on_cpu_but_keys_the_baseline(digits, restore_numerics):
    """README: ``deterministic: true`` changes no number on a CPU; it is a different baseline
    (on a GPU it changes the numerics), and the trial sets the flags in its own process."""
    from semirobust_ray.baseline import baseline_key
    from semirobust_ray.training import NumericsFlags

    exp, baseline = digits
    cpu = prepare(exp.config.replace(device="cpu", epochs=1, k=0.0))
    det = prepare(cpu.config.replace(deterministic=True))
    assert baseline_key(det) != baseline_key(cpu)
    plain = run_trial(cpu, baseline, 2, 0)
    assert NumericsFlags.current() == NumericsFlags.for_config(False)
    strict = run_trial(det, baseline, 2, 0)
    assert NumericsFlags.current() == NumericsFlags.for_config(True)
    assert _numbers(strict.history) == _numbers(plain.history)
    assert (strict.acc, strict.acc_sr, strict.clean_acc) == (
        plain.acc,
        plain.acc_sr,
        plain.clean_acc,
    )


def test_acc_sr_is_measured_once_per_depth_and_shared(digits):
    """(f*_a, regular f_b) is the same network in every trial of a depth: one evaluation."""
    from semirobust_ray.algorithm1 import LocalAccSr, measure_acc_sr

    exp, baseline = digits
    share = LocalAccSr()
    trials = [run_trial(exp, baseline, 3, t, acc_sr=share) for t in range(3)]
    assert [t.measured_acc_sr for t in trials] == [True, False, False]
    assert len({t.acc_sr for t in trials}) == 1
    # Whichever trial measures it gets the same number: the evaluation is seeded by the depth.
    alone = run_trial(exp, baseline, 3, 2)
    assert alone.measured_acc_sr and alone.acc_sr == trials[0].acc_sr
    assert alone.acc_sr == measure_acc_sr(exp, baseline, 3)
    # ... and measuring it does not change what the trial trains (the RNG is forked).
    assert _numbers(alone.history) == _numbers(trials[2].history)

    # A trial whose depth is being measured by another one collects the value at its end, or
    # measures it itself when none came.
    class Busy(LocalAccSr):
        def claim(self, fb_layers, trial):
            return False

    late = run_trial(exp, baseline, 3, 1, acc_sr=Busy())
    assert late.measured_acc_sr and late.acc_sr == alone.acc_sr


def test_trial_reports_its_compute_by_kind(digits):
    exp, baseline = digits
    result = run_trial(prepare(exp.config.replace(mi=True)), baseline, 2, 0)
    assert result.train_seconds > 0 and result.eval_seconds > 0 and result.mi_seconds > 0
    assert result.train_seconds == pytest.approx(sum(h["train_seconds"] for h in result.history))
    assert result.train_seconds + result.eval_seconds + result.mi_seconds <= result.seconds
    assert baseline.metrics.adv_train_seconds > 0 and baseline.metrics.regular_train_seconds > 0


def test_baseline_key_follows_the_code_that_trains_it(tmp_path):
    """Editing a module that trains or evaluates the baseline changes the cache key by itself;
    editing one that does not (the report) leaves it."""
    import os
    import shutil
    import subprocess
    import sys

    import semirobust_ray
    from semirobust_ray.baseline import code_fingerprint

    package = tmp_path / "semirobust_ray"
    shutil.copytree(
        Path(semirobust_ray.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )

    def fingerprint() -> str:
        script = "from semirobust_ray.baseline import code_fingerprint; print(code_fingerprint())"
        env = {**os.environ, "PYTHONPATH": str(tmp_path)}
        out = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            cwd=tmp_path,  # python -c puts the working directory first on sys.path
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    original = fingerprint()
    assert original == code_fingerprint()  # same code, same key
    with (package / "report.py").open("a") as f:
        f.write("\n# a report change does not touch the baseline\n")
    assert fingerprint() == original
    with (package / "training.py").open("a") as f:
        f.write("\n# any edit of the training code\n")
    assert fingerprint() != original


def test_mi_samples_take_a_class_stratified_subset(digits, monkeypatch):
    """On a class-sorted test set the first mi_samples images would hold one or two classes."""
    import dataclasses

    import semirobust_ray.mi as mi_module
    from semirobust_ray.algorithm1 import trial_mi
    from semirobust_ray.data import to_unit

    exp, baseline = digits
    exp = prepare(exp.config.replace(mi=True, mi_samples=30))
    order = torch.argsort(exp.data.y_test, stable=True)
    data = dataclasses.replace(
        exp.data, x_test=exp.data.x_test[order], y_test=exp.data.y_test[order]
    )
    exp = dataclasses.replace(exp, data=data)
    seen = {}

    def record(model, layers, x, y, **kwargs):
        seen["x"], seen["y"] = x, y
        return []

    monkeypatch.setattr(mi_module, "layer_mi", record)
    x, y = exp.eval_split("test")
    trial_mi(exp, semirobust_model(exp, baseline, 2), to_unit(x), y, seed=0)
    counts = torch.bincount(seen["y"], minlength=10)
    assert len(seen["y"]) == len(seen["x"]) == 30
    assert counts.min() >= 2 and counts.max() <= 4  # every class, in proportion


def test_baseline_stores_its_per_image_validation_outcomes(digits):
    """Acc*_val is every validation image's outcome under the stop attack seeded with ``seed``,
    stored per image: the mean is Acc*_val and a re-run gives the very same vector."""
    import numpy as np

    from semirobust_ray.paired import unpack_correct
    from semirobust_ray.training import predict_adversarial

    exp, baseline = digits
    m = baseline.metrics
    x_val, y_val = exp.eval_split("val")
    assert m.val_images == len(y_val) == len(exp.data.y_val)  # every validation image
    # The test images Acc* stands on (eval_samples caps them): the test Diff's standard error.
    assert m.test_images == len(exp.eval_split("test")[1])
    correct = unpack_correct(m.val_correct)
    assert correct.shape == (m.val_images,) and correct.mean() == pytest.approx(m.acc_star_val)
    model = exp.build_model()
    model.load_state_dict(baseline.robust_state)
    _, preds = predict_adversarial(
        model,
        x_val,
        y_val,
        attack=exp.stop_attack(model, exp.config.seed),
        batch_size=exp.config.eval_batch,
        device=exp.device,
    )
    assert np.array_equal((preds == y_val).numpy(), correct)


def test_the_check_is_paired_with_the_baseline_image_by_image(digits):
    """The robust network itself, checked like a trial's: the same images, order and attack
    randomness give exactly the baseline's outcomes, a gap of 0 images with no noise."""
    from semirobust_ray.algorithm1 import validation_check

    exp, baseline = digits
    s = semirobust_model(exp, baseline, 3)
    s.load_fb_state(s.fb_subset(baseline.robust_state))
    check = validation_check(exp, baseline, s.model)
    assert (check.gap_images, check.se_images) == (0, 0.0)
    assert check.n_images == baseline.metrics.val_images


def test_a_trials_outcome_is_its_best_epochs_paired_check(digits):
    from semirobust_ray.algorithm1 import validation_check
    from semirobust_ray.paired import within_k

    exp, baseline = digits
    exp = prepare(exp.config.replace(k=0.0, epochs=3))  # k = 0: it runs all three epochs
    result = run_trial(exp, baseline, 4, 0)
    best = max(result.history, key=lambda h: (h["val_robust_acc"], -h["epoch"]))
    assert result.best_epoch == best["epoch"]
    assert (result.gap_images, result.val_images) == (best["gap_images"], best["val_images"])
    assert result.gap_se == best["gap_se"] and result.val_acc == best["val_robust_acc"]
    assert result.reached == within_k(result.gap_images, result.val_images, 0.0)
    for h in result.history:
        assert h["gap"] == pytest.approx(h["gap_images"] / h["val_images"])
    # The trial's final f_b is that epoch's network: checked again, the same numbers.
    s = semirobust_model(exp, baseline, 4)
    s.load_fb_state(result.fb_state)
    again = validation_check(exp, baseline, s.model)
    assert (again.gap_images, again.se) == (result.gap_images, result.gap_se)


def test_val_samples_caps_the_validation_check_and_eval_samples_only_the_test(digits):
    exp, _ = digits
    capped = prepare(exp.config.replace(eval_samples=30))
    assert len(capped.eval_split("test")[1]) == 30
    assert len(capped.eval_split("val")[1]) == len(exp.data.y_val)
    val = prepare(exp.config.replace(val_samples=50))
    _, y = val.eval_split("val")
    assert len(y) == 50 and torch.bincount(y, minlength=10).min() >= 4  # stratified
    assert len(val.eval_split("test")[1]) == len(exp.data.y_test)
    from semirobust_ray.baseline import baseline_key

    assert baseline_key(val) != baseline_key(exp)  # another Acc*_val


def test_best_trial_is_chosen_by_validation_and_rho_over_measured_trials():
    import math

    from semirobust_ray.algorithm1 import TrialResult, best_trial

    def trial(i, val_acc, acc, mi):
        return TrialResult(
            fb_layers=2, trial=i, seed=i, acc_star=0.8, acc_sr=0.5, acc=acc, clean_acc=acc,
            best_epoch=1, epochs_run=1, reached=False, seconds=1.0, history=[],
            mi=[{"j": 6, "bits": b} for b in mi], val_acc=val_acc, test_evaluated=bool(mi),
        )  # fmt: skip

    nan = math.nan
    trials = [trial(0, 0.70, nan, []), trial(1, 0.75, 0.6, [2.0]), trial(2, 0.75, nan, [])]
    assert best_trial(trials).trial == 1  # highest val_acc, ties: the lower index
    s = summarise_depth(trials)
    assert s.best_trial == 1 and s.acc == 0.6 and s.rho == {6: 2.0} == s.rho_best
    # Results stored before val_acc was recorded: the test Acc decides, as it used to.
    old = [trial(0, None, 0.5, [1.0]), trial(1, None, 0.55, [3.0])]
    s = summarise_depth(old)
    assert s.best_trial == 1 and s.rho == {6: 1.0} and s.rho_best == {6: 3.0}


def test_test_eval_best_evaluates_the_final_network_after_the_trial_exactly_as_all(digits):
    """A trial under ``test_eval: best`` skips the test evaluation and MI; evaluating its final
    f_b afterwards (final_eval) gives the numbers the trial measures itself under ``all``."""
    import math

    from semirobust_ray.final_eval import apply_evaluation, evaluate_trial

    exp, baseline = digits
    common = {"mi": True, "mi_samples": 60, "mi_cpus": 0}
    every = run_trial(prepare(exp.config.replace(test_eval="all", **common)), baseline, 2, 0)
    lazy_exp = prepare(exp.config.replace(test_eval="best", **common))
    lazy = run_trial(lazy_exp, baseline, 2, 0)
    assert not lazy.test_evaluated and math.isnan(lazy.acc) and lazy.mi == []
    assert lazy.mi_seconds == 0.0 and every.test_evaluated
    assert (lazy.gap_images, lazy.reached) == (every.gap_images, every.reached)
    apply_evaluation(lazy, evaluate_trial(lazy_exp, baseline, lazy))
    assert (lazy.acc, lazy.clean_acc, lazy.mi) == (every.acc, every.clean_acc, every.mi)
    assert lazy.test_evaluated and lazy.mi_seconds > 0


@pytest.mark.parametrize("test_eval", ["best", "all"])
def test_runner_test_eval_evaluates_the_best_trial_per_depth_or_all(digits, test_eval, logs):
    import math

    from semirobust_ray.paired import noise_floor
    from semirobust_ray.runner import run_algorithm1

    exp, baseline = digits
    config = exp.config.replace(
        test_eval=test_eval,
        trials_per_depth=2,
        split_depths=(1, 6),
        epochs=1,
        mi=True,
        mi_samples=60,
    )
    results = run_algorithm1(config)
    # The noise floor, once, before the trials (digits: 144 validation images, k = 0.05).
    floor = noise_floor(baseline.metrics.acc_star_val, baseline.metrics.val_images, config.k)
    warned = [line for line in logs if line.startswith("[noise floor]")]
    assert floor["warning"] and warned == [f"[noise floor] {floor['warning']}"]
    assert results["baseline"]["val_images"] == len(exp.data.y_val)
    for depth in (1, 6):
        ours = [t for t in results["trials"] if t["fb_layers"] == depth]
        best = max(ours, key=lambda t: (t["val_acc"], -t["trial"]))
        summary = next(d for d in results["depths"] if d["fb_layers"] == depth)
        assert summary["best_trial"] == best["trial"] and summary["acc"] == best["acc"]
        for t in ours:
            evaluated = test_eval == "all" or t is best
            assert t["test_evaluated"] == evaluated
            assert math.isnan(t["acc"]) != evaluated and bool(t["mi"]) == evaluated
