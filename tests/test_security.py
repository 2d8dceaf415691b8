"""Nothing read from disk can run code: weights with ``weights_only=True``, configs with
``yaml.safe_load``, npz files with ``allow_pickle=False``.

Each test plants a payload whose unpickling or construction would create a marker file, shows
where needed that the payload is live (an unsafe loader does run it), and checks that our loader
refuses it and that the marker never appears.
"""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch

from semirobust_ray.storage import CorruptFileError, load_state, sha256_bytes


class Payload:
    """Unpickling this writes ``marker``: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "code ran"))


def _evil_checkpoint(path: Path, marker: Path) -> str:
    """A torch.save file that looks like weights but carries the payload; returns its sha256."""
    torch.save({"net.0.weight": torch.zeros(2), "extra": Payload(marker)}, path)
    return sha256_bytes(path.read_bytes())


def test_payload_is_live_under_an_unsafe_loader(tmp_path):
    marker = tmp_path / "pwned"
    _evil_checkpoint(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)  # what the project never does
    assert marker.read_text() == "code ran"


def test_malicious_checkpoint_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    digest = _evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(CorruptFileError, match="cannot be loaded safely"):
        load_state(tmp_path / "evil.pt")
    # A matching checksum (an attacker who rewrote baseline.json too) changes nothing.
    with pytest.raises(CorruptFileError, match="cannot be loaded safely"):
        load_state(tmp_path / "evil.pt", digest)
    assert not marker.exists()


def test_trial_checkpoint_with_a_payload_is_refused_on_resume(tmp_path, monkeypatch):
    """What Tune hands a restarted trial: a checkpoint directory. The trainable refuses it
    before any training (and before it would need the experiment's data or baseline)."""
    from ray import tune

    import semirobust_ray.trial as trial_module
    from semirobust_ray.config import ExperimentConfig
    from semirobust_ray.experiment import prepare

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "checkpoint_000003"
    ckpt.mkdir()
    _evil_checkpoint(ckpt / trial_module.CHECKPOINT_FILE, marker)
    monkeypatch.setattr(
        trial_module.tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(ckpt))
    )
    exp = prepare(ExperimentConfig(mi=False, split_depths=(1,)))
    with pytest.raises(CorruptFileError, match="trial_state.pt cannot be loaded safely"):
        trial_module.algorithm1_trainable(
            {"fb_layers": 1, "trial": 0}, experiment=exp, baseline=None
        )
    assert not marker.exists()


def test_baseline_with_a_payload_and_a_matching_checksum_is_refused(tmp_path):
    from semirobust_ray.baseline import load_baseline
    from semirobust_ray.ray_search import BASELINE_DIR, load_search_baseline

    marker = tmp_path / "pwned"
    for entry in (tmp_path / "cache" / "key", tmp_path / "search" / BASELINE_DIR):
        entry.mkdir(parents=True)
        sums = {
            "regular.pt": _evil_checkpoint(entry / "regular.pt", marker),
            "robust.pt": _evil_checkpoint(entry / "robust.pt", marker),
        }
        metrics = dict.fromkeys(
            (
                "acc_star",
                "acc_star_val",
                "clean_acc_robust",
                "clean_acc_regular",
                "robust_acc_regular",
                "seconds",
            ),
            0.5,
        )
        meta = {"key": "key", "metrics": metrics, "sha256": sums}
        (entry / "baseline.json").write_text(json.dumps(meta))
    with pytest.raises(CorruptFileError, match="cannot be loaded safely"):
        load_baseline(tmp_path / "cache" / "key")
    with pytest.raises(CorruptFileError, match="cannot be loaded safely"):
        load_search_baseline(str(tmp_path / "search"))
    assert not marker.exists()


@pytest.mark.parametrize("where", ["config file", "--set"])
def test_yaml_python_tags_are_refused_with_one_line(where, tmp_path, capsys):
    from semirobust_ray.cli import main

    marker = tmp_path / "pwned"
    tag = f"!!python/object/apply:pathlib.Path.write_text [!!python/object/apply:pathlib.Path [{str(marker)!r}], code ran]"
    if where == "config file":
        config = tmp_path / "evil.yaml"
        config.write_text(f"model: smallcnn\nk: {tag}\n")
        argv = ["--config", str(config)]
    else:
        argv = ["--set", f"k={tag}"]
    code = main([*argv, "--storage-path", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert "could not determine a constructor for the tag" in err
    assert not marker.exists()


def test_npz_with_pickled_objects_is_refused(tmp_path):
    from semirobust_ray.data import DatasetError, load_dataset

    marker = tmp_path / "pwned"
    x = np.empty(4, dtype=object)
    x[:] = [Payload(marker)] * 4
    path = tmp_path / "evil.npz"
    np.savez(path, x_train=x, y_train=np.zeros(4), x_test=x, y_test=np.zeros(4))
    with pytest.raises(DatasetError, match="without pickle"):
        load_dataset("npz", path=str(path))
    assert not marker.exists()
