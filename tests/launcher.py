"""Run ``launch/search.py`` in a child process, signal it, resume it, and read what its storage
shows meanwhile (a local directory or a bucket, through :class:`semirobust_ray.storage.Store`).

Shared by the fault tests (local storage) and the S3 tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from semirobust_ray.storage import Store

ROOT = Path(__file__).resolve().parents[1]
FINAL_KEY = "trial_result_json"


def launch_cmd(storage: str, settings: dict, name: str = "x", *extra: str) -> list[str]:
    """The launcher on a local Ray of its own, with every key of ``settings`` as a ``--set``."""
    sets = []
    for key, value in settings.items():
        sets += ["--set", f"{key}={json.dumps(value)}"]
    return [
        sys.executable,
        str(ROOT / "launch" / "search.py"),
        "--address",
        "local",
        "--storage-path",
        storage,
        "--name",
        name,
        *sets,
        *extra,
    ]


def child_env() -> dict[str, str]:
    """The environment of a launched search: this one's (S3 endpoint and keys included)."""
    # The child must start its own Ray, never join one this process may have started.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # The package under test, whichever directory the child runs in.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # Tune copies its experiment state and the trials' result.json to the storage path together,
    # every 10 s by default: what a killed driver leaves there is a consistent snapshot up to
    # 10 s old (trials finished after it re-run from their last checkpoint). Every second here,
    # so that the moment "one trial finished, one in flight" shows up on the storage path.
    env["TUNE_GLOBAL_CHECKPOINT_S"] = "1"
    return env


