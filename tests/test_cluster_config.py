"""cluster.yaml / cluster.local.yaml: Ray's own validator accepts them, offline, and they are safe.

``ray up`` runs ``prepare_config`` (merge the provider's defaults, setup commands, docker and
worker counts) and ``validate_config`` (Ray's JSON schema plus cross-checks) before it touches
the cloud; both run here without network or credentials. The cloud bootstrap that follows needs
an AWS account; of it only the security-group step is exercised, which must return before any
AWS call because every node type names its own group.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

util = pytest.importorskip("ray.autoscaler._private.util")
pytest.importorskip("jsonschema")  # validate_config needs it (ray[default])

REPO = Path(__file__).resolve().parents[1]
#: Where the nodes get the cluster's token: the directory of Ray's default token file.
TOKEN_MOUNT = "~/.ray"
#: Where docs/cluster.md has the user create it (outside the repository).
TOKEN_DIR = "~/.semirobust/ray-auth"
AWS_FILE = REPO / "cluster.yaml"
LOCAL_FILE = REPO / "cluster.local.yaml"
DOCS = REPO / "docs" / "cluster.md"
RAY_PORTS = (8265, 6379, 10001)


def load(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


def prepared(path: Path) -> dict[str, Any]:
    """What ``ray up`` validates: the file merged with the provider's defaults."""
    config = util.prepare_config(copy.deepcopy(load(path)))
    util.validate_config(config)
    return config


@pytest.mark.parametrize("path", [AWS_FILE, LOCAL_FILE], ids=lambda p: p.name)
def test_ray_validator_accepts(path: Path) -> None:
    config = prepared(path)
    assert config["cluster_name"].startswith("semirobust")
    assert config["head_node_type"] in config["available_node_types"]


def test_validator_is_real() -> None:
    """A misspelt key must fail, or the tests above would prove nothing."""
    config = load(AWS_FILE)
    config["head_start_ray_command"] = config.pop("head_start_ray_commands")
    with pytest.raises(Exception, match="head_start_ray_command"):
        util.validate_config(util.prepare_config(config))


def test_aws_nodes() -> None:
    config = prepared(AWS_FILE)
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))  # CPU head
    gpu_workers = [
        t
        for name, t in types.items()
        if name != config["head_node_type"] and t["node_config"]["InstanceType"].startswith("g5")
    ]
    assert gpu_workers, "no GPU worker type"
    for worker in gpu_workers:
        assert worker["min_workers"] == 0 and worker["max_workers"] >= 1  # autoscaling
    assert config["max_workers"] >= max(w["max_workers"] for w in gpu_workers)
    assert config["docker"]["image"].startswith("rayproject/ray")


@pytest.mark.parametrize("path", [AWS_FILE, LOCAL_FILE], ids=lambda p: p.name)
def test_installs_the_project(path: Path) -> None:
    config = load(path)
    assert config["file_mounts"]["~/semirobust_ray"] == "."
    assert set(config["file_mounts"]) == {"~/semirobust_ray", TOKEN_MOUNT}
    setup = " ".join(config["setup_commands"])
    assert "pip install" in setup and "-e" in setup and "semirobust_ray[cluster]" in setup
    assert ".git" in config["rsync_exclude"]


