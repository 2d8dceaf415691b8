"""Independent re-evaluation of a finished search's networks with the official AutoAttack.

A search reports Acc* (the adversarially trained full network) and, per trial, Acc (f*_a with the
trial's final f_b) under its ``eval_attack``. This module checks those numbers from the stored
files alone, without the search, trial or attack code that produced them:

* the weights come from the search directory (local or at a storage URI such as ``s3://``): f*_a from ``baseline/`` (SHA-256-checked) and each
  trial's final f_b from ``final_fb.pt`` in its last checkpoint, all loaded with
  ``torch.load(weights_only=True)``;
* the attack is ``pyautoattack.AutoAttack`` (standard version, L∞) called directly, not through
  :mod:`semirobust_ray.attacks`;
* the images are the search's test images (its class-stratified ``eval_samples`` subset, from
  :meth:`~semirobust_ray.experiment.Experiment.eval_split` as in the search), attacked in
  batches of ``eval_batch_size`` (default ``batch_size``) with AutoAttack seeded by the trial's seed, as the trial did, so the
  two numbers agree exactly when the trial's pipeline is right. ``seed_offset`` draws other
  random starts instead, to show how much the number moves with them;
* the networks are built in the layout the trials evaluated in
  (:func:`~semirobust_ray.training.canonical_memory_format`: channels_last on CUDA), under the
  search's ``deterministic`` setting.

Tolerance. On a CPU the numbers agree exactly (``--tolerance 0``, the default). On a GPU,
re-evaluated on the same kind of device as the trials, they agree within
:data:`GPU_TOLERANCE` (one point of accuracy; ``--tolerance 0.01``) on evaluations of 100
images or more: cuDNN's nondeterministic kernels can move an image that sits on the attack's
decision boundary. With ``deterministic: true`` a rerun on the same GPU model and software
stack is expected to agree exactly. These GPU figures are what tests/test_gpu.py checks; no
GPU was available when they were written, so they are not yet measured. Across device types
(trials on a GPU, re-evaluation on a CPU) TF32 and kernel rounding make no promise.

Entry point: ``python launch/reevaluate.py RESULTS/NAME`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from semirobust_ray.baseline import Baseline, load_baseline
from semirobust_ray.config import ConfigError, ExperimentConfig
from semirobust_ray.experiment import Experiment, prepare
from semirobust_ray.models import split
from semirobust_ray.options import add_search_dir, error, standalone
from semirobust_ray.results import (
    FINAL_FB_FILE,
    SEARCH_META_FILE,
    ReportError,
    final_fb_file,
    load_results,
    search_meta_file,
)
from semirobust_ray.searchdir import BASELINE_DIR
from semirobust_ray.storage import CorruptFileError, Store
from semirobust_ray.training import canonical_memory_format, deterministic_numerics

logger = logging.getLogger(__name__)

OUTPUT_FILE = "reevaluation.csv"
#: Largest |reported − AutoAttack| accuracy expected on a GPU (module docstring, "Tolerance").
GPU_TOLERANCE = 0.01


class ReevaluationError(RuntimeError):
    """A search directory that cannot be re-evaluated; the message is one line."""


@dataclass(frozen=True)
class FinalNetwork:
    """One network to re-evaluate: f*_a with f_b = ``fb_state`` (None: the baseline's f*_b)."""

    name: str
    fb_layers: int | None
    trial: int | None
    seed: int
    reported_acc: float
    fb_state: dict[str, torch.Tensor] | None


def final_networks(search: Store, trials: list[dict]) -> list[FinalNetwork]:
    """The final network of every finished trial (``load_results(search)["trials"]``), in
    (|f_b|, trial) order; unfinished and failed trials reported nothing to check."""
    networks = []
    for trial in trials:
        trial_dir = trial["trial_dir"]
        found = final_fb_file(search, trial_dir)
        if found is None:
            raise ReevaluationError(
                f"{trial_dir.rsplit('/', 1)[-1]} finished but has no {FINAL_FB_FILE} checkpoint "
                "(trials run before final_fb.pt was introduced did not save their final f_b)"
            )
        final = search.load_state(found)
        networks.append(
            FinalNetwork(
                name=f"|f_b|={final['fb_layers']} t={final['trial']}",
                fb_layers=int(final["fb_layers"]),
                trial=int(final["trial"]),
                seed=int(final["seed"]),
                reported_acc=float(trial["acc"]),
                fb_state=final["fb_state"],
            )
        )
    return sorted(networks, key=lambda n: (n.fb_layers, n.trial))


def autoattack_accuracy(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    seed: int,
    batch_size: int,
) -> float:
    """Robust accuracy of ``model`` under official AutoAttack (standard, L∞) on uint8 images."""
    from pyautoattack import AutoAttack

    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        num_classes = int(model(x[:1].to(device).float().div(255)).shape[1])
    targets = min(9, num_classes - 1)
    correct = 0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device).float().div(255)
        yb = y[start : start + batch_size].to(device)
        adversary = AutoAttack(
            model, norm="Linf", eps=eps, version="standard", device=device, seed=seed
        )
        adversary.apgd_targeted.n_target_classes = min(
            adversary.apgd_targeted.n_target_classes, targets
        )
        adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, targets)
        x_adv, _ = adversary.run_standard_evaluation(xb, yb, batch_size=len(xb))
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1) == yb).sum())
    return correct / len(x)


