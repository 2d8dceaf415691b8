"""Algorithm 1 without Ray on real data: baseline, frozen f*_a, the k-stop, caching, resume."""

import json
from pathlib import Path

import pytest
import torch

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
    seeds=1,
    mi=False,
)


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    exp = prepare(ExperimentConfig.from_dict({**DIGITS, "cache_dir": str(cache)}))
    return exp, get_baseline(exp, log=quiet)


def test_adversarial_training_raises_robust_accuracy(digits):
    _, baseline = digits
    m = baseline.metrics
    assert m.clean_acc_regular > 0.9  # a working classifier first
    assert m.acc_star > m.robust_acc_regular + 0.2, m


def test_second_call_reuses_cached_baseline(digits):
    exp, first = digits
    logs: list[str] = []
    again = get_baseline(exp, log=logs.append)
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
    assert baseline_key(prepare(exp.config.replace(k=0.2, epochs=7, seeds=3))) == first.key
    # augmentation trains another baseline; spelling out digits' default (off) does not
    assert baseline_key(prepare(exp.config.replace(augment=True))) != first.key
    assert baseline_key(prepare(exp.config.replace(augment=False))) == first.key


def test_stop_attack_measures_acc_star_val_and_eval_attack_acc_star(digits):
    """A different per-epoch check attack (C&W L2) beside the reported one (PGD): like with like."""
    from semirobust_ray.baseline import baseline_key
    from semirobust_ray.training import evaluate

    exp, _ = digits
    cheap = prepare(exp.config.replace(stop_attack="cw"))
    assert baseline_key(cheap) != baseline_key(exp)
    b = get_baseline(cheap, log=quiet)
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


def test_damaged_cache_is_rebuilt_not_used(digits, tmp_path):
    exp, first = digits
    exp2 = prepare(exp.config.replace(cache_dir=str(tmp_path)))
    b = get_baseline(exp2, log=quiet)
    weights = b.path / "robust.pt"
    weights.write_bytes(weights.read_bytes()[:100])  # a half-written file
    logs: list[str] = []
    rebuilt = get_baseline(exp2, log=logs.append)
    assert any("damaged" in line and "checksum" in line for line in logs)
    assert not rebuilt.reused and rebuilt.acc_star == pytest.approx(b.acc_star)
    assert get_baseline(exp2, log=quiet).reused  # and the cache is whole again


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
    result = run_trial(loose, baseline, 1, 0, log=quiet)
    assert result.epochs_run == 1 and result.reached
    strict = prepare(exp.config.replace(k=0.0, epochs=2))
    result = run_trial(strict, baseline, 6, 0, log=quiet)
    gaps = [h["gap"] for h in result.history]
    assert result.epochs_run == 2 or gaps[-1] <= 0.0


def test_trial_resumed_from_checkpoint_matches_uninterrupted(digits):
    """With augmentation on, so the checkpointed data generator must also replay the crops."""
    exp, baseline = digits
    exp = prepare(exp.config.replace(k=0.0, epochs=2, augment=True))
    full = run_trial(exp, baseline, 6, 0, log=quiet)
    saved: list[dict] = []

    class Interrupt(Exception):
        pass

    def on_epoch(record, state):
        saved.append(state.to_dict())
        raise Interrupt

    with pytest.raises(Interrupt):
        run_trial(exp, baseline, 6, 0, on_epoch=on_epoch, log=quiet)
    resumed = run_trial(exp, baseline, 6, 0, state=TrialState.from_dict(saved[0]), log=quiet)
    assert full.epochs_run == 2, "the test needs a trial that does not stop after one epoch"

    def numbers(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert numbers(resumed.history) == numbers(full.history)
    assert resumed.acc == full.acc and resumed.acc_sr == full.acc_sr
    plain = run_trial(prepare(exp.config.replace(augment=False)), baseline, 6, 0, log=quiet)
    assert numbers(plain.history) != numbers(full.history)  # augmentation did take part


def test_same_seed_same_numbers(digits):
    exp, baseline = digits
    a = run_trial(exp, baseline, 2, 0, log=quiet)
    b = run_trial(exp, baseline, 2, 0, log=quiet)
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
    assert results["minimal_fb_layers"] in (1, 6, None)
    pairs = results["trials"][0]["mi"]
    assert [p["j"] for p in pairs] == [6] and pairs[0]["bits"] >= 0  # |f_b|=1: pair (5, 6)
    assert "minimal robust split" in capsys.readouterr().out


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
    baseline = get_baseline(exp, log=quiet)
    result = run_trial(exp, baseline, 2, 0, log=quiet)
    assert 0.0 <= result.acc <= 1.0 and result.epochs_run == 1


@pytest.mark.parametrize("method", ["fast", "free"])
def test_cheaper_trial_training_methods_run_and_keep_fa_frozen(digits, method):
    exp, baseline = digits
    exp = prepare(exp.config.replace(train_method=method, epochs=1, k=0.0))
    result = run_trial(exp, baseline, 2, 0, log=quiet)
    assert result.epochs_run == 1 and 0.0 <= result.acc <= 1.0
    assert result.acc > result.acc_sr  # training f_b helped against the evaluation attack


def test_bf16_precision_trains_fb_and_changes_the_cache_key(digits):
    from semirobust_ray.baseline import baseline_key

    exp, baseline = digits
    bf16 = prepare(exp.config.replace(precision="bf16", epochs=1, k=0.0))
    assert baseline_key(bf16) != baseline.key  # a bf16 baseline is a different baseline
    result = run_trial(bf16, baseline, 2, 0, log=quiet)
    assert result.epochs_run == 1 and result.acc > result.acc_sr
