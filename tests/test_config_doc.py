"""The README's configuration table and ``--help`` are the schema's, and say what it enforces."""

from pathlib import Path

import pytest

from semirobust_ray.cli import main
from semirobust_ray.config import ConfigError, ExperimentConfig, key_bounds
from semirobust_ray.config_doc import BEGIN, END, markdown_table, readme_section, with_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_table_is_the_schema():
    # On failure: python -m semirobust_ray.config_doc --write README.md
    assert readme_section(README.read_text()) == markdown_table()


def test_every_key_has_help_and_appears_in_the_table_and_search_help(capsys):
    table = markdown_table()
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    search_help = capsys.readouterr().out
    for key, field in ExperimentConfig.model_fields.items():
        assert field.description, key
        assert f"| `{key}` |" in table
        assert f"  {key} = " in search_help


def test_write_replaces_a_stale_table_and_refuses_a_readme_without_one():
    stale = f"intro\n{BEGIN}\n| key | old |\n{END}\nrest\n"
    fresh = with_table(stale)
    assert fresh.startswith("intro\n") and fresh.endswith(f"{END}\nrest\n")
    assert readme_section(fresh) == markdown_table()
    with pytest.raises(ValueError, match="config-keys"):
        with_table("a README with no generated section")


BOUNDED = [key for key in ExperimentConfig.model_fields if key_bounds(key)[0] is not None]


@pytest.mark.parametrize("key", BOUNDED)
def test_documented_lower_bounds_are_enforced(key):
    low, low_open, _, _ = key_bounds(key)
    is_int = ExperimentConfig.model_fields[key].annotation in (int, int | None)
    below = low if low_open else low - (1 if is_int else 1e-3)
    with pytest.raises(ConfigError, match=rf"^{key}={below} is out of range: valid [\[(]{low},"):
        ExperimentConfig.from_dict({key: below})


def test_help_texts_list_every_registered_name_from_the_registries():
    """No list of names is typed into a help text: each is written from its registry, so a new
    registry entry appears in the README's table and --help by itself."""
    from semirobust_ray.attacks import ATTACKS, attack_aliases
    from semirobust_ray.config import key_help
    from semirobust_ray.data import DATASET_INFO
    from semirobust_ray.models import MODEL_INFO

    helps = {key: key_help(key) for key in ExperimentConfig.model_fields}
    assert not [key for key, text in helps.items() if "{models}" in text or "{attacks}" in text]
    for name, info in MODEL_INFO.items():
        assert f"`{name}` ({info.layers} layers" in helps["model"]
    for name, info in DATASET_INFO.items():
        assert f"`{name}` (" in helps["dataset"]
        assert (f"`{name}`" in helps["data_path"]) == (info.reads == "data_path")
        assert (name in helps["data_root"]) == (info.reads == "data_root")
    for name in ATTACKS:  # aliases too
        assert f"`{name}`" in helps["attack"]
    for name in attack_aliases():
        said_eval_only = f"`{name}`" in helps["attack"].split(";", 1)[1]
        assert said_eval_only == (not ATTACKS[name].trains), name
