"""The CUDA paths: a quickstart trial, resume with the GPU's RNG, reevaluate's GPU tolerance, bf16.

Every test here is marked ``gpu``: on a machine without CUDA they are skipped with the reason
(tests/conftest.py); ``python -m pytest -m gpu`` runs them where a GPU is. They mirror the CPU
tests of tests/test_algorithm1.py and tests/test_search.py. Each test that turns
``deterministic`` on restores the process's numerics flags afterwards (``restore_numerics``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import DIGITS_SEARCH, first_epoch_state

from semirobust_ray.algorithm1 import TrialState, run_trial
from semirobust_ray.baseline import get_baseline
from semirobust_ray.config import ExperimentConfig, load_config
from semirobust_ray.experiment import prepare
from semirobust_ray.storage import load_state, save_state
from semirobust_ray.training import NumericsFlags, make_optimizer, seed_everything, train_epoch

pytestmark = pytest.mark.gpu

QUICKSTART = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"

#: The CI digits problem on the GPU; every trial measures its test Acc itself (test_eval: all),
#: so run_trial's results carry the Acc the tests below compare.
CUDA_DIGITS = {**DIGITS_SEARCH, "device": "cuda", "mi": False, "test_eval": "all"}

#: A network whose f_b draws random numbers on the GPU: the 32x32 VGG16 (narrowed) has two
#: Dropout layers between its three Linear layers, so at |f_b| = 3 every f_b update draws
#: dropout masks from the CUDA RNG. Deterministic, so that two runs can be compared exactly.
DROPOUT_FB_LAYERS = 3
CUDA_DROPOUT = {
    **CUDA_DIGITS,
    "model": "vgg16",
    "width": 0.25,
    "image_size": 32,
    "deterministic": True,
    "epochs": 2,
    "k": 0.0,
}
#: The resume test's f_b learning rate: small enough that a trial cannot reach Acc*_val (and
#: stop) after one epoch, while every epoch's loss still depends on its dropout masks.
SLOW_LR = 1e-4


def _numbers(history: list[dict]) -> list[dict]:
    """A trial's epoch records without their wall-clock fields."""
    return [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in history]


def _baseline(values: dict, cache: Path):
    """Prepare and train (or load) a baseline, leaving the process's numerics flags as they
    were: module fixtures run before any test's ``restore_numerics``."""
    before = NumericsFlags.current()
    try:
        exp = prepare(ExperimentConfig.from_dict({**values, "cache_dir": str(cache)}))
        return exp, get_baseline(exp)
    finally:
        before.apply()


