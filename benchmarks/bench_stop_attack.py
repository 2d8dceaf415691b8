"""Does a stronger per-epoch stop check track AutoAttack, and what does it cost? (VGG16 repro)

On ``search_spaces/repro_cifar10_subset_vgg16.yaml``'s first edition every trial passed the
PGD-7 validation check and then fell 5.6-10.4 points short of Acc* under AutoAttack
(docs/reproduction/first-edition/). This benchmark replays trial t = 0 of chosen split depths
WITHOUT stopping, for E epochs, and after every epoch measures the current network

* on the validation images the search's check uses (``Experiment.eval_split("val")``): robust
  accuracy under each check attack (PGD-7, the current check; APGD-CE at 7, 20 and 100
  iterations), each with the seconds it took;
* on the test images the search reports on (``Experiment.eval_split("test")``): robust accuracy
  under the config's ``eval_attack`` (AutoAttack), with the robust accuracy left after each of
  AutoAttack's stages (APGD-CE, APGD-T, FAB-T, Square), and clean accuracy.

The baseline (the project's cached ``get_baseline``) gives Acc* under AutoAttack and, measured
here, Acc*_val under every check attack. From the trajectories, for each check attack: the epoch
at which the search's predicate ``within_k`` (the gap in whole images) would have stopped the
trial (or, if it never does within E, the best-validation epoch the trial would report), the
AutoAttack Diff = Acc* - Acc at that epoch, and the check's seconds per epoch against a
training epoch's.

The replay is exactly trial t = 0 of ``run_trial`` (same seed, optimiser, data order and
per-epoch attack seeds): the check attacks use private generators and restore the global RNG,
so measuring after an epoch does not change the next one, and a trial that stops at epoch e
has the network measured here at e.

Resumable: every trained epoch (f_b, optimiser and RNG states) and every measurement is cached
under ``--cache-dir`` as soon as it exists, so a killed run continues where it stopped. Order:
depth by depth, training, the validation checks and AutoAttack at the epochs some check would
stop (or report) at; then AutoAttack at the remaining epochs. The JSON is rewritten after each
step, so a run cut short still holds complete verdicts for the depths it finished.

Usage:
    python benchmarks/bench_stop_attack.py [--quick] [--depths 4 12] [--epochs 4]
        [--threads 2] [--cache-dir DIR] [--json FILE]

Full mode on 2 CPU cores: the baseline about 15 min (once, cached), then per depth and epoch
about 1.5-2 min of training and 1-2 min of checks, and AutoAttack on 250 test images a few to
25 minutes per network (it is slowest on robust networks: Square spends 5,000 queries on every
point still standing).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semirobust_ray.algorithm1 import semirobust_model, trial_seed  # noqa: E402
from semirobust_ray.attacks import create_attack  # noqa: E402
from semirobust_ray.baseline import get_baseline  # noqa: E402
from semirobust_ray.config import ExperimentConfig, load_config  # noqa: E402
from semirobust_ray.experiment import Experiment, prepare  # noqa: E402
from semirobust_ray.paired import within_k  # noqa: E402
from semirobust_ray.storage import load_state, read_json, save_state, write_json  # noqa: E402
from semirobust_ray.training import (  # noqa: E402
    AttackFn,
    evaluate,
    make_optimizer,
    seed_everything,
    train_epoch,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "search_spaces" / "repro_cifar10_subset_vgg16.yaml"
JSON_OUT = ROOT / "docs" / "benchmarks" / "stop_attack_vgg16.json"
TRIAL = 0  # the replayed trial: t = 0 of each depth, as in the search
APGD_BUDGETS = (20, 100)  # besides the config's steps: a cheap middle and APGD's own default
# --quick: the embedded digits quickstart with the VGG16 run's attack setting (AutoAttack for
# Acc, PGD for the check), a smoke run of every step. Not a tiny CIFAR subset: VGG16 learns
# nothing from a few hundred images, and AutoAttack then spends Square's full 5,000 queries on
# each "robust" point of a constant classifier (12 minutes for 24 images). ε = 0.3 for the same
# reason: APGD-CE breaks nearly every digit, so little is left for Square.
QUICK_CONFIG = ROOT / "search_spaces" / "quickstart.yaml"
QUICK = {
    "eps": 0.3,
    "alpha": 0.075,
    "eval_attack": "autoattack",
    "stop_attack": "pgd",
    "eval_samples": 32,
    "baseline_epochs": 2,
    "baseline_adv_epochs": 2,
}
QUICK_DEPTHS, QUICK_EPOCHS = [2], 2

Log = Callable[[str], None]


# --------------------------------------------------------------------------- check attacks


def check_attacks(c: ExperimentConfig) -> dict[str, tuple[str, dict[str, Any]]]:
    """Label -> (registry name, options) of every validation check that is compared.

    ``pgd-<steps>`` is the search's current check (``stop_attack: pgd`` with the config's
    steps); ``apgd-ce-<n>`` is APGD-CE with n iterations, first at the same budget as PGD.
    """
    checks: dict[str, tuple[str, dict[str, Any]]] = {f"pgd-{c.steps}": ("pgd", {})}
    for n in (c.steps, *APGD_BUDGETS):
        checks[f"apgd-ce-{n}"] = ("apgd-ce", {"steps": n})
    return checks


def make_check(c: ExperimentConfig, label: str, model: torch.nn.Module, seed: int) -> AttackFn:
    name, options = check_attacks(c)[label]
    params = {"eps": c.eps, "alpha": c.alpha, "steps": c.steps, **options}
    return create_attack(name, model, seed=seed, **params)


class _StageLog(logging.Handler):
    """Collects pyautoattack's 'robust accuracy after <STAGE>: x%' lines, one list per call."""

    PATTERN = re.compile(r"robust accuracy after ([A-Z0-9-]+): ([0-9.]+)%")

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.calls: list[tuple[int, list[tuple[str, float]]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = self.PATTERN.search(record.getMessage())
        if m and self.calls:
            self.calls[-1][1].append((m.group(1).lower(), float(m.group(2)) / 100))

    def robust_after_stages(self, total: int) -> dict[str, float]:
        """Robust fraction of all ``total`` images after each stage, summed over the calls.

        A stage that did not run in a call (nothing left standing) keeps the previous count.
        """
        order: list[str] = []
        for _, stages in self.calls:
            order += [s for s, _ in stages if s not in order]
        out = {}
        for stage in order:
            robust = 0
            for n, stages in self.calls:
                seen = dict(stages)
                prev = [seen[s] for s in order[: order.index(stage) + 1] if s in seen]
                robust += round((prev[-1] if prev else 0.0) * n)
            out[stage] = robust / total
        return out


def eval_with_stages(
    exp: Experiment, model: torch.nn.Module, seed: int
) -> tuple[float, dict[str, float]]:
    """The config's eval attack on the test images, with AutoAttack's per-stage robust fractions."""
    x, y = exp.eval_split("test")
    attack = exp.eval_attack(model, seed)
    handler = _StageLog()
    logger = logging.getLogger("auto-attack")
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # keep AutoAttack's debug chatter out of the run's log

    def counted(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        handler.calls.append((len(xb), []))
        return attack(xb, yb)

    try:
        acc = evaluate(
            model, x, y, attack=counted, batch_size=exp.config.eval_batch, device=exp.device
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
    return acc, handler.robust_after_stages(len(y))


# --------------------------------------------------------------------------- the replay


class Replay:
    """Trial t = 0 of one split depth, trained epoch by epoch with every epoch cached on disk."""

    def __init__(self, exp: Experiment, baseline: Any, fb_layers: int, work: Path) -> None:
        self.exp, self.baseline, self.fb_layers = exp, baseline, fb_layers
        self.work = work / f"fb{fb_layers}"
        self.seed = trial_seed(exp.config.seed, fb_layers, TRIAL)

    def _path(self, epoch: int) -> Path:
        return self.work / f"epoch{epoch}.pt"

    def trained(self, epoch: int) -> bool:
        return self._path(epoch).exists()

    def network(self, epoch: int) -> torch.nn.Module:
        """(f*_a, f_b) after ``epoch`` epochs of f_b training (0: the semirobust start)."""
        s = semirobust_model(self.exp, self.baseline, self.fb_layers)
        if epoch > 0:
            s.load_fb_state(load_state(self._path(epoch))["fb_state"])
        s.release()  # measurements only: no freezing hooks needed, attacks freeze on their own
        return s.model

    def train(self, epoch: int, log: Log) -> dict[str, float]:
        """Train epoch ``epoch`` from the cached state after ``epoch - 1``, as run_trial does."""
        c, exp = self.exp.config, self.exp
        gen = seed_everything(self.seed)  # also the global RNG state run_trial starts from
        s = semirobust_model(exp, self.baseline, self.fb_layers)
        optimizer = make_optimizer(s.fb_parameters(), c.lr, c.momentum, c.weight_decay)
        if epoch > 1:
            prev = load_state(self._path(epoch - 1))
            s.load_fb_state(prev["fb_state"])
            optimizer.load_state_dict(prev["optimizer_state"])
            gen.set_state(prev["data_rng"])
            torch.set_rng_state(prev["torch_rng"])
        t0 = time.perf_counter()
        epoch_seed = (self.seed + 7919 * epoch) % 2**31  # run_trial's per-epoch attack seed
        stats = train_epoch(
            s.model,
            exp.data.x_train,
            exp.data.y_train,
            optimizer,
            generator=gen,
            attack=exp.train_attack(s.model, epoch_seed),
            method=c.train_method,
            bf16=c.precision == "bf16",
            batch_size=c.batch_size,
            device=exp.device,
        )
        seconds = time.perf_counter() - t0
        info = {"loss": stats.loss, "train_acc": stats.accuracy, "train_seconds": seconds}
        save_state(
            self._path(epoch),
            {
                "fb_state": s.fb_state(),
                "optimizer_state": optimizer.state_dict(),
                "data_rng": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "info": {k: torch.tensor(v, dtype=torch.float64) for k, v in info.items()},
            },
        )
        s.release()
        log(f"[|f_b|={self.fb_layers}] epoch {epoch}: loss {stats.loss:.4f}, {seconds:.1f} s")
        return info

    def info(self, epoch: int) -> dict[str, float]:
        """Loss, accuracy and seconds of a trained epoch, from its checkpoint."""
        return {k: float(v) for k, v in load_state(self._path(epoch))["info"].items()}

    def epoch_seed(self, epoch: int) -> int:
        """The seed run_trial gives epoch ``epoch``'s stop check (0: the trial seed)."""
        return (self.seed + 7919 * epoch) % 2**31 if epoch > 0 else self.seed


# --------------------------------------------------------------------------- bookkeeping


class Results:
    """The JSON record, written atomically after every measurement so a rerun can resume."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = read_json(path) if path.exists() else {}

    def get(self, *keys: str) -> Any:
        node: Any = self.data
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                return None
            node = node[k]
        return node

    def put(self, value: Any, *keys: str) -> None:
        node = self.data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
        write_json(self.path, self.data)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def summarise(res: dict[str, Any], checks: list[str], k: float, epochs: int) -> dict[str, Any]:
    """Per depth and check: stop epoch, gap there, AutoAttack Diff there, cost per epoch.

    A check that never comes within k in E epochs does not stop the trial; run_trial then
    reports its best-validation epoch (the first of equal maxima), so that epoch is used.
    """
    base = res["baseline"]
    acc_star = base["acc_star"]
    n_val, n_test = res["setup"]["val_images"], res["setup"]["test_images"]

    def within(target: float, acc: float, n: int) -> bool:
        # The search's one predicate, on whole images (accuracies are counts over n images).
        return within_k(round(target * n) - round(acc * n), n, k)

    out: dict[str, Any] = {}
    for depth, d in res["depths"].items():
        ep = {int(e): v for e, v in d["epochs"].items()}
        trained = [e for e in range(1, epochs + 1) if e in ep and "train_seconds" in ep[e]]
        train_s = [ep[e]["train_seconds"] for e in trained]
        rows: dict[str, Any] = {}
        for label in checks:
            target = base["acc_star_val"][label]["acc"]
            vals = {e: ep[e]["val"][label]["acc"] for e in trained if label in ep[e].get("val", {})}
            if len(vals) < len(trained) or not vals:
                continue
            stop = next((e for e in sorted(vals) if within(target, vals[e], n_val)), None)
            report = stop if stop is not None else max(sorted(vals), key=lambda e: vals[e])
            aa = ep[report].get("test", {}).get("acc")
            check_s = [ep[e]["val"][label]["seconds"] for e in sorted(vals)]
            rows[label] = {
                "acc_star_val": target,
                "val_by_epoch": [vals[e] for e in sorted(vals)],
                "stop_epoch": stop,
                "report_epoch": report,
                "gap_at_report": target - vals[report],
                "acc_at_report": aa,
                "diff_at_report": None if aa is None else acc_star - aa,
                "check_seconds_per_epoch": sum(check_s) / len(check_s),
                "train_seconds_per_epoch": sum(train_s) / len(train_s),
                "check_over_train": (sum(check_s) / len(check_s)) / (sum(train_s) / len(train_s)),
            }
        aa_by_epoch = {e: ep[e]["test"]["acc"] for e in sorted(ep) if "test" in ep[e]}
        rows["autoattack_test_by_epoch"] = {str(e): a for e, a in aa_by_epoch.items()}
        # What a check with the reported attack on the test images (the paper's protocol) would
        # do: the first epoch within k of Acc*, once every epoch has been measured.
        if all(e in aa_by_epoch for e in trained) and trained:
            rows["autoattack_test_stop_epoch"] = next(
                (e for e in trained if within(acc_star, aa_by_epoch[e], n_test)), None
            )
        out[depth] = rows
    return out


# --------------------------------------------------------------------------- driver


def run(
    config: ExperimentConfig,
    *,
    depths: list[int],
    epochs: int,
    cache_dir: str,
    json_path: Path,
    log: Log = print,
) -> dict[str, Any]:
    """Baseline, replays and every measurement; returns (and keeps writing) the JSON record."""
    c = config.replace(split_depths=depths, epochs=epochs, cache_dir=cache_dir)
    exp = prepare(c)
    baseline = get_baseline(exp, cache_dir=cache_dir)
    work = Path(cache_dir).expanduser() / "bench_stop_attack" / baseline.key
    res = Results(work / "results.json")
    checks = list(check_attacks(c))
    kw = {"batch_size": c.eval_batch, "device": exp.device}
    x_val, y_val = exp.eval_split("val")
    res.put(
        {
            "config": {k: v for k, v in c.to_dict().items() if k != "cache_dir"},
            "baseline_key": baseline.key,
            "trial": TRIAL,
            "checks": {lbl: [n, o] for lbl, (n, o) in check_attacks(c).items()},
            "val_images": len(y_val),
            "test_images": len(exp.eval_split("test")[1]),
            "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        },
        "setup",
    )
    m = baseline.metrics
    res.put(m.acc_star, "baseline", "acc_star")
    res.put(m.acc_star_val, "baseline", "acc_star_val_stop_attack")
    res.put(m.clean_acc_robust, "baseline", "clean_acc_robust")
    res.put(m.seconds, "baseline", "seconds")
    robust = exp.build_model()
    robust.load_state_dict(baseline.robust_state)
    for label in checks:
        if res.get("baseline", "acc_star_val", label) is None:
            # c.seed: the seed the baseline measures Acc*_val with (baseline.train_baseline).
            attack = make_check(c, label, robust, c.seed)
            acc, sec = timed(lambda a=attack: evaluate(robust, x_val, y_val, attack=a, **kw))
            res.put({"acc": acc, "seconds": sec}, "baseline", "acc_star_val", label)
            log(f"[baseline] Acc*_val under {label} = {acc:.4f} ({sec:.1f} s)")

    replays = {d: Replay(exp, baseline, d, work) for d in depths}

    def train_and_check(d: int, rp: Replay) -> None:
        """Training and every validation check, each epoch (epoch 0 = Acc_sr's network)."""
        for e in range(0, epochs + 1):
            node = ("depths", str(d), "epochs", str(e))
            if e > 0 and not rp.trained(e):
                for key, value in rp.train(e, log).items():
                    res.put(value, *node, key)
            elif e > 0 and res.get(*node, "train_seconds") is None:
                for key, value in rp.info(e).items():  # results.json lost, checkpoint kept
                    res.put(value, *node, key)
            model = None
            for label in checks:
                if res.get(*node, "val", label) is None:
                    model = model or rp.network(e)
                    attack = make_check(c, label, model, rp.epoch_seed(e))
                    acc, sec = timed(
                        lambda a=attack, mdl=model: evaluate(mdl, x_val, y_val, attack=a, **kw)
                    )
                    res.put({"acc": acc, "seconds": sec}, *node, "val", label)
                    gap = res.get("baseline", "acc_star_val", label, "acc") - acc
                    msg = f"val {label}: {acc:.4f} (gap {gap:+.4f}, {sec:.1f} s)"
                    log(f"[|f_b|={d}] epoch {e} {msg}")

    def test_attack(d: int, rp: Replay, e: int) -> None:
        """The eval attack (AutoAttack) on the test images after epoch ``e``, once."""
        node = ("depths", str(d), "epochs", str(e))
        if res.get(*node, "test") is not None:
            return
        model = rp.network(e)
        (acc, stages), sec = timed(lambda: eval_with_stages(exp, model, rp.seed))
        clean = evaluate(model, exp.data.x_test, exp.data.y_test, **kw)
        res.put(
            {"acc": acc, "seconds": sec, "after_stage": stages, "clean_acc": clean}, *node, "test"
        )
        log(f"[|f_b|={d}] epoch {e} test {c.eval_attack_name}: {acc:.4f} ({sec:.1f} s)")

    def flush() -> None:
        res.put(summarise(res.data, checks, c.k, epochs), "summary")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(json_path, res.data)

    # Depth by depth, first what the comparison needs: training, the checks, and AutoAttack at
    # the epochs some check would stop (or report) at; then the rest of the AutoAttack
    # trajectories. A run cut short thus still has complete verdicts for its first depths.
    for d, rp in replays.items():
        train_and_check(d, rp)
        row = summarise(res.data, checks, c.k, epochs)[str(d)]
        for e in sorted({row[label]["report_epoch"] for label in checks}):
            test_attack(d, rp, e)
        flush()
    for d, rp in replays.items():
        for e in range(epochs, -1, -1):
            test_attack(d, rp, e)
            flush()
    # Last, Acc*'s network again with AutoAttack's seed, for the robust fraction after each
    # stage (the baseline records only the total; this run must reproduce it exactly).
    if res.get("baseline", "test") is None:
        (acc, stages), sec = timed(lambda: eval_with_stages(exp, robust, c.seed))
        res.put({"acc": acc, "seconds": sec, "after_stage": stages}, "baseline", "test")
        log(f"[baseline] test {c.eval_attack_name}: {acc:.4f} (Acc* {m.acc_star:.4f}, {sec:.1f} s)")
        flush()
    return res.data


def print_tables(data: dict[str, Any]) -> None:
    """The BENCHMARKS.md table: one row per depth and check attack."""
    acc_star = data["baseline"]["acc_star"]
    print(f"\nAcc* (AutoAttack, test) = {acc_star:.3f}")
    print(
        "| |f_b| | check | Acc*_val | stop epoch | gap at stop | AA Acc | Diff | check s |", end=""
    )
    print(" train s |")
    for depth, rows in data["summary"].items():
        for label, r in rows.items():
            if label.startswith("autoattack_test"):
                continue
            stop = (
                r["stop_epoch"] if r["stop_epoch"] is not None else f"- (best {r['report_epoch']})"
            )
            aa = "n/a" if r["acc_at_report"] is None else f"{r['acc_at_report']:.3f}"
            diff = "n/a" if r["diff_at_report"] is None else f"{r['diff_at_report']:+.3f}"
            print(
                f"| {depth} | {label} | {r['acc_star_val']:.3f} | {stop} | "
                f"{r['gap_at_report']:+.3f} | {aa} | {diff} | "
                f"{r['check_seconds_per_epoch']:.1f} | {r['train_seconds_per_epoch']:.1f} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="smoke run on the digits quickstart (a minute or two)"
    )
    ap.add_argument(
        "--config", type=Path, default=CONFIG, help="search space (default: VGG16 repro)"
    )
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 12], help="|f_b| values")
    ap.add_argument("--epochs", type=int, default=None, help="E (default: the config's)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument(
        "--cache-dir",
        help="baselines and per-epoch results (default: a temporary one with --quick, "
        "the config's cache_dir otherwise); reuse it to resume",
    )
    ap.add_argument(
        "--json", type=Path, help=f"result file (default: {JSON_OUT.relative_to(ROOT)})"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        config = load_config(QUICK_CONFIG).replace(**QUICK)
        depths, epochs = QUICK_DEPTHS, QUICK_EPOCHS
        cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="bench_stop_attack_")
        json_path = args.json or Path(cache_dir) / "stop_attack_quick.json"
    else:
        config = load_config(args.config)
        depths, epochs = args.depths, args.epochs or config.epochs
        cache_dir = args.cache_dir or config.cache_dir
        json_path = args.json or JSON_OUT
    data = run(config, depths=depths, epochs=epochs, cache_dir=cache_dir, json_path=json_path)
    print_tables(data)
    print(f"\nwrote {json_path}")


if __name__ == "__main__":
    main()
