"""
deploy/kubernetes/netd.toml (the ConfigMap's config) run as the pod runs it,
on ports the system picks, with the token file made by the init container's
own code from a Secret-like file: the kubelet's probes as deployment.yaml
sends them pass, /metrics needs the Secret's token, echo and DNS answer, and
SIGTERM drains within the pod's terminationGracePeriodSeconds with /ready
failing first.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from netd.testing.harness import NetdServer

from .conftest import IO_TIMEOUT, connect, recvExactly
from .dns_upstream import answerRcode, askUdp, buildQuery

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
TOKEN = "a-token-of-the-test"


def deployment() -> dict[str, Any]:
    """
    deploy/kubernetes/deployment.yaml, parsed.
    """
    (document,) = yaml.safe_load_all((DEPLOY / "deployment.yaml").read_text(encoding="utf-8"))
    found: dict[str, Any] = document
    return found


def copyToken(directory: Path) -> tuple[str, Path]:
    """
    Run the init container's command, its paths moved into C{directory}, on
    a Secret file as the kubelet mounts it with the pod's fsGroup (mode
    0440); return where the token's volume is mounted in the pod and the
    folder standing for it here.
    """
    (init,) = deployment()["spec"]["template"]["spec"]["initContainers"]
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    secret, run = directory / "secret", directory / "run"
    secret.mkdir()
    run.mkdir()
    (secret / "token").write_text(TOKEN + "\n", encoding="ascii")
    (secret / "token").chmod(0o440)
    program, option, code = init["command"]
    assert program == "python3"
    code = code.replace(mounts["admin-secret"], str(secret)).replace(mounts["run"], str(run))
    subprocess.run([sys.executable, option, code], check=True, timeout=IO_TIMEOUT)
    return mounts["run"], run


def podConfig(directory: Path) -> str:
    """
    netd.toml with every port 0 (the interfaces left as they are) and the
    pod's paths (state_dir, the token copied by the init container) moved
    into C{directory}.
    """
    text = (DEPLOY / "netd.toml").read_text(encoding="utf-8")
    daemon = tomllib.loads(text)["daemon"]
    mountPath, run = copyToken(directory)
    token = Path(daemon["admin_token_file"].replace(mountPath, str(run), 1))
    assert token.stat().st_mode & 0o777 == 0o600
    text = text.replace(daemon["admin_token_file"], str(token)).replace(daemon["state_dir"], str(directory / "state"))
    for port in ("7007", "5300", "8053"):
        text = text.replace(f":{port}", ":0")
    return text


def probe(name: str) -> dict[str, Any]:
    """
    The httpGet of one of the netd container's probes in deployment.yaml.
    """
    (netd,) = [c for c in deployment()["spec"]["template"]["spec"]["containers"] if c["name"] == "netd"]
    get: dict[str, Any] = netd[name]["httpGet"]
    return get


def status(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """
    The status and body of a GET.
    """
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=IO_TIMEOUT) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as e:
        with e:
            return int(e.code), e.read()


def probeStatus(port: int, name: str) -> int:
    """
    What the kubelet would see from one of deployment.yaml's probes.
    """
    get = probe(name)
    headers = {h["name"]: h["value"] for h in get["httpHeaders"]}
    return status(f"http://127.0.0.1:{port}{get['path']}", headers)[0]


def test_podConfigServesAndDrains(tmp_path: Path) -> None:
    """
    The ConfigMap's config passes the Deployment's probes, guards /metrics with the token, serves echo and DNS, and after SIGTERM fails readiness then exits within the grace period.
    """
    config = tmp_path / "netd.toml"
    config.write_text(podConfig(tmp_path), encoding="utf-8")
    netd = NetdServer(config, tmp_path, stopTimeout=30)
    with netd:
        port = int(netd.report["admin"]["port"])
        assert probeStatus(port, "readinessProbe") == 200
        assert probeStatus(port, "livenessProbe") == 200
        metrics = f"http://127.0.0.1:{port}/metrics"
        assert status(metrics, {})[0] == 401
        code, body = status(metrics, {"Authorization": f"Bearer {TOKEN}"})
        assert code == 200 and b"netd_ready 1" in body

        with connect(("127.0.0.1", netd.address("echo")[1])) as client:
            client.sendall(b"ping")
            assert recvExactly(client, 4) == b"ping"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(IO_TIMEOUT)
            udp.sendto(b"pong", ("127.0.0.1", netd.address("echo", "udp")[1]))
            assert udp.recv(64) == b"pong"
        query = buildQuery("netd.test")
        answer = askUdp("127.0.0.1", netd.address("dns", "udp")[1], query, timeout=IO_TIMEOUT)
        assert answer is not None and answerRcode(query, answer) == 0
        assert int.from_bytes(answer[6:8], "big") >= 1, "no answer record for netd.test"

        grace = deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        started = time.monotonic()
        assert netd.process is not None
        netd.process.send_signal(signal.SIGTERM)
        deadline = started + IO_TIMEOUT
        while probeStatus(port, "readinessProbe") != 503:
            assert time.monotonic() < deadline, "/ready did not fail after SIGTERM"
            time.sleep(0.1)
        assert probeStatus(port, "livenessProbe") == 200
        assert netd.process.wait(timeout=grace) == 0
        assert time.monotonic() - started < grace
