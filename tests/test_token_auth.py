"""Ray token authentication on a real two-node cluster: ``ray start`` twice, as on our clusters.

A head and a worker raylet are started with ``ray start --block`` in token mode
(``RAY_AUTH_MODE=token``, the token in ``~/.ray/auth_token`` of a temporary HOME, as
cluster.yaml and cluster.local.yaml ship it), each with one CPU, so that one-CPU trials spread
over both. ``RAY_TMPDIR`` points at a private directory, so ``--address auto`` finds this cluster and
no other Ray instance on the machine, and the real ``~/.ray`` is never read or written. Ray
resolves 127.0.0.1 to the machine's own address for its nodes; every port is a free ephemeral
one. The finaliser ends exactly the processes this module started: the two ``ray start --block``
processes (which stop their nodes' processes), then any process left whose command line names
the private directory.

- A driver holding the token (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH``, the laptop
  recipe of docs/cluster.md) runs a CI-sized search with ``launch/search.py --address auto``; its
  trials report node ids of both nodes.
- A driver without the token, or with another one, gets one ``error:`` line naming
  ``ray get-auth-token`` and exit code 2, not a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import DIGITS_SEARCH

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))

# One-CPU trials for two one-CPU nodes. Tune hands a finished trial's process to a trial whose
# own process is still starting (reuse_actors), so a trial lands on the second node only if a
# fresh trial process there starts (python, ray, torch: seconds on a busy machine) while a
# trial runs on the first. PGD-20 makes a trial last several seconds (PGD-10 trials took under
# 2 s here, not always enough) and three trials give that start two chances; a 1 + 1 epoch
# baseline and one epoch per trial keep the module near a minute.
AUTH_SEARCH = {
    **DIGITS_SEARCH,
    "steps": 20,
    "baseline_epochs": 1,
    "baseline_adv_epochs": 1,
    "epochs": 1,
    "split_depths": [1, 2, 3],
    "k": 0.05,
    "mi": False,
    "max_failures": 0,
    "search": "grid",
}
START_TIMEOUT_S = 90
# Ray retries a refused connection 20 times, a second apart, before it gives up; what it raises
# then is what this module checks, so one attempt is enough (the failing drivers only).
ONE_GCS_ATTEMPT = {"RAY_gcs_server_port_wait_time_s": "1"}


@dataclass
class TokenCluster:
    """A running two-node cluster in token mode and what a driver needs to reach it."""

    address: str  # host:port of the head's GCS
    tmpdir: Path  # RAY_TMPDIR of every process: --address auto finds this cluster there
    token_file: Path  # a copy of the cluster's token outside any HOME (the laptop recipe)
    base_env: dict[str, str]  # the environment without any Ray auth setting


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(home: Path, tmpdir: Path) -> dict[str, str]:
    """This process's environment without Ray settings it may carry (a local ``ray.init`` in
    Ray 2.60 exports RAY_AUTH_MODE=token into its own process) and with a private HOME and
    RAY_TMPDIR."""
    drop = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        HOME=str(home),
        RAY_TMPDIR=str(tmpdir),
        PYTHONPATH=str(ROOT),  # the trials' workers import this checkout's code
        OMP_NUM_THREADS="1",
        RAY_USAGE_STATS_ENABLED="0",
    )
    return env


def _start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``ray start ... --block``, returned once it reports that the node runs."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [RAY, "start", *args, "--num-cpus=1", "--disable-usage-stats", "--block"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"ray start {args[0]} failed:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM a ``ray start --block`` process (it stops its node's processes), then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _kill_leftovers(tmpdir: Path) -> None:
    """Kill any process still running whose command line names this module's RAY_TMPDIR (on
    Linux, through /proc; Ray's own processes name their session directory under it)."""
    procs = Path("/proc")
    for entry in procs.iterdir() if procs.is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if str(tmpdir).encode() in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster() -> Iterator[TokenCluster]:
    # Short paths: Ray's unix sockets live under RAY_TMPDIR and must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="srauth", dir="/tmp"))
    home, tmpdir = root / "home", root / "t"
    (home / ".ray").mkdir(parents=True)
    tmpdir.mkdir()
    token = secrets.token_hex(32)  # what `ray get-auth-token --generate` writes: 256 random bits
    (home / ".ray" / "auth_token").write_text(token)
    token_file = root / "laptop-token"
    token_file.write_text(token)
    base_env = _clean_env(home, tmpdir)
    node_env = {**base_env, "RAY_AUTH_MODE": "token"}  # as both cluster files start Ray
    port = _free_port()
    procs: list[subprocess.Popen] = []
    try:
        procs.append(
            _start_node(
                [
                    "--head",
                    f"--port={port}",
                    f"--ray-client-server-port={_free_port()}",
                    f"--dashboard-agent-listen-port={_free_port()}",
                    "--include-dashboard=false",
                ],
                node_env,
                root / "head.log",
            )
        )
        procs.append(
            _start_node(
                [f"--address=127.0.0.1:{port}", f"--dashboard-agent-listen-port={_free_port()}"],
                node_env,
                root / "worker.log",
            )
        )
        yield TokenCluster(f"127.0.0.1:{port}", tmpdir, token_file, base_env)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        _kill_leftovers(tmpdir)
        shutil.rmtree(root, ignore_errors=True)


