"""Bad input through the launcher: one ``error:`` line on stderr, exit 2, no traceback, nothing
computed and nothing already on disk changed.

Every case's message is listed in docs/troubleshooting.md, word for word: the test fails when
the two disagree (the lists of valid models, datasets, attacks and keys there are the
registries' and the schema's). Rewrite those rows with ``python tests/test_cli_errors.py
--write``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from semirobust_ray.cli import main

ROOT = Path(__file__).resolve().parents[1]
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"
# Ray is imported above, before any test captures stderr: its log handler keeps the stderr of
# import time, so the lines Ray logs when --address local starts a local instance (Ray 2.60:
# "Token authentication is enabled ...", "Started a local Ray instance.") stay out of the
# captured output whichever test imports Ray first, as they do when other test modules have.

# A config that would be valid and fast: each case breaks one thing.
BASE = [
    "--set",
    "mi=false",
    "--set",
    "epochs=1",
    "--set",
    "trials_per_depth=1",
    "--address",
    "local",
]


def _npz(tmp: Path, **change) -> str:
    """A small valid npz (uint8 N×H×W×C images, labels 0..1) with ``change`` applied."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8),
        "y_train": np.arange(20) % 2,
        "x_test": rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8),
        "y_test": np.arange(10) % 2,
        "classes": np.array(["cat", "dog"]),
    }
    for key, value in change.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    path = tmp / "data.npz"
    np.savez(path, **arrays)
    return str(path)


def _write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def _npz_args(tmp: Path, **change) -> list[str]:
    return ["--set", "dataset=npz", "--set", f"data_path={_npz(tmp, **change)}"]


def _float_images(value: float) -> np.ndarray:
    x = np.full((20, 8, 8, 3), 0.5, dtype=np.float32)
    x[0, 0, 0, 0] = value
    return x