@contextlib.contextmanager
def _intra_op_threads(n: int | None) -> Iterator[None]:
    """PyTorch's intra-op thread count set to ``n`` (None: unchanged) inside the block."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def reevaluate(
    exp_dir: str | Path | Store,
    *,
    seed_offset: int = 0,
    device: str = "auto",
    resume: bool = False,
    threads: int | None = None,
    fb_layers: list[int] | None = None,
) -> pd.DataFrame:
    """Re-run AutoAttack on the baseline and every finished trial's network of a search (with
    ``fb_layers``: only the trials at those |f_b|, e.g. the answer's, beside Acc*).

    Returns one row per network: ``network``, ``fb_layers``, ``trial``, ``seed``,
    ``reported_acc``, ``autoattack_acc``, ``abs_diff``; ``reevaluation.csv`` in ``exp_dir`` (a
    directory or a storage URI) is rewritten after every network, so an interrupted run keeps what it measured. With
    ``resume``, networks already in that file (same name, seed and reported Acc) are not
    attacked again: re-evaluate a search that is still running, then the trials it adds.

    On a CPU, PyTorch uses ``threads`` intra-op threads while attacking (default: the search's
    ``cpus_per_trial``, the thread count its trials ran with): the same reduction order as the
    trial, and no oversubscription, which slows AutoAttack several-fold when two processes
    share the cores. The caller's setting is restored afterwards.
    """
    search, results, config = _open_search(exp_dir, device)
    baseline = _baseline_of(search)
    networks = _networks_to_check(search, results["trials"], config.seed, baseline, fb_layers)
    done = _measured_before(search) if resume else {}
    # The device is this command's --device, not the search's: a search whose trials ran on
    # CUDA is re-evaluated on a CPU-only machine just as well.
    exp = prepare(config, device=device)
    x, y = exp.eval_split("test")
    cpu_threads = (threads or config.cpus_per_trial) if exp.device.type == "cpu" else None
    rows = []
    with _intra_op_threads(cpu_threads), deterministic_numerics(config.deterministic):
        for net in networks:
            seed = net.seed + seed_offset
            kept = done.get((net.name, seed, net.reported_acc))
            if kept is not None:
                rows.append(kept)
                logger.info(f"[reevaluate] {net.name}: kept from {OUTPUT_FILE}")
                continue
            rows.append(_measure(exp, baseline, net, seed, x, y))
            search.write_bytes(OUTPUT_FILE, pd.DataFrame(rows).to_csv(index=False).encode())
    return pd.DataFrame(rows)


def _open_search(
    exp_dir: str | Path | Store, device: str
) -> tuple[Store, dict[str, Any], ExperimentConfig]:
    """The search at ``exp_dir``, its stored results and its config (on ``device``)."""
    search = Store.of(exp_dir)
    if search_meta_file(search) is None:
        raise ReevaluationError(
            f"{search.uri()} has no {SEARCH_META_FILE}: pass a search's directory"
        )
    try:
        results = load_results(search)
        config = ExperimentConfig.from_dict({**results["config"], "device": device})
    except (ReportError, ConfigError) as err:
        raise ReevaluationError(f"{search.uri()}: {err}") from None
    if config.eval_attack_name != "autoattack":
        logger.warning(
            f"[reevaluate] note: the search measured Acc with '{config.eval_attack_name}', "
            "so AutoAttack's numbers are expected to be lower, not equal"
        )
    return search, results, config


def _baseline_of(search: Store) -> Baseline:
    """The search's f*_a and Acc*, from its SHA-256-checked ``baseline/``."""
    try:
        return load_baseline(search.child(BASELINE_DIR))
    except CorruptFileError as err:
        raise ReevaluationError(str(err)) from None


def _networks_to_check(
    search: Store,
    trials: list[dict],
    seed: int,
    baseline: Baseline,
    fb_layers: list[int] | None,
) -> list[FinalNetwork]:
    """Acc*'s network (seeded with the search's ``seed``), then the final network of every
    finished trial at ``fb_layers`` (None: at every |f_b|) that has a test Acc to check: with
    ``test_eval: best`` only each depth's best trial was evaluated, and the others are skipped
    (the log says how many)."""
    wanted = [t for t in trials if fb_layers is None or t["fb_layers"] in fb_layers]
    evaluated = [t for t in wanted if t.get("test_evaluated", True)]
    if len(evaluated) < len(wanted):
        logger.info(
            f"[reevaluate] skipping {len(wanted) - len(evaluated)} of {len(wanted)} trial(s) "
            "without a test evaluation (test_eval: best evaluates each depth's best trial only)"
        )
    return [
        FinalNetwork("Acc* (f*_a, f*_b)", None, None, seed, baseline.acc_star, None),
        *final_networks(search, evaluated),
    ]


