"""Models and attacks from anywhere: ``timm:NAME`` and ``package.module:factory`` networks are
split, frozen and searched like registry models, and ``torchattacks:NAME`` and
``package.module:Class`` attacks train and evaluate like registered ones, on 2 Ray workers that
import them themselves.

The factories live in ``tests/mymodels``, the attacks in ``tests/myattacks``, both shipped to
the workers with Ray's ``py_modules``, the recipe README and docs/extending.md give users;
pytest puts ``tests/`` on the driver's ``sys.path``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch

from semirobust_ray.cli import main
from semirobust_ray.config import ConfigError, ExperimentConfig
from semirobust_ray.models import ModelError, create_model, split, trainable_layers
from semirobust_ray.ray_search import run_search

pytest.importorskip("timm")

MYMODELS = Path(__file__).resolve().parent / "mymodels"
MYATTACKS = Path(__file__).resolve().parent / "myattacks"
VIT = "timm:vit_tiny_patch16_224"
# Two blocks of 4 Linear layers, patch embedding conv and head: 10 trainable layers.
VIT_KWARGS = {"patch_size": 4, "depth": 2}

# CI-sized: digits upsampled to 16 px, a 1 + 1 epoch baseline, one 1-epoch trial per depth.
TINY = dict(
    dataset="digits",
    image_size=16,
    max_train=100,
    max_test=40,
    attack="pgd",
    eps=0.1,
    alpha=0.05,
    steps=2,
    batch_size=50,
    lr=0.05,
    baseline_epochs=1,
    baseline_adv_epochs=1,
    epochs=1,
    trials_per_depth=1,
    k=1.0 - 1e-6,  # every trial reaches: this checks the plumbing, not robustness
    mi=False,
    max_failures=0,
)


@pytest.fixture(scope="module")
def ray_workers():
    # py_modules: the workers import `mymodels` from what Ray ships them, not from this checkout.
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"py_modules": [str(MYMODELS), str(MYATTACKS)]},
    )
    yield
    ray.shutdown()


@pytest.mark.parametrize(
    ("model", "kwargs", "depths"),
    [
        ("timm:resnet18", None, [1, 9]),
        (VIT, VIT_KWARGS, [1, 10]),
        ("mymodels:tiny_cnn", {"width": 6}, [1, 3]),
    ],
    ids=["timm-resnet18", "timm-vit", "import-path"],
)
def test_search_on_two_workers(model, kwargs, depths, ray_workers, tmp_path):
    config = ExperimentConfig.from_dict(
        {
            **TINY,
            "model": model,
            "model_kwargs": kwargs,
            "split_depths": depths,
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    outcome = run_search(config, storage_path=str(tmp_path), name="s", verbose=0)
    trials = outcome.results["trials"]
    assert sorted(t["fb_layers"] for t in trials) == depths
    assert all(t["epochs_run"] == 1 for t in trials)
    assert outcome.answer_fb_layers == max(depths)  # robust_fa: the largest reaching |f_b|


def test_attacks_from_outside_train_and_evaluate_on_two_workers(ray_workers, tmp_path):
    """torchattacks' PGD trains (baseline and trials), the user's MIFGSM measures every
    accuracy and checks every epoch; MIFGSM has no default for its ``decay``, so a worker that
    did not receive ``attack_kwargs`` could not even build it."""
    config = ExperimentConfig.from_dict(
        {
            **TINY,
            "model": "smallcnn",
            "split_depths": [1, 6],
            "attack": "torchattacks:PGD",
            "eval_attack": "myattacks:MIFGSM",
            "attack_kwargs": {
                "torchattacks:PGD": {"random_start": False},
                "myattacks:MIFGSM": {"decay": 0.5},
            },
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    assert config.stop_attack_name == "myattacks:MIFGSM"
    outcome = run_search(config, storage_path=str(tmp_path), name="a", verbose=0)
    trials = outcome.results["trials"]
    assert sorted(t["fb_layers"] for t in trials) == [1, 6]
    assert all(t["epochs_run"] == 1 for t in trials)


def test_timm_vit_container_tensors_follow_the_cut():
    model = create_model(VIT, 10, 16, 3, model_kwargs=VIT_KWARGS)
    layers = trainable_layers(model)
    assert len(layers) == 10
    assert layers[0][0] == "net.patch_embed.proj" and layers[-1][0] == "net.head"
    # cls_token and pos_embed join the patches after the patch embedding: with it in f_b
    # (|f_b| = n) they train, with it in f_a they are frozen with it.
    full = split(model, 10)
    assert {"net.cls_token", "net.pos_embed"} <= full.fb_keys
    full.release()
    cut = split(model, 9)
    assert not {"net.cls_token", "net.pos_embed"} & cut.fb_keys
    assert not model.net.cls_token.requires_grad and not model.net.pos_embed.requires_grad
    assert model.net.blocks[0].attn.qkv.weight.requires_grad


def test_timm_resnet18_frozen_fa_stays_bit_identical_while_fb_trains():
    torch.manual_seed(0)
    model = create_model("timm:resnet18", 10, 16, 3)
    assert len(trainable_layers(model)) == 21  # 20 convs (3 downsample) + fc
    s = split(model, 5)
    fa = {k: v.clone() for k, v in model.state_dict().items() if k not in s.fb_keys}
    fb = s.fb_state()
    opt = torch.optim.SGD(s.fb_parameters(), lr=0.1)
    model.train()
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(torch.rand(4, 3, 16, 16)), torch.arange(4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    assert all(torch.equal(fa[k], after[k]) for k in fa)  # BN running stats included
    assert any(not torch.equal(after[k], v) for k, v in fb.items())  # while f_b did train


def test_declared_normalisation_is_used_and_a_missing_one_warned_once(caplog):
    declared = create_model("mymodels:tiny_cnn", 3, 16, 2, mean=[0.9, 0.9], std=[0.1, 0.1])
    assert declared.normalize.mean.flatten().tolist() == [0.25, 0.25]
    assert declared.normalize.std.flatten().tolist() == [0.5, 0.5]
    timm_vit = create_model(VIT, 3, 16, 3, model_kwargs=VIT_KWARGS)  # its pretrained_cfg
    assert timm_vit.normalize.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    with caplog.at_level(logging.WARNING, logger="semirobust_ray.models"):
        for _ in range(3):
            m = create_model("mymodels:undeclared_cnn", 3, 16, 1, mean=[0.3], std=[0.2])
    assert m.normalize.mean.flatten().tolist() == pytest.approx([0.3])
    warnings = [r.getMessage() for r in caplog.records if "undeclared_cnn" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings


def test_config_accepts_model_specs_it_has_not_imported():
    # Validation checks the form only: a worker re-validates before importing anything.
    ExperimentConfig(model="not_imported_anywhere.sub:build", model_kwargs={"depth": 3})
    ExperimentConfig(model="timm:whatever_name")
    with pytest.raises(ConfigError, match="model_kwargs \\['depth'\\]: registry model"):
        ExperimentConfig(model="smallcnn", model_kwargs={"depth": 3})
    with pytest.raises(ConfigError, match="width=0.5: only registry models"):
        ExperimentConfig(model="timm:resnet18", width=0.5)
    with pytest.raises(ModelError, match="timm has no model 'resnet1'.*did you mean 'timm:resnet1"):
        create_model("timm:resnet1", 10, 16, 3)


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ("mymodels:raising", "model 'mymodels:raising': the factory raised KeyError"),
        ("mymodels:not_a_module", "the factory returned dict, not a torch.nn.Module"),
        ("mymodels:no_layers", "has no Conv2d or Linear layer"),
        ("mymodels:missing", "module 'mymodels' has no attribute 'missing'"),
        ("no_such_package.nets:build", "cannot import module 'no_such_package.nets'"),
    ],
    ids=["raises", "non-module", "no-layers", "no-attribute", "no-module"],
)
def test_bad_factory_is_one_line_error_before_ray_starts(
    model, fragment, tmp_path, capsys, monkeypatch
):
    started = []
    # Ray may be up already (this module's searches): pretend it is not, so that starting or
    # joining it would go through ray.init and be seen.
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **kw: started.append(kw))
    storage = tmp_path / "results"
    args = ["--set", f"model={model}", "--set", "mi=false", "--address", "local"]
    code = main([*args, "--storage-path", str(storage)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    assert started == []  # the driver's prepare() refused it before Ray was started or joined
    assert not list(storage.glob("**/search_meta.json"))  # no search was started


def test_baseline_key_tracks_model_kwargs_and_the_factory_source(tmp_path, monkeypatch):
    from semirobust_ray.baseline import baseline_key
    from semirobust_ray.experiment import prepare

    source = tmp_path / "userfactory_key.py"
    source.write_text("from mymodels import tiny_cnn as build\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def key(**kw) -> str:
        base = dict(dataset="digits", max_train=50, max_test=20, model="userfactory_key:build")
        return baseline_key(prepare(ExperimentConfig.from_dict({**base, **kw})))

    first = key(model_kwargs={"width": 4})
    assert first.startswith("userfactory_key_build-digits-")  # no ':' in a directory name
    assert key(model_kwargs={"width": 4}) == first
    assert key(model_kwargs={"width": 6}) != first  # another network, another baseline
    source.write_text("# edited\nfrom mymodels import tiny_cnn as build\n")
    assert key(model_kwargs={"width": 4}) != first  # the factory's code changed


def test_building_a_timm_model_prints_no_upstream_future_warning_but_ours_still_show():
    # A fresh process: timm warns while it is first imported, and this one may have imported it.
    code = (
        "import logging, warnings\n"
        "warnings.simplefilter('default')\n"
        "logging.basicConfig()\n"
        "from semirobust_ray.models import create_model\n"
        "create_model('timm:resnet18', 10, 16, 3)\n"
        "warnings.warn('our own FutureWarning', FutureWarning)\n"
        "warnings.warn('`torch.jit.interface` is deprecated, said by someone else', FutureWarning)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    future = [line for line in proc.stderr.splitlines() if "FutureWarning" in line]
    assert len(future) == 2, proc.stderr  # only the two raised after the build
    assert "our own FutureWarning" in future[0] and "someone else" in future[1]
    assert "torch/jit" not in proc.stderr, proc.stderr  # where torch raises it for timm


def test_baseline_key_tracks_attack_kwargs_and_the_attack_source(tmp_path, monkeypatch):
    from semirobust_ray.baseline import baseline_key
    from semirobust_ray.experiment import prepare

    source = tmp_path / "userattack_key.py"
    source.write_text("from myattacks import MIFGSM as Attack\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = "userattack_key:Attack"

    def key(**kw) -> str:
        base = dict(dataset="digits", max_train=50, max_test=20, eval_attack=spec)
        return baseline_key(prepare(ExperimentConfig.from_dict({**base, **kw})))

    first = key(attack_kwargs={spec: {"decay": 0.5}})
    assert key(attack_kwargs={spec: {"decay": 0.5}}) == first
    assert key(attack_kwargs={spec: {"decay": 0.9}}) != first  # another attack
    source.write_text("# edited\nfrom myattacks import MIFGSM as Attack\n")
    assert key(attack_kwargs={spec: {"decay": 0.5}}) != first  # the attack's code changed
    # torchattacks: its version stands for its code
    version = key(eval_attack="torchattacks:PGD", attack_kwargs=None)
    assert version != key(eval_attack="pgd", attack_kwargs=None)