@pytest.mark.parametrize("path", [AWS_FILE, LOCAL_FILE], ids=lambda p: p.name)
def test_dashboard_on_loopback(path: Path) -> None:
    head_start = " ".join(load(path)["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start


@pytest.mark.parametrize("path", [AWS_FILE, LOCAL_FILE], ids=lambda p: p.name)
def test_no_credentials_or_open_ranges(path: Path) -> None:
    text = path.read_text()
    values = yaml.safe_dump(load(path))  # the settings, without the comments that explain them
    assert "0.0.0.0/0" not in values and "::/0" not in values
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # an AWS access key id
    assert not re.search(r"(?i)(secret|access_key|password|token)\s*:", text)
    assert "PRIVATE KEY" not in text
    auth = load(path).get("auth", {})
    assert set(auth) <= {"ssh_user", "ssh_private_key"}
    key = auth.get("ssh_private_key")
    assert key is None or (key.startswith("~/") and "\n" not in key)  # a path, not a key


def test_aws_security_groups_are_user_managed() -> None:
    """Every node type names a group, so Ray creates none (its own opens SSH to 0.0.0.0/0)."""
    from ray.autoscaler._private.aws import config as aws_config

    config = prepared(AWS_FILE)
    assert "security_group" not in config["provider"]
    for node_type in config["available_node_types"].values():
        assert node_type["node_config"]["SecurityGroupIds"] == ["sg-REPLACE_ME"]
    # Ray's bootstrap step returns the config untouched without calling AWS when groups are
    # given; were one missing, it would try to reach EC2 and fail here (no credentials).
    assert aws_config._configure_security_group(copy.deepcopy(config)) == config


def _ingress_commands(markdown: str) -> list[list[str]]:
    joined = markdown.replace("\\\n", " ")
    return [
        shlex.split(line.strip())
        for line in joined.splitlines()
        if "authorize-security-group-ingress" in line
    ]


def _option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_documented_security_group_rules() -> None:
    """The group docs/cluster.md creates: SSH from the user's CIDR, all else only from itself."""
    docs = DOCS.read_text()
    rules = _ingress_commands(docs)
    assert len(rules) == 2
    ssh = [r for r in rules if _option(r, "--cidr") is not None]
    internal = [r for r in rules if _option(r, "--source-group") is not None]
    assert len(ssh) == 1 and len(internal) == 1
    (ssh,) = ssh
    assert _option(ssh, "--protocol") == "tcp" and _option(ssh, "--port") == "22"
    assert _option(ssh, "--cidr") == "$MY_CIDR"
    cidr = re.search(r'^MY_CIDR="([^"]+)"', docs, re.MULTILINE)
    assert cidr and "REPLACE_ME" in cidr.group(1) and "0.0.0.0" not in cidr.group(1)
    (internal,) = internal
    assert _option(internal, "--source-group") == _option(internal, "--group-id") == "$SG_ID"
    assert _option(internal, "--protocol") == "all"
    # No rule of any kind opens Ray's ports (or anything) to the internet.
    for rule in rules:
        assert "0.0.0.0/0" not in rule
        assert _option(rule, "--port") not in {str(p) for p in RAY_PORTS}


def test_docs_cover_the_workflow() -> None:
    docs = DOCS.read_text()
    for needle in (
        "ray up cluster.yaml",
        "ray attach cluster.yaml",
        "ray submit cluster.yaml",
        "launch/search.py --address auto",
        "--storage-path s3://",
        "ray dashboard cluster.yaml",
        "-L 6006:localhost:6006",
        "python -m semirobust_ray.report",
        "ray down cluster.yaml",
        "cluster.local.yaml",
    ):
        assert needle in docs, needle


def test_local_placeholders() -> None:
    config = prepared(LOCAL_FILE)
    provider = config["provider"]
    assert provider["type"] == "local"
    assert "REPLACE_ME" in provider["head_ip"]
    assert provider["worker_ips"] and all("REPLACE_ME" in ip for ip in provider["worker_ips"])
    node_type = config["available_node_types"][config["head_node_type"]]
    assert node_type["max_workers"] == len(provider["worker_ips"])


# --- token authentication -------------------------------------------------------------------


def _start_commands(config: dict[str, Any]) -> list[str]:
    keys = ("head_start_ray_commands", "worker_start_ray_commands")
    return [cmd for key in keys for cmd in config[key] if "ray start" in cmd]


@pytest.mark.parametrize("path", [AWS_FILE, LOCAL_FILE], ids=lambda p: p.name)
def test_every_ray_start_is_in_token_mode(path: Path) -> None:
    starts = _start_commands(prepared(path))
    assert len(starts) == 2  # the head's and the workers'
    for cmd in starts:
        # In the same shell command as `ray start`: each list entry runs in its own shell.
        assert re.search(r"(^|[;&|]\s*|\s)RAY_AUTH_MODE=token ray start ", cmd), cmd


def test_aws_containers_are_in_token_mode() -> None:
    """Every process in the containers, drivers started by `ray exec` included."""
    docker = prepared(AWS_FILE)["docker"]
    # run_options apply to the head's and the workers' containers alike.
    assert "--env RAY_AUTH_MODE=token" in docker["run_options"]


def test_local_shells_are_in_token_mode(tmp_path: Path) -> None:
    """cluster.local.yaml's setup command puts token mode in ~/.bashrc (which `ray exec`
    sources) once, however often `ray up` runs it."""
    (cmd,) = [c for c in load(LOCAL_FILE)["setup_commands"] if "RAY_AUTH_MODE" in c]
    bashrc = tmp_path / ".bashrc"
    bashrc.write_text("# the user's own settings\n")
    for _ in range(2):
        subprocess.run(["bash", "-c", cmd], env={**os.environ, "HOME": str(tmp_path)}, check=True)
    assert bashrc.read_text() == "# the user's own settings\nexport RAY_AUTH_MODE=token\n"


@pytest.mark.parametrize("path", [AWS_FILE, LOCAL_FILE], ids=lambda p: p.name)
def test_token_comes_from_outside_the_repository(path: Path, tmp_path: Path, monkeypatch) -> None:
    from ray._private.authentication.authentication_token_setup import _get_default_token_path

    mounts = prepared(path)["file_mounts"]
    assert mounts[TOKEN_MOUNT] == TOKEN_DIR
    # A directory of the user's home, never a file of the checkout `ray up` runs in.
    assert TOKEN_DIR.startswith("~/") and not TOKEN_DIR.endswith("auth_token")
    # The mount lands where every Ray process on a node looks for the token.
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _get_default_token_path() == Path(os.path.expanduser(TOKEN_MOUNT)) / "auth_token"
    # `ray up` reads every mount source before it touches any machine: without the token it
    # stops there (FileNotFoundError); with it, it goes on. (A fresh process's empty cache.)
    monkeypatch.setattr(util, "_hash_cache", {})
    with pytest.raises(FileNotFoundError, match="ray-auth"):
        util.hash_runtime_conf({TOKEN_MOUNT: TOKEN_DIR}, None, {})
    token_dir = Path(os.path.expanduser(TOKEN_DIR))
    token_dir.mkdir(parents=True)
    (token_dir / "auth_token").write_text("0" * 64)
    util.hash_runtime_conf({TOKEN_MOUNT: TOKEN_DIR}, None, {})


@pytest.mark.parametrize("path", [AWS_FILE, LOCAL_FILE], ids=lambda p: p.name)
def test_no_token_in_the_files(path: Path) -> None:
    text = path.read_text()
    assert not re.search(r"RAY_AUTH_TOKEN\s*=", text)  # no token in an environment setting
    assert not re.search(r"[0-9a-fA-F]{32,}", text)  # nothing like `ray get-auth-token` prints
    assert "RAY_AUTH_TOKEN_PATH" not in text  # the nodes use Ray's default file


def test_documented_token_commands(tmp_path: Path) -> None:
    """The generation command in docs/cluster.md makes a token Ray reads, readable only by
    its owner, in the directory the cluster files mount."""
    docs = DOCS.read_text()
    generate = [line for line in docs.splitlines() if "secrets.token_hex(32)" in line]
    assert generate and len(set(generate)) == 1, "one generation command, the same everywhere"
    setup = [line for line in docs.splitlines() if line.startswith(f"mkdir -p {TOKEN_DIR}")]
    script = "\n".join([setup[0], generate[0]])
    env = {**os.environ, "HOME": str(tmp_path)}
    subprocess.run(["bash", "-ec", script], env=env, check=True)
    token_file = Path(str(tmp_path) + TOKEN_DIR[1:]) / "auth_token"
    token = token_file.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert token_file.parent.stat().st_mode & 0o777 == 0o700
    for needle in (
        "RAY_AUTH_MODE=token",
        "RAY_AUTH_TOKEN_PATH=~/.semirobust/ray-auth/auth_token",
        "ray get-auth-token",
        "ray down cluster.yaml -y && ray up cluster.yaml -y",
    ):
        assert needle in docs, needle