def lines(data: bytes) -> list[dict]:
    """The complete JSON lines of a Tune ``result.json``."""
    rows = []
    for line in data.decode(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line being written right now
            rows.append(json.loads(line))
    return rows


def persisted_trials(search: Store) -> dict[str, tuple[str, dict, bool]]:
    """Each trial's (status, last result, whether it has a checkpoint to restore from) in Tune's
    newest experiment state in storage: what a resume restores. Empty until the first state is stored (or while it is half-copied)."""
    states = [f for f in search.files() if "/" not in f and f.startswith("experiment_state-")]
    if not states:
        return {}
    try:
        data = json.loads(search.read_bytes(max(states)))  # names carry the start time
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return {}
    out = {}
    for trial_json, runtime_json in data.get("trial_data", []):
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        last = runtime.get("last_result") or {}
        out[trial["trial_id"]] = (
            trial["status"],
            json.loads(last) if isinstance(last, str) else last,
            _has_checkpoint(runtime.get("checkpoint_manager")),
        )
    return out


def _has_checkpoint(stored) -> bool:
    """Whether a trial's stored checkpoint manager holds a checkpoint it would restore from.

    Tune records a result (``last_result``) one step before it registers the checkpoint that came
    with it, and a state stored in between names the checkpoint in the result only. The manager
    is stored pickled (Tune's own file from this test's own search, so unpickling it is safe).
    """
    if isinstance(stored, str):
        stored = json.loads(stored)
    if not isinstance(stored, dict) or "value" not in stored:
        return False
    manager = pickle.loads(bytes.fromhex(stored["value"]))
    return getattr(manager, "latest_checkpoint_result", None) is not None


def snapshot(search: Store) -> tuple[dict[str, bytes], list[str]]:
    """What a resume would start from, by Tune's stored experiment state: (the result.json bytes
    of the trials it holds as finished, the directories of those it holds in flight: running,
    with a checkpoint Tune has registered). Read from the state, not from the trial files, because Tune
    stores the two one after the other: a trial file can be ahead of the state."""
    finished, in_flight = {}, []
    trials = persisted_trials(search)
    if not trials:
        return finished, in_flight
    dirs = {f.split("/")[0] for f in search.files() if "/" in f}
    for trial_id, (status, last, restorable) in trials.items():
        # Trial directories are named fb04-t1-<trial id> (search.trial_dirname).
        trial_dir = next((d for d in dirs if d.endswith(f"-{trial_id}")), None)
        if trial_dir is None:
            continue
        rel = f"{trial_dir}/result.json"
        if status == "TERMINATED" and FINAL_KEY in last and search.is_file(rel):
            data = search.read_bytes(rel)
            if FINAL_KEY.encode() in data:
                finished[rel] = data
        elif status == "RUNNING" and restorable:
            in_flight.append(trial_dir)
    return finished, in_flight


@contextlib.contextmanager
def _start(cmd: list[str], log: Path, cwd: Path):
    """The launcher as a child in its own process group, stdout to ``log``, stderr piped."""
    with log.open("w") as out:
        yield subprocess.Popen(
            cmd, cwd=cwd, env=child_env(), stdout=out, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip


def kill_group(proc: subprocess.Popen) -> None:
    """Kill what the child left behind (its Ray processes share its process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def run_until_signal(
    cmd: list[str],
    search: Store,
    sig: int,
    log: Path,
    *,
    after=(),
    timeout: float = 300,
    cwd: Path = ROOT,
):
    """Start the launcher, wait until the storage shows a finished trial (beyond those in
    ``after``) and one in flight, then send ``sig`` to the driver alone (as ``kill`` would).

    Returns (exit code, stderr text, the storage's snapshot once the driver is gone). Trials
    keep a checkpoint per epoch and spend seconds on their final evaluation and MI after the
    last one, so the trial seen in flight is normally still in flight when the signal lands.
    """
    with _start(cmd, log, cwd) as proc:
        try:
            deadline = time.monotonic() + timeout
            while True:
                finished, in_flight = snapshot(search)
                if set(finished) - set(after) and in_flight:
                    break
                assert proc.poll() is None, (
                    f"the search ended (exit {proc.returncode}) before a trial was seen in "
                    f"flight; log: {log}"
                )
                assert time.monotonic() < deadline, f"no trial finished in {timeout} s; log: {log}"
                time.sleep(0.2)
            os.kill(proc.pid, sig)
            try:
                _, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the driver did not exit within 120 s of signal {sig}")
            return proc.returncode, err, snapshot(search)
        finally:
            kill_group(proc)


def run_to_end(cmd: list[str], log: Path, *, cwd: Path = ROOT, timeout: float = 400):
    """Run the launcher to its end: a CompletedProcess with its stderr (stdout goes to ``log``)."""
    with _start(cmd, log, cwd) as proc:
        try:
            _, err = proc.communicate(timeout=timeout)
        finally:
            kill_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(), err)


# Ray prefixes what a worker prints with "(<name> pid=<N>)". When the driver stops, Ray ends the
# trial workers with SIGTERM; its own handler raises SystemExit there, and where that lands inside
# a weakref callback Python prints an "Exception ignored" traceback (timing-dependent, Ray's
# code). Our promise is about the driver: it exits cleanly, so only its own lines are checked.
_WORKER_PREFIX = re.compile(r"^(\x1b\[[0-9;]*m)?\([\w.:-]+ pid=\d+")


def driver_lines(err: str) -> str:
    """The lines the driver itself printed."""
    return "\n".join(line for line in err.splitlines() if not _WORKER_PREFIX.match(line))


def assert_kept_and_continued(search: Store, *snapshots, continued: bool = True) -> None:
    """Finished trials were not re-run; trials in flight continued from their checkpoint (with
    ``continued=False`` they must only have finished, from their checkpoint or afresh)."""
    for finished, in_flight in snapshots:
        for rel, data in finished.items():
            assert search.read_bytes(rel) == data, f"finished trial was re-run: {rel}"
        for trial_dir in in_flight if continued else ():
            last = lines(search.read_bytes(f"{trial_dir}/result.json"))[-1]
            assert FINAL_KEY in last, f"{trial_dir} never finished"
            assert last["resumed"] == 1, f"{trial_dir} restarted instead of continuing"
