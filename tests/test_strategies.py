"""Every entry of the strategy table held to its contract (``semirobust_ray/strategies.py``).

Each strategy is driven as Tune drives it, without a cluster: its searcher is asked for trials
and told each outcome (a simulated one) until it says FINISHED or its sample budget is spent. A
new entry is tested here without a test of its own.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DIGITS_SEARCH

from semirobust_ray.config import ConfigError, ExperimentConfig
from semirobust_ray.experiment import prepare
from semirobust_ray.strategies import STRATEGIES, strategy

DEPTHS = [1, 2, 3, 4, 5, 6]


@pytest.fixture(scope="module")
def experiments() -> dict[str, object]:
    base = {**DIGITS_SEARCH, "split_depths": DEPTHS, "trials_per_depth": 2, "max_trials": 10}
    data = prepare(ExperimentConfig.from_dict({**base, "search": "grid"}))
    return {
        name: type(data)(
            ExperimentConfig.from_dict({**base, "search": name}), data.data, data.device, 6
        )
        for name in STRATEGIES
    }


def _grid_trials(space: dict) -> list[dict]:
    from ray.tune.search.variant_generator import generate_variants

    return [config for _, config in generate_variants(space)]


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_strategy_meets_its_contract(name, experiments):
    exp = experiments[name]
    chosen = strategy(name)
    space = chosen.space(exp)
    if chosen.searcher is None:
        trials = _grid_trials(space)
        assert chosen.num_samples(exp) >= 1
    else:
        trials = _drive(chosen.searcher(exp, 2), space, chosen.num_samples(exp))
    assert trials, f"{name} suggested no trial"
    assert {t["fb_layers"] for t in trials} <= set(DEPTHS)
    indexed = [(t["fb_layers"], t["trial"]) for t in trials if "trial" in t]
    assert len(indexed) == len(set(indexed)), f"{name} repeated a (depth, trial index)"


def _drive(searcher, space: dict, num_samples: int) -> list[dict]:
    """Ask ``searcher`` for trials as Tune would, answering each with a simulated outcome
    (|f_b| <= 3 reaches with probability 0.9, deeper ones with 0.1), one at a time."""
    searcher.set_search_properties("objective", "min", space)
    rng = np.random.default_rng(0)
    budget = num_samples if num_samples > 0 else 500
    trials = []
    for i in range(budget):
        config = searcher.suggest(f"t{i}")
        if config is None or config == "FINISHED":
            break
        reached = bool(rng.random() < (0.9 if config["fb_layers"] <= 3 else 0.1))
        searcher.on_trial_complete(
            f"t{i}", {"reached": int(reached), "objective": float(not reached)}
        )
        trials.append(config)
    else:
        assert num_samples > 0, "a strategy that ends itself did not end within 500 trials"
    return trials


def test_the_table_is_the_configs_search_values_and_an_unknown_one_is_refused():
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict({"search": "bisect"})
    assert str(err.value) == (
        "search: unknown value 'bisect' (did you mean 'bisection'?); valid: "
        + ", ".join(sorted(STRATEGIES))
    )
    with pytest.raises(ValueError, match="search: unknown value 'x'; valid: adaptive, "):
        strategy("x")
