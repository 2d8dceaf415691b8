"""A search on a 2-node Ray cluster on one machine (``ray.cluster_utils.Cluster``).

The head has no GPU; one worker node advertises a fake GPU (``num_gpus=1``: a scheduling
resource only, torch.cuda stays unavailable, so trials placed there still compute on the CPU).
This module starts its own cluster and shuts it down at the end.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import ray
import torch
from conftest import DIGITS_SEARCH
from ray.cluster_utils import Cluster

from semirobust_ray.config import ExperimentConfig
from semirobust_ray.ray_search import run_search

CLUSTER_SEARCH = {
    **DIGITS_SEARCH,
    "k": 0.0,
    "mi": False,  # one CPU per trial, so four trials run at once across the two nodes
    "max_failures": 2,
    "search": "grid",
}


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    gpu_node = c.add_node(num_cpus=2, num_gpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c, c.head_node.node_id, gpu_node
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cluster-cache")


def _config(cache_dir: Path, **changes) -> ExperimentConfig:
    return ExperimentConfig.from_dict({**CLUSTER_SEARCH, "cache_dir": str(cache_dir), **changes})


def _final_reports(exp_dir: str) -> list[dict]:
    out = []
    for result_file in sorted(Path(exp_dir).glob("*/result.json")):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line]
        out.append(rows[-1])
    return out


def test_trials_spread_over_both_nodes(cluster, cache_dir, tmp_path):
    _, head_id, gpu_node = cluster
    outcome = run_search(
        _config(cache_dir, split_depths=[1, 2, 3, 6]),
        storage_path=str(tmp_path),
        name="spread",
        verbose=0,
    )
    finals = _final_reports(outcome.experiment_dir)
    assert sorted(f["fb_layers"] for f in finals) == [1, 2, 3, 6]
    assert {f["node_id"] for f in finals} == {head_id, gpu_node.node_id}
    assert outcome.results["unfinished"] == []


def _nodes_that_ran(function_name: str) -> set[str]:
    """Node ids of every finished-or-running task of this name, from the GCS task events.

    Ray's public state API (``ray.util.state``) needs the dashboard, which the test extra does
    not install; the GCS holds the same task events.
    """
    from ray._private.state import state

    time.sleep(2)  # task events reach the GCS on a ~1 s flush interval
    return {
        e.state_updates.node_id.hex()
        for e in state._get_all_task_events()
        if e.task_info.func_or_class_name == function_name and e.state_updates.node_id
    }


def mi_as_ray_tasks():
    """The trainable with every trial's MI sent to Ray tasks (``RAY_MIN_WORK = 0`` in the
    trial's process: this CI-sized MI would otherwise run in-process). A closure, so Ray ships
    it by value to the other node's workers."""
    from semirobust_ray.trial import algorithm1_trainable

    def trainable(config, **shared):
        import semirobust_ray.mi as mi_module

        mi_module.RAY_MIN_WORK = 0
        return algorithm1_trainable(config, **shared)

    return trainable


def test_mi_tasks_run_on_both_nodes_beside_their_trials(cluster, cache_dir, tmp_path):
    _, head_id, gpu_node = cluster
    # One CPU per trial plus one reserved for its MI tasks fills a 2-CPU node, so the two
    # trials start at once on different nodes, each with its MI tasks in its placement group
    # (test_eval: all, so each trial measures its MI itself).
    outcome = run_search(
        _config(
            cache_dir, split_depths=[2, 6], mi=True, mi_cpus=1, eval_samples=200, test_eval="all"
        ),
        storage_path=str(tmp_path),
        name="mi",
        verbose=0,
        trainable_fn=mi_as_ray_tasks(),
    )
    finals = _final_reports(outcome.experiment_dir)
    assert {f["node_id"] for f in finals} == {head_id, gpu_node.node_id}
    assert all(any(key.startswith("I_j/") for key in f) for f in finals)
    assert _nodes_that_ran("_estimate_chunk") == {head_id, gpu_node.node_id}


def test_gpu_trials_go_only_to_the_gpu_node_and_compute_on_cpu(cluster, cache_dir, tmp_path):
    _, _, gpu_node = cluster
    outcome = run_search(
        _config(cache_dir, split_depths=[1, 6], gpus_per_trial=1),
        storage_path=str(tmp_path),
        name="gpu",
        verbose=0,
    )
    finals = _final_reports(outcome.experiment_dir)
    assert [f["node_id"] for f in finals] == [gpu_node.node_id] * 2
    # torch.cuda is unavailable there: device "auto" fell back to the CPU and the trials ran.
    assert all(0.0 <= t["acc"] <= 1.0 for t in outcome.results["trials"])


