"""Every shipped search space is valid and says what the paper's settings are."""

from functools import cache
from pathlib import Path

import pytest

from semirobust_ray.config import load_config
from semirobust_ray.models import create_model, trainable_layers


@cache
def layer_count(model: str, size: int) -> int:
    return len(trainable_layers(create_model(model, 10, size)))


SPACES = sorted((Path(__file__).resolve().parents[1] / "search_spaces").glob("*.yaml"))


def test_quickstart_and_the_nine_paper_settings_ship():
    names = {p.stem for p in SPACES}
    assert "quickstart" in names
    for model in ("alexnet", "vgg16", "resnet50"):
        for dataset in ("cifar10", "cifar100", "imagenette"):
            assert f"paper_{model}_{dataset}" in names


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_search_space_is_valid(path):
    c = load_config(path)
    if path.stem.startswith("paper_"):
        assert (c.attack, c.eval_attack, c.steps) == ("pgd", "autoattack", 10)
        assert c.eps == pytest.approx(8 / 255) and c.alpha == pytest.approx(1 / 255)
        size = c.image_size or 32
        n = layer_count(c.model, size)
        assert set(c.split_depths) == {d for d in (4, 12, 16) if d <= n}


def test_the_robustbench_space_names_a_published_pair_of_one_architecture():
    from semirobust_ray import zoo

    c = load_config(Path(SPACES[0]).parent / "robustbench_cifar10.yaml")
    robust, regular = (zoo.parse_ref(c.baseline[role]) for role in ("robust", "regular"))
    for ref in (robust, regular):
        zoo.check_ref(ref)  # both listed in RobustBench's zoo
    assert zoo.parse_ref(c.model) == robust and regular.name == "Standard"
    assert type(zoo.architecture(robust)) is type(zoo.architecture(regular))
    assert layer_count(c.model, 32) == 29  # WRN-28-10: 25 convolutions, 3 shortcuts, classifier
    assert c.eval_attack == "autoattack" and c.eps == pytest.approx(8 / 255)