@pytest.fixture(scope="module")
def cuda_digits(tmp_path_factory):
    return _baseline(CUDA_DIGITS, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def cuda_dropout(tmp_path_factory):
    return _baseline(CUDA_DROPOUT, tmp_path_factory.mktemp("cache"))


def test_quickstart_trial_runs_on_cuda(tmp_path):
    """The quickstart's config with ``device: cuda``: the baseline and one trial, ρ included,
    train and evaluate on the GPU, and the trial's checkpoints carry the GPU's RNG state."""
    exp = prepare(load_config(QUICKSTART, ["device=cuda", f"cache_dir={tmp_path}"]))
    assert exp.device.type == "cuda"
    baseline = get_baseline(exp)
    assert baseline.metrics.acc_star > baseline.metrics.robust_acc_regular  # robust training
    states: list[TrialState] = []
    result = run_trial(exp, baseline, 2, 0, on_epoch=lambda _r, st: states.append(st))
    assert result.epochs_run == len(states) >= 1
    assert 0.0 <= result.acc <= 1.0 and 0.0 <= result.acc_sr <= 1.0
    assert {t.device.type for t in states[-1].fb_state.values()} == {"cuda"}
    assert len(states[-1].cuda_rng) == torch.cuda.device_count()
    assert all(s.dtype == torch.uint8 for s in states[-1].cuda_rng)
    assert result.mi and all(math.isfinite(p["bits"]) for p in result.mi)


def test_resumed_cuda_trial_matches_uninterrupted(logs, cuda_dropout, tmp_path, restore_numerics):
    """Resumed from its checkpoint file, a GPU trial with dropout in f_b gives the same history
    and Acc as one that never stopped; without the saved CUDA RNG it would not (and says so)."""
    exp, baseline = cuda_dropout
    exp = prepare(exp.config.replace(lr=SLOW_LR))  # a trial setting: the same baseline
    full = run_trial(exp, baseline, DROPOUT_FB_LAYERS, 0)
    assert full.epochs_run == 2, "the test needs a trial that does not stop after one epoch"
    again = run_trial(exp, baseline, DROPOUT_FB_LAYERS, 0)
    assert _numbers(again.history) == _numbers(full.history)  # deterministic: true repeats

    path = tmp_path / "trial_state.pt"
    save_state(path, first_epoch_state(exp, baseline, DROPOUT_FB_LAYERS, 0))
    loaded = TrialState.from_dict(load_state(path))
    assert len(loaded.cuda_rng) == torch.cuda.device_count()
    resumed = run_trial(exp, baseline, DROPOUT_FB_LAYERS, 0, state=loaded)
    assert _numbers(resumed.history) == _numbers(full.history)
    assert resumed.acc == full.acc and resumed.clean_acc == full.clean_acc

    # The same checkpoint without its CUDA RNG state (as one written before it was saved):
    # the GPU's dropout masks restart from the seed, so the resumed epoch differs.
    logs.clear()
    bare = TrialState.from_dict({**load_state(path), "cuda_rng": []})
    restarted = run_trial(exp, baseline, DROPOUT_FB_LAYERS, 0, state=bare)
    assert any("no CUDA RNG state for cuda:" in line for line in logs), logs
    assert _numbers(restarted.history) != _numbers(full.history)


def test_bf16_path_trains_on_cuda(cuda_digits):
    """``precision: bf16`` autocasts on the GPU (the layers compute in bfloat16) and a trial
    trained that way still improves f_b against the evaluation attack."""
    exp, baseline = cuda_digits
    model = exp.build_model()
    dtypes: set[torch.dtype] = set()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    last.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype))
    gen = seed_everything(0)
    opt = make_optimizer(list(model.parameters()), 0.05, 0.9, 5e-4)
    stats = train_epoch(
        model,
        exp.data.x_train,
        exp.data.y_train,
        opt,
        batch_size=64,
        device=exp.device,
        generator=gen,
        attack=exp.train_attack(model, 0),
        bf16=True,
    )
    assert torch.bfloat16 in dtypes and math.isfinite(stats.loss) and stats.accuracy > 0.3

    bf16 = prepare(exp.config.replace(precision="bf16", epochs=1, k=0.0))
    result = run_trial(bf16, baseline, 2, 0)
    assert result.epochs_run == 1 and math.isfinite(result.history[0]["loss"])
    assert result.acc > result.acc_sr


@pytest.fixture(scope="module")
def ray_gpu():
    import ray

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "deterministic"])
def test_reevaluate_on_cuda_agrees_within_its_stated_tolerance(
    ray_gpu, tmp_path, restore_numerics, deterministic
):
    """A search whose trials ran on the GPU, re-evaluated with official AutoAttack on the GPU:
    within reevaluate's GPU_TOLERANCE on 200 test images, exact under ``deterministic``."""
    from semirobust_ray.ray_search import run_search
    from semirobust_ray.reevaluate import GPU_TOLERANCE, reevaluate
    from semirobust_ray.reevaluate import main as reevaluate_main

    config = ExperimentConfig.from_dict(
        {
            **CUDA_DIGITS,
            "gpus_per_trial": 1,
            "eval_attack": "autoattack",
            "stop_attack": "pgd",
            "eval_samples": 200,
            "split_depths": [2],
            "search": "grid",
            "deterministic": deterministic,
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    outcome = run_search(config, storage_path=str(tmp_path), name="aa", verbose=0)
    table = reevaluate(outcome.experiment_dir, device="cuda")
    assert list(table["fb_layers"].fillna(0)) == [0, 2]  # Acc* first, then the trial
    tolerance = 1e-6 if deterministic else GPU_TOLERANCE  # 1e-6: float32 rounding of Acc
    assert (table["abs_diff"] <= tolerance).all(), table
    argv = [outcome.experiment_dir, "--device", "cuda", "--tolerance", str(tolerance)]
    assert reevaluate_main([str(a) for a in argv]) == 0