def test_more_gpus_per_trial_than_any_node_is_refused_not_waited_for(cluster, cache_dir, tmp_path):
    from semirobust_ray.ray_search import SearchError

    with pytest.raises(
        SearchError, match=r"gpus_per_trial=2 but the largest node has 1 GPUs \(cluster total 1\)"
    ):
        run_search(
            _config(cache_dir, split_depths=[1], gpus_per_trial=2),
            storage_path=str(tmp_path),
            name="toomany",
            verbose=0,
        )


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="needs a machine without CUDA (the fake GPU node lacks it)"
)
def test_device_cuda_is_resolved_on_the_gpu_node_not_the_cpu_only_driver(
    cluster, cache_dir, tmp_path
):
    """This process has no CUDA, like a cluster.yaml head node. A device: cuda search launched
    from it gets past prepare() and the GPU check (a node has a GPU), and its baseline task
    resolves the device on the GPU node it was scheduled on. That node's GPU is fake, so it is
    there, on that node, that CUDA is missing: the one-line error names it."""
    from semirobust_ray.ray_search import SearchError

    _, _, gpu_node = cluster
    with pytest.raises(SearchError) as raised:
        run_search(
            _config(cache_dir, split_depths=[1], device="cuda", gpus_per_trial=1),
            storage_path=str(tmp_path),
            name="cuda",
            verbose=0,
        )
    message = str(raised.value)
    assert message.startswith(f"the baseline task failed on node {gpu_node.node_id}: ")
    assert "device: cuda but torch sees no CUDA GPU here" in message
    assert "\n" not in message


def make_stalling_trainable(node_id: str, marker: Path):
    """The real trainable, except that on node ``node_id`` its first training epoch writes
    ``marker`` and then hangs: the trial is certainly in flight there when the node goes,
    however fast the machine. A closure, so Ray ships it by value to its workers."""

    def stalling_trainable(config, **shared):
        import semirobust_ray.algorithm1 as a1
        from semirobust_ray.trial import algorithm1_trainable

        if ray.get_runtime_context().get_node_id() == node_id:

            def train_epoch(*args, **kwargs):
                marker.write_text(str(config["fb_layers"]))
                time.sleep(600)  # ended by the node's removal

            a1.train_epoch = train_epoch
        return algorithm1_trainable(config, **shared)

    return stalling_trainable


def test_worker_node_removed_mid_search_reschedules_its_trials(cluster, cache_dir, tmp_path):
    c, _, gpu_node = cluster
    # A second (fake) GPU node and trials that each need a GPU: one trial runs on each GPU node.
    extra = c.add_node(num_cpus=2, num_gpus=1)
    c.wait_for_nodes()
    marker = tmp_path / "stalled"
    removed: list[bool] = []

    def remove_when_its_trial_runs() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not marker.exists():
            time.sleep(0.1)
        c.remove_node(extra, allow_graceful=False)
        removed.append(True)

    killer = threading.Thread(target=remove_when_its_trial_runs, daemon=True)
    killer.start()
    outcome = run_search(
        _config(cache_dir, split_depths=[1, 2, 3, 6], gpus_per_trial=1),
        storage_path=str(tmp_path),
        name="removal",
        verbose=0,
        trainable_fn=make_stalling_trainable(extra.node_id, marker),
    )
    killer.join(timeout=5)
    assert removed and marker.exists(), "no trial ran on the node to remove"
    finals = _final_reports(outcome.experiment_dir)
    assert sorted(f["fb_layers"] for f in finals) == [1, 2, 3, 6]
    assert outcome.results["unfinished"] == []
    # The trial in flight on the removed node failed (Tune wrote its error.txt) and ran again,
    # to the end, on the node that is left.
    failed = [p.parent for p in Path(outcome.experiment_dir).glob("*/error.txt")]
    assert [int(d.name[2:4]) for d in failed] == [int(marker.read_text())]  # fb04-t0-<id>
    rows = [json.loads(line) for line in (failed[0] / "result.json").read_text().splitlines()]
    assert rows[-1]["done"] and rows[-1]["node_id"] == gpu_node.node_id
