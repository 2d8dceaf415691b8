"""A search whose storage is a bucket, against a real S3 server (moto's server mode on 127.0.0.1).

The storage path is given as a user gives an AWS one (``s3://bucket/runs``, endpoint and keys in
the environment); nothing here mocks pyarrow, Tune or boto3:

- a search on ``s3://`` is killed with SIGKILL mid-search; ``--resume`` from another working
  directory with an empty baseline cache, given only the storage path and the name, finishes it
  without re-running finished trials and without training the baseline again;
- every file of the search is then in the bucket (search metadata, baseline with checksums,
  trial results and checkpoints, the report and the frontier), nothing in either driver's
  working directory;
- ``python -m semirobust_ray.report`` and ``launch/reevaluate.py`` run against the bucket.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import DIGITS_SEARCH
from launcher import (
    ROOT,
    assert_kept_and_continued,
    child_env,
    driver_lines,
    launch_cmd,
    run_to_end,
    run_until_signal,
)

from semirobust_ray.report import REPORT_FILES
from semirobust_ray.storage import Store

pytest.importorskip("moto", reason="the S3 tests need moto[server] (pip install -e '.[test]')")

BUCKET = "semirobust-test"
# CI-sized, like the fault tests: 3 grid trials of up to 3 epochs, one after another (MI makes
# each trial take both CPUs), so "one trial finished, the next in flight" lasts a few seconds.
S3_SEARCH = {
    **DIGITS_SEARCH,
    "epochs": 3,
    "split_depths": [1, 2, 6],
    "k": 0.0,
    "mi": True,
    "mi_samples": 200,
    "eval_samples": 10,  # reevaluate runs AutoAttack on each network: keep it to seconds
    "max_failures": 1,
    "search": "grid",
}
SEARCH_FILES = (
    "search/search_meta.json",
    "baseline/baseline.json",
    "baseline/regular.pt",
    "baseline/robust.pt",
    *REPORT_FILES.values(),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on an ephemeral port, the environment a user's AWS setup would give,
    and an empty bucket; stopped (and the environment restored) at the end of the module."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
            break
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"moto server did not start on {endpoint}: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}/runs"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("s3-cache")


def _settings(cache: Path) -> dict:
    return {**S3_SEARCH, "cache_dir": str(cache)}


@pytest.fixture(scope="module")
def resumed(s3, cache_dir, tmp_path_factory):
    """A search on the bucket killed with SIGKILL mid-search, then resumed from another working
    directory with an empty baseline cache and nothing but ``--storage-path`` and ``--name``.

    Returns (its store, the storage's snapshot when the driver died, the stored baseline record
    then, the resumed run, the two working directories, the empty cache).
    """
    tmp = tmp_path_factory.mktemp("killed")
    search = Store(f"{s3}/killed")
    first_cwd, second_cwd = tmp / "a", tmp / "b"
    first_cwd.mkdir()
    second_cwd.mkdir()
    cmd = launch_cmd(s3, _settings(cache_dir), "killed")
    code, err, snap = run_until_signal(cmd, search, signal.SIGKILL, tmp / "run1.log", cwd=first_cwd)
    assert code == -signal.SIGKILL, err[-2000:]
    baseline_before = search.read_json("baseline/baseline.json")
    empty_cache = tmp / "empty-cache"
    resume = [
        sys.executable,
        str(ROOT / "launch" / "search.py"),
        "--address",
        "local",
        "--storage-path",
        s3,
        "--name",
        "killed",
        "--resume",
        "--set",
        f"cache_dir={empty_cache}",
    ]
    done = run_to_end(resume, tmp / "run2.log", cwd=second_cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return search, snap, baseline_before, done, (first_cwd, second_cwd), empty_cache


def test_killed_driver_resumes_from_the_bucket_alone(resumed):
    search, snap, baseline_before, done, _, empty_cache = resumed
    assert "Traceback" not in driver_lines(done.stderr)
    assert_kept_and_continued(search, snap)
    # The baseline came from the bucket: not trained again, the same weights and Acc*.
    assert "[baseline]" not in done.stdout + done.stderr
    assert "baseline from s3://" in done.stdout
    assert search.read_json("baseline/baseline.json") == baseline_before
    assert not empty_cache.exists()
    minimal = search.read_json("minimal_split.json")
    assert [e["fb_layers"] for e in minimal["evidence"]] == S3_SEARCH["split_depths"]
    assert all(e["trials"] == 1 for e in minimal["evidence"])  # each trial exactly once


def test_search_on_s3_keeps_everything_in_the_bucket(resumed):
    search, _, _, done, cwds, _ = resumed
    files = search.files()
    for name in SEARCH_FILES:
        assert name in files, f"{name} missing from the bucket: {files}"
    results = [f for f in files if f.endswith("/result.json")]
    assert len(results) == len(S3_SEARCH["split_depths"])
    assert sum(f.endswith("/final_fb.pt") for f in files) == len(results)
    meta = search.read_json("search/search_meta.json")
    assert meta["baseline"]["key"] == search.read_json("baseline/baseline.json")["key"]
    assert meta["config"]["eps"] == S3_SEARCH["eps"]
    assert search.read_bytes("frontier.png")[:8] == b"\x89PNG\r\n\x1a\n"
    for cwd in cwds:
        assert list(cwd.iterdir()) == []  # nothing written where the drivers ran
    assert f"Report:      {search.uri()}" in done.stdout


def test_report_and_reevaluate_read_and_write_the_bucket(resumed, tmp_path):
    search = resumed[0]
    before = search.read_bytes("minimal_split.json")
    search.delete("frontier.csv")
    report = subprocess.run(
        [sys.executable, "-m", "semirobust_ray.report", search.uri()],
        cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-2000:]
    assert search.is_file("frontier.csv")  # rebuilt from the bucket alone, into the bucket
    assert json.loads(search.read_bytes("minimal_split.json")) == json.loads(before)
    assert f"wrote {search.uri('frontier.png')}" in report.stdout

    reevaluate = subprocess.run(
        [
            sys.executable, str(ROOT / "launch" / "reevaluate.py"), search.uri(),
            "--fb-layers", "6", "--tolerance", "1",
        ],
        cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert reevaluate.returncode == 0, reevaluate.stderr[-2000:]
    rows = search.read_bytes("reevaluation.csv").decode().splitlines()
    assert len(rows) == 1 + 2  # a header, Acc* and the trial at |f_b| = 6
    assert float(rows[2].split(",")[1]) == 6
    assert list(tmp_path.iterdir()) == []


def test_resume_refuses_a_change_to_what_the_trials_measured(resumed, tmp_path):
    search = resumed[0]
    cmd = [
        sys.executable,
        str(ROOT / "launch" / "search.py"),
        "--address",
        "local",
        "--storage-path",
        search.uri().rpartition("/")[0],
        "--name",
        "killed",
        "--resume",
        "--set",
        "eps=0.2",
        "--set",
        "max_concurrent=1",
    ]
    done = subprocess.run(
        cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: --resume: the finished trials were measured with other")
    assert "eps (0.1 -> 0.2)" in lines[0] and "max_concurrent" not in lines[0].split(";")[0]


def test_a_bucket_that_does_not_exist_is_refused_before_any_compute(s3, tmp_path):
    from semirobust_ray.searchdir import SearchDirError, resolve_storage_path

    assert resolve_storage_path(f"{s3}/") == s3  # the test bucket takes a write
    with pytest.raises(SearchDirError) as err:
        resolve_storage_path("s3://no-such-bucket-here/runs")
    message = str(err.value)
    assert message.startswith("storage path 's3://no-such-bucket-here/runs' is not writable (")
    assert "bucket does not exist" in message and "\n" not in message
