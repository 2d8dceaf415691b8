"""Ray at the edge of a search: starting or joining it (with token authentication), and the
checks a cluster must pass before the baseline is trained.

Every check here fails in one line (:class:`SearchError`) before any compute starts: a cluster
that refuses this driver's token, a GPU request no node can meet, ``device: cuda`` without a GPU
per trial, a local storage path that other nodes cannot see.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import ray

from semirobust_ray.config import ExperimentConfig
from semirobust_ray.searchdir import SearchDirError
from semirobust_ray.storage import first_line, is_uri

logger = logging.getLogger(__name__)


class SearchError(SearchDirError):
    """A problem with the search set-up (storage, resume, resources); one line."""


def check_storage_visible(storage: str) -> None:
    """On a multi-node cluster a local ``storage_path`` must be one every node sees (a shared
    filesystem): Ray Tune requires it, and a trial on a node that cannot see it would fail
    only after the baseline was trained. A marker written here is looked for on every node."""
    if is_uri(storage):
        return
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    marker = Path(storage) / f".semirobust-visible-{os.getpid()}-{time.time_ns()}"
    marker.write_bytes(b"")
    try:
        blind = [
            n for n, seen in zip(nodes, _marker_seen(str(marker), nodes), strict=True) if not seen
        ]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise SearchError(
            f"storage path '{storage}' is local to this machine: {len(blind)} of {len(nodes)} "
            "nodes cannot see it; use shared storage every node mounts (NFS) or a bucket "
            "(--storage-path s3://bucket/runs; docs/cluster.md)"
        )


def _marker_seen(marker: str, nodes: list[str]) -> list[bool]:
    """Whether ``marker`` exists as seen from each node (a zero-CPU task pinned to it)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def seen(path: str) -> bool:
        return os.path.exists(path)

    refs = [
        seen.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(
            marker
        )
        for n in nodes
    ]
    return ray.get(refs, timeout=120)


def init_ray(address: str | None) -> None:
    """Join ``address`` (or a running cluster when none is given), else start Ray locally.

    A cluster that refuses this driver's token (token authentication, on by default since Ray
    2.59) is a :class:`SearchError` saying how to get the token, not a start-up of a local Ray.
    """
    if ray.is_initialized():
        return
    if address == "local":
        # "local", not None: ray.init() without an address joins a cluster that `ray start`
        # left on this machine (its /tmp/ray/ray_current_cluster) instead of starting one.
        ray.init(address="local", include_dashboard=False)
        return
    try:
        ray.init(address=address or "auto", log_to_driver=True)
    except Exception as err:
        problem = _join_problem(address, err)
        if problem:
            raise SearchError(problem) from None
        if address or not isinstance(err, (ConnectionError, RuntimeError)):
            raise
        ray.init(address="local", include_dashboard=False)  # no cluster running: start one
        return
    if not address:
        logger.info("[search] joined the running Ray cluster")


def _join_problem(address: str | None, err: Exception) -> str | None:
    """The one-line error for a failed join; None where the launcher may start Ray locally
    (no ``--address`` and no cluster found) or the error is not about joining."""
    target = address or "auto"
    mode = os.environ.get("RAY_AUTH_MODE", "unset")
    get_token = (
        "print the cluster's token on the head with `ray get-auth-token`, then run with "
        "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<token> or RAY_AUTH_TOKEN_PATH=<file holding "
        "it> (docs/cluster.md, 'Token authentication')"
    )
    if _token_refused(err):
        here = "" if mode == "token" else f" (RAY_AUTH_MODE is {mode!r} here)"
        return (
            f"the Ray cluster at {target} requires its authentication token and this driver "
            f"has none or another one{here}; {get_token}"
        )
    if address and isinstance(err, ConnectionError):
        first = first_line(err)
        # A Ray Client (ray://) without RAY_AUTH_MODE=token is not refused, it times out: the
        # refusal cannot be seen from here, so name the likely cause.
        client = target.startswith("ray://") and mode != "token"
        maybe = f"; if it uses token authentication, {get_token}" if client else ""
        return f"cannot join the Ray cluster at {target}: {first}{maybe}"
    return None


def _token_refused(err: BaseException) -> bool:
    """Whether ``ray.init`` failed on token authentication: an ``AuthenticationError`` (no token
    here while RAY_AUTH_MODE=token), or a ``ConnectionError`` whose chain holds the cluster's
    rejection (Ray 2.60 retries, then wraps it as text in a RuntimeError)."""
    from ray.exceptions import AuthenticationError

    seen: BaseException | None = err
    for _ in range(8):  # a chain is a few links long; the bound only guards against a cycle
        if seen is None:
            break
        if isinstance(seen, AuthenticationError) or "InvalidAuthToken" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def check_device(c: ExperimentConfig) -> None:
    """Refuse ``device: cuda`` without a GPU per trial: Ray would reserve no GPU for the trials,
    so they would land on CPU-only nodes (and fail there) or share GPUs nobody scheduled."""
    if c.device == "cuda" and c.gpus_per_trial <= 0:
        raise SearchError(
            "device: cuda but gpus_per_trial is 0, so Ray would reserve no GPU for the trials; "
            "pass --gpus-per-trial 1 (or a fraction such as 0.5), or use device: auto or cpu"
        )


def check_gpus(c: ExperimentConfig) -> None:
    """Refuse a GPU request no node can satisfy, instead of waiting for it forever."""
    if c.gpus_per_trial <= 0:
        return
    per_node = [n.get("Resources", {}).get("GPU", 0) for n in ray.nodes() if n.get("Alive")]
    best = max(per_node, default=0)
    if best < c.gpus_per_trial and not _autoscaling():
        if c.device == "cuda" and best == 0:
            raise SearchError(
                f"device: cuda with gpus_per_trial={c.gpus_per_trial:g}, but no node of this "
                "Ray cluster has a GPU and no autoscaler can add one; join a cluster with GPU "
                "nodes (--address), or run on the CPU with device: cpu --gpus-per-trial 0"
            )
        raise SearchError(
            f"gpus_per_trial={c.gpus_per_trial:g} but the largest node has {best:g} GPUs "
            f"(cluster total {ray.cluster_resources().get('GPU', 0):g}); "
            f"lower --gpus-per-trial or add GPU nodes"
        )


def _autoscaling() -> bool:
    """Whether an autoscaler can still add nodes (then missing GPUs may appear later)."""
    return bool(os.environ.get("RAY_AUTOSCALER_ENABLED")) or os.path.exists(
        os.path.expanduser("~/ray_bootstrap_config.yaml")
    )
