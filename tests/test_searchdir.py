"""A search's directory through the storage layer: files, the resume rules, the console script.

The same code serves a local directory and a bucket (tests/test_s3.py runs it against a real S3
server); here the local case, the rules of ``--resume`` and the bundled search spaces.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from semirobust_ray.config import ExperimentConfig
from semirobust_ray.results import load_results
from semirobust_ray.searchdir import (
    RESUME_MAY_CHANGE,
    SearchDirError,
    holds_search,
    resume_config,
    stored_config,
)
from semirobust_ray.storage import CorruptFileError, Store


def test_store_writes_atomically_and_lists_relative_paths(tmp_path):
    store = Store(tmp_path / "x")
    store.write_json("search/search_meta.json", {"a": 1})
    store.child("baseline").write_bytes("robust.pt", b"\x00" * 10)
    assert store.files() == ["baseline/robust.pt", "search/search_meta.json"]
    assert store.files(name="robust.pt") == ["baseline/robust.pt"]
    assert store.read_json("search/search_meta.json") == {"a": 1}
    assert store.uri("baseline/robust.pt") == str(tmp_path / "x" / "baseline" / "robust.pt")
    assert not list(tmp_path.rglob("*.tmp"))  # nothing half-written left behind
    (tmp_path / "x" / "cut.json").write_text('{"a": ')
    with pytest.raises(CorruptFileError, match="cut.json is not valid JSON"):
        store.read_json("cut.json")
    with pytest.raises(FileNotFoundError, match="none.json does not exist"):
        store.read_bytes("none.json")


def test_store_expands_home_where_it_is_opened(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    Store("~/cache").write_bytes("f", b"1")
    assert (tmp_path / "cache" / "f").read_bytes() == b"1"


def test_store_refuses_an_unknown_scheme():
    with pytest.raises(ValueError, match="storage location 'nope://x' is not usable"):
        Store("nope://x")


def test_default_cache_dir_keeps_home_for_the_node_that_uses_it(monkeypatch):
    monkeypatch.delenv("SEMIROBUST_CACHE", raising=False)
    assert ExperimentConfig().cache_dir == "~/.cache/semirobust_ray/baselines"


def _search(tmp_path: Path, config: ExperimentConfig) -> Store:
    search = Store(tmp_path / "s")
    meta = {"config": config.to_dict(), "num_layers": 6, "baseline": {"acc_star": 0.5}}
    search.write_json("search/search_meta.json", meta)
    return search


def test_resume_config_keeps_the_stored_settings_and_refuses_measured_changes(tmp_path):
    stored = ExperimentConfig(eps=0.1, k=0.05, split_depths=(1, 2), max_concurrent=4)
    search = _search(tmp_path, stored)
    assert holds_search(search) and stored_config(search) == stored
    # Nothing given: the stored config, whatever today's defaults or config file say.
    assert resume_config(stored, {}) == stored
    # Where things are and what a trial may use may change.
    moved = resume_config(stored, {"max_concurrent": 1, "cache_dir": "/elsewhere"})
    assert (moved.max_concurrent, moved.cache_dir, moved.eps) == (1, "/elsewhere", 0.1)
    # Anything the finished trials were measured with may not; every such key is named.
    with pytest.raises(SearchDirError) as err:
        resume_config(stored, {"eps": 0.2, "k": 0.1, "max_concurrent": 2})
    message = str(err.value)
    assert "eps (0.1 -> 0.2)" in message and "k (0.05 -> 0.1)" in message
    assert "max_concurrent (" not in message
    assert "\n" not in message
    assert set(RESUME_MAY_CHANGE) >= {"max_concurrent", "cache_dir", "device"}
    with pytest.raises(ValueError, match="unknown config key 'epoch'"):
        resume_config(stored, {"epoch": 3})  # a typo is a config error, not a silent no-op


def test_a_search_stored_with_seeds_resumes_under_either_name(tmp_path, caplog):
    """Searches of earlier versions store T as ``seeds``; a resume reads it, and its changes may
    name T by either name (the old name warns, as anywhere else; the stored one does not)."""
    stored = ExperimentConfig(split_depths=(1, 2), trials_per_depth=3)
    old = {k: v for k, v in stored.to_dict().items() if k != "trials_per_depth"}
    search = Store(tmp_path / "s")
    meta = {"config": {**old, "seeds": 3}, "num_layers": 6, "baseline": {"acc_star": 0.5}}
    search.write_json("search/search_meta.json", meta)
    with caplog.at_level("WARNING", logger="semirobust_ray"):
        assert stored_config(search) == stored
    assert not caplog.records
    assert load_results(search.uri())["config"]["trials_per_depth"] == 3
    assert resume_config(stored, {"seeds": 3, "max_concurrent": 1}).max_concurrent == 1
    assert resume_config(stored, {"trials_per_depth": 3}) == stored
    with pytest.raises(SearchDirError, match=r"trials_per_depth \(3 -> 4\)"):
        resume_config(stored, {"seeds": 4})


def test_results_of_earlier_versions_are_still_read(tmp_path):
    """Searches written before search_meta.json moved under search/ keep their reports."""
    config = ExperimentConfig(split_depths=(1,))
    legacy = tmp_path / "old"
    legacy.mkdir()
    meta = {"config": config.to_dict(), "num_layers": 6, "baseline": {"acc_star": 0.5}}
    (legacy / "search_meta.json").write_text(json.dumps(meta))
    assert load_results(legacy)["num_layers"] == 6
    assert holds_search(Store(legacy))


def test_bundled_search_spaces_ship_in_the_package():
    import semirobust_ray
    from semirobust_ray.config import DEFAULT_CONFIG, SEARCH_SPACES, config_path

    package = Path(semirobust_ray.__file__).parent
    assert package / "search_spaces" / "quickstart.yaml" == DEFAULT_CONFIG
    assert config_path("paper_vgg16_cifar10") == SEARCH_SPACES / "paper_vgg16_cifar10.yaml"
    assert config_path(None) == DEFAULT_CONFIG
    with pytest.raises(ValueError, match="config file 'nope' does not exist; bundled search"):
        config_path("nope")


def test_one_program_with_a_subcommand_per_job(tmp_path, capsys):
    """``semirobust COMMAND``: the search (also the default), the runner, the report and the
    re-evaluation, each with its own --help and the same one-line errors as its module."""
    from semirobust_ray.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    listing = capsys.readouterr().out
    for command in ("search", "run", "report", "reevaluate"):
        assert re.search(rf"^\s+{command}\s", listing, flags=re.M), command
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: semirobust {command} ")
    # Every command refuses bad input in one line, before any compute, as its module does.
    for argv, message in [
        (["--set", "model=nope"], "error: model: unknown value 'nope'"),
        (["search", "--set", "model=nope"], "error: model: unknown value 'nope'"),
        (["run", "--set", "model=nope"], "error: model: unknown value 'nope'"),
        (["report", str(tmp_path)], f"error: {tmp_path} holds neither results.json"),
        (["reevaluate", str(tmp_path)], f"error: {tmp_path} has no search/search_meta.json"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, (argv, err)
    assert list(tmp_path.iterdir()) == []


def test_console_scripts_run_outside_a_checkout(tmp_path):
    """The installed ``semirobust search`` and ``semirobust-search``."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "semirobust").exists():
        pytest.skip("the package is not installed with its console scripts in this environment")
    # ``semirobust`` without a command is ``semirobust search`` (tested in process above).
    for argv in (["semirobust", "search"], ["semirobust-search"]):
        done = subprocess.run(
            [str(bin_dir / argv[0]), *argv[1:], "--set", "model=nope"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2, argv
        # The quickstart loaded from the package (else: "config file ... does not exist"),
        # then the bad override refused before anything ran.
        assert done.stderr.startswith("error: model: unknown value 'nope'"), (argv, done.stderr)
    assert list(tmp_path.iterdir()) == []