# (case, how to provoke it, a fragment the message must hold). The arguments come from a
# function of a scratch directory; the storage path is added by the test.
CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    (
        "unknown model",
        lambda t: ["--set", "model=resnet"],
        "model: unknown value 'resnet' (did you mean 'resnet50'?); valid: alexnet, resnet50",
    ),
    (
        "unknown dataset",
        lambda t: ["--set", "dataset=cifar"],
        "dataset: unknown value 'cifar' (did you mean",
    ),
    (
        "unknown attack",
        lambda t: ["--set", "attack=pgdd"],
        "attack: unknown value 'pgdd' (did you mean 'pgd'?)",
    ),
    (
        "unknown eval attack",
        lambda t: ["--set", "eval_attack=autoatack"],
        "eval_attack: unknown value 'autoatack' (did you mean 'autoattack'?)",
    ),
    (
        "unknown torchattacks attack",
        lambda t: ["--set", "attack=torchattacks:PDG"],
        "torchattacks has no attack class 'PDG' (did you mean 'torchattacks:PGD'?)",
    ),
    (
        "your attack's module cannot be imported",
        lambda t: ["--set", "eval_attack=no_such_package.attacks:Jitter"],
        "eval_attack: attack 'no_such_package.attacks:Jitter': cannot import module",
    ),
    (
        "your attack class is not an Attack (`myattacks` is `tests/myattacks`)",
        lambda t: ["--set", "attack=myattacks:NotAnAttack"],
        "'NotAnAttack' (a class) is not a subclass of semirobust_ray.attacks.Attack; valid forms",
    ),
    (
        "an option the attack does not take",
        lambda t: ["--set", "attack_kwargs.pgd={kappa: 1}"],
        "attack 'pgd' does not take option(s) kappa; it takes: random_start",
    ),
    (
        "options for an attack the config does not use",
        lambda t: ["--set", "attack_kwargs.cw={c: 2}"],
        "attack_kwargs: 'cw' is not an attack of this config (attack: pgd, eval_attack: pgd",
    ),
    (
        "unknown search algorithm",
        lambda t: ["--set", "search=bisect"],
        "search: unknown value 'bisect' (did you mean 'bisection'?); valid: adaptive, bisection, grid, optuna",
    ),
    (
        "split depth 0",
        lambda t: ["--set", "split_depths=[0]"],
        "split_depths entry=0 is out of range",
    ),
    (
        "negative split depth",
        lambda t: ["--set", "split_depths=[2,-1]"],
        "split_depths entry=-1 is out of range",
    ),
    (
        "split depth n+1 (smallcnn has n = 6)",
        lambda t: ["--set", "split_depths=[2,7]"],
        "split_depths [7] out of range for smallcnn: it has 6 trainable layers, valid |f_b| is 1..6",
    ),
    ("E = 0", lambda t: ["--set", "epochs=0"], "epochs=0 is out of range: valid [1, inf]"),
    ("E < 0", lambda t: ["--set", "epochs=-3"], "epochs=-3 is out of range"),
    ("k > 1", lambda t: ["--set", "k=1.5"], "k=1.5 is out of range: valid [0, 1)"),
    ("k < 0", lambda t: ["--set", "k=-0.1"], "k=-0.1 is out of range"),
    ("eps negative", lambda t: ["--set", "eps=-0.1"], "eps=-0.1 is out of range: valid (0, 1]"),
    ("eps > 1", lambda t: ["--set", "eps=8"], "eps=8 is out of range: valid (0, 1]"),
    ("step (alpha) negative", lambda t: ["--set", "alpha=-0.01"], "alpha=-0.01 is out of range"),
    ("steps 0", lambda t: ["--set", "steps=0"], "steps=0 is out of range"),
    (
        "config file missing",
        lambda t: ["--config", str(t / "nope.yaml")],
        "nope.yaml' does not exist",
    ),
    (
        "config file not YAML",
        lambda t: ["--config", _write(t, "bad.yaml", "model: [smallcnn\nk: 0.1\n")],
        "bad.yaml' is not valid YAML at line",
    ),
    (
        "config file not a mapping",
        lambda t: ["--config", _write(t, "list.yaml", "- model\n- k\n")],
        "list.yaml' must hold a mapping of key: value",
    ),
    (
        "unknown config keys",
        lambda t: ["--config", _write(t, "keys.yaml", "modle: smallcnn\nepoch: 3\n")],
        "unknown config keys 'epoch' (did you mean 'epochs'?), 'modle' (did you mean 'model'?)",
    ),
    (
        "--set without =",
        lambda t: ["--set", "epochs"],
        "--set 'epochs' is not of the form key=value",
    ),
    (
        "--set value not YAML",
        lambda t: ["--set", "split_depths=[1,2"],
        "--set split_depths=[1,2: value is not valid YAML",
    ),
    (
        "--set wrong type",
        lambda t: ["--set", "epochs=three"],
        "epochs: expected an integer, got 'three'",
    ),
    (
        "npz missing arrays",
        lambda t: _npz_args(t, y_test=None, x_test=None),
        "data.npz is missing arrays x_test, y_test",
    ),
    (
        "npz wrong image shape",
        lambda t: _npz_args(t, x_train=np.zeros((20, 8), dtype=np.uint8)),
        "x_train must have 3 or 4 dimensions",
    ),
    (
        "npz labels / images count mismatch",
        lambda t: _npz_args(t, y_train=np.zeros(7, dtype=np.int64)),
        "y_train has 7 labels but x_train has 20 images",
    ),
    (
        "npz non-finite pixels",
        lambda t: _npz_args(t, x_train=_float_images(np.nan)),
        "x_train contains non-finite pixel values (NaN or inf)",
    ),
    (
        "npz float pixels outside [0, 1]",
        lambda t: _npz_args(t, x_train=_float_images(3.0)),
        "x_train float pixels must be in [0, 1], got range [0.5, 3]",
    ),
    (
        "npz integer pixels outside 0..255",
        lambda t: _npz_args(t, x_test=np.full((10, 8, 8, 3), 300, dtype=np.int32)),
        "x_test integer pixels must be in 0..255, got range [300, 300]",
    ),
    (
        "npz labels outside 0..classes-1",
        lambda t: _npz_args(t, y_test=np.arange(10) % 3),
        "y_test has labels outside 0..1 (min 0, max 2)",
    ),
    (
        "npz negative labels",
        lambda t: _npz_args(t, y_train=np.arange(20) % 2 - 1),
        "y_train has negative labels",
    ),
    (
        "npz file missing",
        lambda t: ["--set", "dataset=npz", "--set", f"data_path={t / 'none.npz'}"],
        "npz file not found",
    ),
    (
        "npz holding pickled objects",
        lambda t: _npz_args(t, x_train=np.array([{"a": 1}] * 20, dtype=object)),
        "without pickle",
    ),
    (
        "device cuda without a GPU per trial",
        lambda t: ["--set", "device=cuda"],
        "device: cuda but gpus_per_trial is 0, so Ray would reserve no GPU for the trials; pass "
        "--gpus-per-trial 1",
    ),
    (
        "dataset absent offline (cifar10, download false)",
        lambda t: ["--set", "dataset=cifar10", "--set", f"data_root={t / 'empty'}"],
        "pass download: true (needs internet) or place",
    ),
]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, fragment: str) -> str:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert fragment in lines[0], lines[0]
    return lines[0]


