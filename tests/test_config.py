"""Every bad key or value is rejected before compute, with a one-line message that helps."""

import logging

import pytest

import semirobust_ray.config as config_module
from semirobust_ray.config import ConfigError, ExperimentConfig, load_config, parse_overrides


def test_defaults_are_the_authors_settings():
    c = ExperimentConfig()
    assert (c.epochs, c.trials_per_depth, c.batch_size, c.lr, c.momentum, c.weight_decay, c.k) == (
        10,
        10,
        512,
        0.01,
        0.9,
        5e-4,
        0.05,
    )
    assert c.eps == pytest.approx(8 / 255) and c.alpha == pytest.approx(1 / 255) and c.steps == 10


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        ({"model": "resnet"}, r"model: unknown value 'resnet' \(did you mean 'resnet50'\?\)"),
        ({"dataset": "cifar"}, r"dataset: unknown value 'cifar'.*valid: .*cifar10"),
        ({"attack": "pgdd"}, r"attack: unknown value 'pgdd' \(did you mean 'pgd'\?\)"),
        ({"search": "random"}, r"search: unknown value 'random'.*bisection, grid, optuna"),
        ({"epochs": 0}, r"epochs=0 is out of range: valid \[1, inf\]"),
        ({"epochs": -3}, r"epochs=-3 is out of range"),
        ({"k": 1.5}, r"k=1.5 is out of range: valid \[0, 1\)"),
        ({"k": -0.1}, r"k=-0.1 is out of range"),
        ({"eps": -0.01}, r"eps=-0.01 is out of range: valid \(0, 1\]"),
        ({"eps": 2}, r"eps=2 is out of range"),
        ({"alpha": 0}, r"alpha=0 is out of range"),
        ({"steps": 0}, r"steps=0 is out of range"),
        ({"split_depths": [0, 2]}, r"split_depths entry=0 is out of range"),
        ({"split_depths": [2, 2]}, r"lists a depth twice"),
        ({"split_depths": []}, r"non-empty list"),
        ({"lr": "fast"}, r"lr: expected a number, got 'fast'"),
        ({"trials_per_depth": 1.5}, r"trials_per_depth: expected an integer"),
        ({"mi": "yes"}, r"mi: expected true or false"),
        ({"deterministic": "on"}, r"deterministic: expected true or false, got 'on'"),
        ({"deterministic": 1}, r"deterministic: expected true or false, got 1"),
        ({"augment": "yes"}, r"augment: expected true, false or null .*got 'yes'"),
        ({"dataset": "npz"}, r"dataset 'npz' needs data_path"),
        ({"epoch": 3}, r"unknown config key 'epoch' \(did you mean 'epochs'\?\)"),
        ({"eval_batch_size": 0}, r"eval_batch_size=0 is out of range"),
        ({"width": 0}, r"width=0 is out of range: valid \(0, 1\]"),
        ({"width": 2}, r"width=2 is out of range"),
        ({"stop_attack": "apgd-dlr"}, r"stop_attack: unknown value 'apgd-dlr'.*valid: .*apgd-ce"),
    ],
)
def test_bad_values_name_key_value_and_valid_choices(values, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        ExperimentConfig.from_dict(values)
    assert "\n" not in str(info.value)


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("model: smallcnn\nsplit_depths: [1, 3]\nepochs: 2\n")
    c = load_config(path, ["split_depths=[2,4,6]", "k=0.1", "eval_attack=fgsm"])
    assert c.split_depths == (2, 4, 6) and c.epochs == 2 and c.k == 0.1
    assert c.eval_attack_name == "fgsm"
    assert ExperimentConfig.from_dict(c.to_dict()) == c


def test_seeds_is_an_alias_of_trials_per_depth_that_warns_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(config_module, "_WARNED_RENAMES", set())
    path = tmp_path / "old.yaml"
    path.write_text("seeds: 3\nepochs: 2\n")
    with caplog.at_level(logging.WARNING, logger="semirobust_ray.config"):
        assert ExperimentConfig.from_dict({"seeds": 3}).trials_per_depth == 3
        assert ExperimentConfig(seeds=4).trials_per_depth == 4
        assert ExperimentConfig().replace(seeds=5).trials_per_depth == 5
        assert load_config(path).trials_per_depth == 3
        # A later layer overrides an earlier one under either name.
        assert load_config(path, ["trials_per_depth=6"]).trials_per_depth == 6
        # The same value under both names is no conflict.
        assert ExperimentConfig(seeds=2, trials_per_depth=2).trials_per_depth == 2
    warned = [r.getMessage() for r in caplog.records if "'seeds'" in r.getMessage()]
    assert warned == [
        "config key 'seeds' is now 'trials_per_depth' (T, trials per split depth); "
        "'seeds' still works"
    ]
    assert "seeds" not in ExperimentConfig(seeds=3).to_dict()


def test_seeds_and_trials_per_depth_that_disagree_are_one_error(tmp_path):
    pattern = r"config keys 'seeds' \(2\) and 'trials_per_depth' \(3\) name the same setting"
    for build in (
        lambda: ExperimentConfig.from_dict({"seeds": 2, "trials_per_depth": 3}),
        lambda: ExperimentConfig().replace(seeds=2, trials_per_depth=3),
        lambda: load_config(None, ["seeds=2", "trials_per_depth=3"]),
    ):
        with pytest.raises(ConfigError, match=pattern) as info:
            build()
        assert "\n" not in str(info.value)
    # The old name is no longer listed as a key; a misspelling of the new one is still caught.
    with pytest.raises(ConfigError, match=r"'trials_per_dept' \(did you mean 'trials_per_depth'"):
        ExperimentConfig.from_dict({"trials_per_dept": 2})
    with pytest.raises(ConfigError, match=r"trials_per_depth=0 is out of range"):
        ExperimentConfig.from_dict({"seeds": 0})


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML at line"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listy)
    keys = tmp_path / "keys.yaml"
    keys.write_text("modle: vgg16\nfoo: 1\n")
    with pytest.raises(ConfigError, match=r"unknown config keys 'foo', 'modle' \(did you mean"):
        load_config(keys)


def test_override_parsing_errors():
    assert parse_overrides(["eps=0.03", "split_depths=[1, 2]"]) == {
        "eps": 0.03,
        "split_depths": [1, 2],
    }
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["eps"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_overrides(["split_depths=[1,2"])


def test_autoattack_evaluation_is_checked_with_apgd_ce_by_default():
    assert ExperimentConfig(eval_attack="autoattack").stop_attack_name == "apgd-ce"
    assert ExperimentConfig(eval_attack="autoattack", stop_attack="pgd").stop_attack_name == "pgd"
    assert ExperimentConfig(eval_attack="pgd").stop_attack_name == "pgd"
    assert ExperimentConfig().stop_attack_name == "pgd"  # the training attack, as before


def test_deterministic_is_off_by_default_and_set_from_yaml_or_override(tmp_path):
    assert ExperimentConfig().deterministic is False  # PyTorch's fast GPU defaults
    path = tmp_path / "space.yaml"
    path.write_text("deterministic: true\n")
    assert load_config(path).deterministic is True
    assert load_config(path, ["deterministic=false"]).deterministic is False
    assert ExperimentConfig.from_dict({"deterministic": True}).to_dict()["deterministic"] is True