def _launch(
    env: dict[str, str], address: str, storage: Path, timeout: float
) -> subprocess.CompletedProcess:
    sets = []
    for key, value in {**AUTH_SEARCH, "cache_dir": str(storage / "cache")}.items():
        sets += ["--set", f"{key}={json.dumps(value)}"]
    cmd = [
        sys.executable, str(ROOT / "launch" / "search.py"), "--address", address,
        "--storage-path", str(storage / "results"), "--name", "auth", *sets,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_search_with_the_token_runs_trials_on_both_nodes(cluster, tmp_path):
    env = {**cluster.base_env, "RAY_AUTH_MODE": "token"}
    env["RAY_AUTH_TOKEN_PATH"] = str(cluster.token_file)
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token: the token comes from the path alone
    proc = _launch(env, "auto", tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    finals = []
    for result_file in sorted((tmp_path / "results" / "auth").glob("*/result.json")):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line]
        finals.append(rows[-1])
    assert sorted(f["fb_layers"] for f in finals) == [1, 2, 3]
    # This cluster has two nodes; trials ran on both (the worker's raylet and its trial
    # processes got the token from ~/.ray/auth_token, as on our clusters).
    nodes = {f["node_id"] for f in finals}
    assert len(nodes) == 2, f"all trials ran on one node {nodes} (see AUTH_SEARCH's comment)"


@pytest.mark.parametrize(
    ("auth_env", "address", "mode_note"),
    [
        pytest.param({}, "auto", "(RAY_AUTH_MODE is 'unset' here)", id="no token, mode unset"),
        pytest.param({"RAY_AUTH_MODE": "token"}, "explicit", "", id="no token, mode token"),
        pytest.param(
            {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)},
            "explicit",
            "",
            id="another token",
        ),
    ],
)
def test_driver_without_the_token_gets_one_line(cluster, tmp_path, auth_env, address, mode_note):
    env = {**cluster.base_env, **ONE_GCS_ATTEMPT, **auth_env, "HOME": str(tmp_path)}
    target = cluster.address if address == "explicit" else "auto"
    proc = _launch(env, target, tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and proc.stderr.rstrip().endswith(ours[0]), proc.stderr[-4000:]
    line = ours[0]
    assert f"the Ray cluster at {target} requires its authentication token" in line
    assert "`ray get-auth-token`" in line and "RAY_AUTH_TOKEN=<token>" in line
    assert ("RAY_AUTH_MODE is" in line) == bool(mode_note) and mode_note in line
    assert not list((tmp_path / "results").rglob("search_meta.json"))  # nothing trained


def test_join_errors_name_the_token_only_where_it_may_be_the_cause(monkeypatch):
    """Without the cluster's fixture: the messages for failures Ray does not mark as token
    refusals. A Ray Client without RAY_AUTH_MODE=token is not refused but times out (Ray 2.60,
    after 30 s; seen against this module's cluster), so its message names the token."""
    from semirobust_ray.cluster import _join_problem

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    timeout = ConnectionError("ray client connection timeout")
    line = _join_problem("ray://localhost:10001", timeout)
    assert line.startswith("cannot join the Ray cluster at ray://localhost:10001: ray client")
    assert "`ray get-auth-token`" in line
    none_running = ConnectionError("Could not find any running Ray instance. Please specify...")
    line = _join_problem("auto", none_running)
    assert line == (
        "cannot join the Ray cluster at auto: Could not find any running Ray instance. "
        "Please specify..."
    )
    assert _join_problem(None, none_running) is None  # no --address: the launcher starts Ray
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # then the token is not what is missing
    assert "token" not in _join_problem("ray://localhost:10001", timeout)


def _can_hide_a_directory() -> bool:
    """Whether this machine lets a process mount a tmpfs in a mount namespace of its own."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs none /mnt"], capture_output=True
    )
    return probe.returncode == 0


def test_local_storage_a_node_cannot_see_is_refused_before_training(cluster, tmp_path):
    """A third node whose view of the storage path is an empty directory (a tmpfs mounted over
    it in the node's own mount namespace: a machine without the NFS mount) makes a search with
    that local storage path a one-line error before the baseline is trained."""
    if not _can_hide_a_directory():
        pytest.skip("needs `unshare -m` and mount (root in a Linux container or VM)")
    local = tmp_path / "on-this-machine-only"
    (local / "results").mkdir(parents=True)
    node_env = {**cluster.base_env, "RAY_AUTH_MODE": "token"}
    ray_start = [RAY, "start", f"--address={cluster.address}", "--num-cpus=1",
                 f"--dashboard-agent-listen-port={_free_port()}", "--disable-usage-stats", "--block"]  # fmt: skip
    hidden = f"mount -t tmpfs none {local} && exec {' '.join(ray_start)}"
    log = tmp_path / "blind-node.log"
    with log.open("w") as out:
        blind = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", hidden],
            env=node_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Ray runtime started" not in log.read_text(errors="replace"):
            assert blind.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        env = {**cluster.base_env, "RAY_AUTH_MODE": "token"}
        env["RAY_AUTH_TOKEN_PATH"] = str(cluster.token_file)
        proc = _launch(env, cluster.address, local, timeout=180)
    finally:
        _stop(blind)
    assert proc.returncode == 2, proc.stderr[-4000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1, proc.stderr[-4000:]
    assert ours[0] == (
        f"error: storage path '{local / 'results'}' is local to this machine: 1 of 3 nodes "
        "cannot see it; use shared storage every node mounts (NFS) or a bucket "
        "(--storage-path s3://bucket/runs; docs/cluster.md)"
    )
    assert not (local / "cache").exists()  # the baseline was never trained
    assert list((local / "results").iterdir()) == []  # and the marker is gone again