def _measured_before(search: Store) -> dict[tuple[str, int, float], dict]:
    """The rows already in ``reevaluation.csv``, by (network, seed, reported Acc)."""
    done: dict[tuple[str, int, float], dict] = {}
    if search.is_file(OUTPUT_FILE):
        for row in pd.read_csv(io.BytesIO(search.read_bytes(OUTPUT_FILE))).to_dict("records"):
            done[(row["network"], int(row["seed"]), float(row["reported_acc"]))] = row
    return done


def _measure(
    exp: Experiment,
    baseline: Baseline,
    net: FinalNetwork,
    seed: int,
    x: torch.Tensor,
    y: torch.Tensor,
) -> dict[str, Any]:
    """``net``'s row of ``reevaluation.csv``: its AutoAttack accuracy on ``x``, seeded with
    ``seed``, beside its reported one."""
    model = exp.build_model()
    model.load_state_dict(baseline.robust_state)
    if net.fb_state is not None:
        split(model, net.fb_layers).load_fb_state(net.fb_state)
    model.to(exp.device, memory_format=canonical_memory_format(exp.device))
    config = exp.config
    acc = autoattack_accuracy(model, x, y, eps=config.eps, seed=seed, batch_size=config.eval_batch)
    logger.info(
        f"[reevaluate] {net.name}: reported {net.reported_acc:.4f}, "
        f"AutoAttack {acc:.4f} on {len(x)} test images"
    )
    return {
        "network": net.name,
        "fb_layers": net.fb_layers,
        "trial": net.trial,
        "seed": seed,
        "reported_acc": net.reported_acc,
        "autoattack_acc": acc,
        "abs_diff": abs(acc - net.reported_acc),
    }


def _depth_list(text: str) -> list[int]:
    try:
        depths = [int(d) for d in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 4,12, got {text!r}"
        ) from None
    if any(d < 1 for d in depths):
        raise argparse.ArgumentTypeError(f"every |f_b| must be at least 1, got {text!r}")
    return depths


#: ``semirobust reevaluate``: one line, for the command list.
SUMMARY = "re-measure a finished search's Acc* and Acc with the official AutoAttack"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``DIR``, ``--seed-offset``, ``--tolerance``, ``--device``, ``--resume``, ``--threads``,
    ``--fb-layers``."""
    add_search_dir(p)
    p.add_argument(
        "--seed-offset",
        type=int,
        default=0,
        help="add this to every AutoAttack seed (0: the trials' own seeds, an exact re-run)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="largest |reported Acc - AutoAttack Acc| accepted, as a fraction (default 0, "
        f"exact, as on a CPU; on a GPU expect agreement within {GPU_TOLERANCE})",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the networks already in reevaluation.csv; attack only the others",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="PyTorch threads on a CPU (default: the search's cpus_per_trial, as its trials ran)",
    )
    p.add_argument(
        "--fb-layers",
        type=_depth_list,
        default=None,
        metavar="D1,D2",
        help="only the trials at these |f_b| (e.g. the answer's), beside Acc*; default: all",
    )


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every |reported − AutoAttack| ≤ ``--tolerance``, 1 when not, 2 on bad input."""
    if args.threads is not None and args.threads < 1:
        return error(f"--threads must be at least 1, got {args.threads}")
    try:
        table = reevaluate(
            args.dir,
            seed_offset=args.seed_offset,
            device=args.device,
            resume=args.resume,
            threads=args.threads,
            fb_layers=args.fb_layers,
        )
    except (ReevaluationError, CorruptFileError, OSError, ValueError) as err:  # one line each
        return error(err)
    print(table.to_string(index=False))
    worst = float(table["abs_diff"].max())
    print(f"largest |reported - AutoAttack| = {worst:.4f} (tolerance {args.tolerance})")
    # Reported accuracies went through float32 (a mean of 0/1 values): allow that rounding.
    return 0 if worst <= args.tolerance + 1e-6 else 1


def main(argv: list[str] | None = None) -> int:
    """``launch/reevaluate.py DIR`` (the same as ``semirobust reevaluate DIR``)."""
    description = (
        "Re-evaluate a finished search's networks (Acc* and every trial's final f*_a + f_b) "
        "with the official AutoAttack, from the stored checkpoints alone."
    )
    return standalone("launch/reevaluate.py", description, (add_arguments, run), argv)