def table_row(case: str, args: list[str], message: str, tmp: Path) -> str:
    """The row of docs/troubleshooting.md's table for ``case`` (TMP: the scratch directory)."""
    message = message.strip().replace(str(tmp), "TMP").replace("|", "\\|")
    how = " ".join(a.replace(str(tmp), "TMP") for a in args).replace("|", "\\|")
    return f"| {case} | `{how}` | `{message}` |"


@pytest.mark.parametrize(("case", "args", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_error_before_any_compute(case, args, fragment, tmp_path, capsys):
    storage = tmp_path / "results"
    (storage / "earlier").mkdir(parents=True)
    (storage / "earlier" / "table1.md").write_text("an earlier search's report\n")
    argv = [*BASE, *args(tmp_path), "--storage-path", str(storage)]
    before = _files(tmp_path)
    code, out, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, fragment)
    assert out == ""
    assert _files(tmp_path) == before  # nothing written, nothing changed
    assert not list(storage.glob("**/search_meta.json"))
    # The troubleshooting guide quotes this very message (its lists of valid names included);
    # on failure: python tests/test_cli_errors.py --write
    row = table_row(case, args(tmp_path), err, tmp_path)
    assert row in TROUBLESHOOTING.read_text().splitlines(), row


def test_split_depth_n_is_valid_fa_is_only_the_input_normalisation():
    from semirobust_ray.config import ExperimentConfig
    from semirobust_ray.experiment import prepare

    exp = prepare(ExperimentConfig(split_depths=(6,)))
    assert exp.num_layers == 6 and exp.split_depths == [6]


def test_storage_path_that_is_not_writable(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    code, _, err = run_cli([*BASE, "--storage-path", str(blocker / "results")], capsys)
    assert_one_line_error(code, err, f"storage path '{blocker / 'results'}' is not writable")
    assert blocker.read_text() == "not a directory\n"


def test_resume_where_there_is_no_search(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine\n")
    argv = [*BASE, "--storage-path", str(tmp_path), "--name", "x", "--resume"]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, f"--resume: '{tmp_path / 'x'}' holds no search to resume")
    assert _files(tmp_path) == {"x/notes.txt": b"mine\n"}


def test_resume_with_damaged_search_meta(tmp_path, capsys):
    """A search directory whose search_meta.json was cut short: refused, not a traceback."""
    import shutil

    exp = tmp_path / "x"
    exp.mkdir()
    # What Tune needs to call the directory restorable, plus a truncated search_meta.json.
    (exp / "tuner.pkl").write_bytes(b"")
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    (exp / "search").mkdir()
    (exp / "search" / "search_meta.json").write_text('{"config": {"model": "smal')
    argv = [*BASE, "--storage-path", str(tmp_path), "--name", "x", "--resume"]
    before = _files(tmp_path)
    code, _, err = run_cli(argv, capsys)
    line = assert_one_line_error(code, err, "search/search_meta.json is not valid JSON")
    assert line.endswith("the search cannot be resumed")
    assert _files(tmp_path) == before
    shutil.rmtree(exp)


def test_gpu_requests_the_cluster_cannot_meet(tmp_path, capsys, monkeypatch):
    """Said at once instead of waiting forever for a GPU no node has. With device: cuda on
    this machine (no CUDA, like a CPU-only head node) the driver gets past prepare(), which
    no longer resolves the device itself, and stops at the same check."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    base = [*BASE, "--storage-path", str(tmp_path)]
    try:
        code, _, err = run_cli([*base, "--gpus-per-trial", "4"], capsys)
        assert_one_line_error(
            code, err, "gpus_per_trial=4 but the largest node has 0 GPUs (cluster total 0); "
        )
        if not torch.cuda.is_available():  # the same local Ray: started by the first run
            code, _, err = run_cli([*base, "--set", "device=cuda", "--gpus-per-trial", "1"], capsys)
            assert_one_line_error(
                code,
                err,
                "device: cuda with gpus_per_trial=1, but no node of this Ray cluster has a GPU",
            )
    finally:
        ray.shutdown()
    assert not list(tmp_path.glob("**/search_meta.json"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_runner_device_cuda_without_cuda_is_one_line(tmp_path, capsys):
    """Without Ray the device is resolved in this process, at once: one line, not a traceback."""
    from semirobust_ray.runner import main as runner_main

    out = tmp_path / "out"
    code = runner_main(["--set", "device=cuda", "--set", "mi=false", "--out", str(out)])
    captured = capsys.readouterr()
    assert_one_line_error(code, captured.err, "device: cuda but torch sees no CUDA GPU here")
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--set", "model=resnet"], "error: model: unknown value 'resnet'"),
        (["--set", "split_depths=[9]"], "error: split_depths [9] out of range for smallcnn"),
    ],
    ids=["unknown model", "split depth beyond the model"],
)
def test_launcher_process_exit_code_and_no_traceback(args, fragment, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "search.py"), *BASE, *args,
         "--storage-path", str(tmp_path / "results")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(fragment) and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def _generated_rows() -> dict[str, str]:
    import contextlib
    import io
    import tempfile

    rows = {}
    for case, args, _ in CASES:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            argv = args(tmp)
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                main([*BASE, *argv, "--storage-path", str(tmp / "results")])
            rows[case] = table_row(case, argv, err.getvalue(), tmp)
    return rows


if __name__ == "__main__":  # the table for docs/troubleshooting.md; --write puts it there
    rows = _generated_rows()
    if sys.argv[1:] != ["--write"]:
        print("| bad input | how | message (stderr, exit code 2) |")
        print("|---|---|---|")
        print("\n".join(rows.values()))
        sys.exit(0)
    # Each case's row replaces the row of the same case; a new case goes after the row of the
    # case before it in CASES.
    lines = TROUBLESHOOTING.read_text().splitlines()
    previous = None
    for case, row in rows.items():
        at = [i for i, line in enumerate(lines) if line.startswith(f"| {case} | ")]
        if at:
            lines[at[0]] = row
        else:
            after = [i for i, line in enumerate(lines) if line.startswith(f"| {previous} | ")]
            lines.insert(after[0] + 1 if after else len(lines), row)
        previous = case
    TROUBLESHOOTING.write_text("\n".join(lines) + "\n")
