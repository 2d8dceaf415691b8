"""Progress goes through ``logging``: the command line's -q/-v set what is shown."""

import logging

import pytest
from conftest import DIGITS_SEARCH

from semirobust_ray import logs
from semirobust_ray.cli import main


@pytest.fixture
def restore_level():
    logger = logging.getLogger(logs.LOGGER)
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers


def _run(tmp_path, *flags):
    keys = {**DIGITS_SEARCH, "split_depths": [1], "mi": False, "cache_dir": str(tmp_path)}
    sets = [f"--set={key}={value}" for key, value in keys.items()]
    return main(["run", *flags, *sets, "--out", str(tmp_path / "out")])


def test_quiet_shows_only_the_result_and_default_shows_progress(tmp_path, capsys, restore_level):
    assert _run(tmp_path) == 0
    shown = capsys.readouterr().out
    assert "[baseline] regular epoch 1/3" in shown and "[split |f_b|=1]" in shown
    assert _run(tmp_path, "--quiet") == 0
    quiet = capsys.readouterr().out
    assert "[baseline]" not in quiet and "[trial" not in quiet and "[split" not in quiet
    assert "smallest robust f*_a" in quiet and "results: " in quiet
    assert logging.getLogger(logs.LOGGER).getEffectiveLevel() == logging.WARNING
    assert _run(tmp_path, "-v") == 0
    assert logging.getLogger(logs.LOGGER).getEffectiveLevel() == logging.DEBUG
    assert "[baseline] reusing" in capsys.readouterr().out  # the cache from the first run


def test_quiet_and_verbose_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        main(["run", "-q", "-v"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_configured_application_keeps_its_logging(restore_level, monkeypatch):
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [logging.NullHandler()])
    logging.getLogger(logs.LOGGER).handlers[:] = []
    logs.ensure_visible()
    assert logging.getLogger(logs.LOGGER).handlers == []  # the application decides
    monkeypatch.setattr(root, "handlers", [])
    logs.ensure_visible()  # a bare notebook: the progress lines are shown
    assert [h.get_name() for h in logging.getLogger(logs.LOGGER).handlers] == [
        "semirobust_ray.console"
    ]
