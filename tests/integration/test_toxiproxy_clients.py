"""
toxiproxy's own clients, unchanged from the package registries, pointed at
netd's toxiproxy-compatible API (C{[daemon] toxiproxy}): the Python client
(C{toxiproxy-python}) and the Node client (C{toxiproxy-node-client}) each
create a proxy in front of a real redis-server, add toxics, and a redis
client (a socket speaking RESP) checks what it sees through the proxy.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from netd.testing.harness import NetdServer, unavailable

from .conftest import IO_TIMEOUT, connect, recvExactly, recvUntilClosed, requireTool
from .test_proxy import redis  # noqa: F401  (the module's redis-server fixture)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent.parent
NODE_CLIENT = ROOT / ".npm-test" / "node_modules" / "toxiproxy-node-client"
LATENCY_MS = 200
TIMEOUT_MS = 400
NODE_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def netd(startModuleNetd: Any) -> NetdServer:
    """
    One netd for the module, with the toxiproxy API on a loopback port of the system's choice and no service of its own.
    """
    started: NetdServer = startModuleNetd('[daemon]\ntoxiproxy = "tcp:0:interface=127.0.0.1"\n')
    return started


@pytest.fixture()
def toxiproxy(netd: NetdServer) -> Iterator[Any]:
    """
    The Python client's server object, pointed at netd's toxiproxy API; every proxy is destroyed after the test.
    """
    from toxiproxy import Toxiproxy

    server = Toxiproxy()
    address = urlsplit(netd.toxiproxyURL)
    server.update_api_consumer(address.hostname, address.port)
    yield server
    server.destroy_all()


def listenOf(proxy: Any) -> tuple[str, int]:
    """
    The (host, port) a proxy listens on, from its listen as toxiproxy reports it.
    """
    host, _, port = proxy.listen.rpartition(":")
    return host, int(port)


def pingTime(address: tuple[str, int]) -> float:
    """
    The seconds one PING takes through a new connection, connect excluded.
    """
    with connect(address) as client:
        started = time.monotonic()
        client.sendall(b"PING\r\n")
        assert recvExactly(client, 7) == b"+PONG\r\n"
        return time.monotonic() - started


def test_pythonClientVersionAndCreate(toxiproxy: Any, redis: tuple[str, int]) -> None:  # noqa: F811
    """
    The Python client sees a running server with a version, creates a proxy on a port of netd's choice, and redis answers through it.
    """
    assert toxiproxy.running()
    assert json.loads(toxiproxy.version())["version"]
    proxy = toxiproxy.create(upstream=f"127.0.0.1:{redis[1]}", name="redis_py")
    assert proxy.enabled is True
    assert listenOf(proxy)[1] != 0
    assert set(toxiproxy.proxies()) == {"redis_py"}
    assert pingTime(listenOf(proxy)) < LATENCY_MS / 1000


def test_pythonClientLatency(toxiproxy: Any, redis: tuple[str, int]) -> None:  # noqa: F811
    """
    A latency toxic added with the Python client delays redis's answers by its milliseconds; removing it makes them fast again.
    """
    proxy = toxiproxy.create(upstream=f"127.0.0.1:{redis[1]}", name="redis_latency")
    proxy.add_toxic(type="latency", attributes={"latency": LATENCY_MS})
    [toxic] = proxy.toxics().values()
    assert (toxic.name, toxic.stream, toxic.attributes["latency"]) == ("latency_downstream", "downstream", LATENCY_MS)
    assert pingTime(listenOf(proxy)) >= LATENCY_MS / 1000
    proxy.destroy_toxic("latency_downstream")
    assert pingTime(listenOf(proxy)) < LATENCY_MS / 1000


def test_pythonClientLimitData(toxiproxy: Any, redis: tuple[str, int]) -> None:  # noqa: F811
    """
    A limit_data toxic lets the client see exactly its bytes of redis's answer, then the connection closes.
    """
    proxy = toxiproxy.create(upstream=f"127.0.0.1:{redis[1]}", name="redis_limit")
    proxy.add_toxic(type="limit_data", attributes={"bytes": 3})
    with connect(listenOf(proxy)) as client:
        client.sendall(b"PING\r\n")
        assert recvUntilClosed(client) == b"+PO"


def test_pythonClientResetPeer(toxiproxy: Any, redis: tuple[str, int]) -> None:  # noqa: F811
    """
    A reset_peer toxic upstream resets the client's connection its timeout after the client sends, and redis never answers.
    """
    proxy = toxiproxy.create(upstream=f"127.0.0.1:{redis[1]}", name="redis_reset")
    proxy.add_toxic(type="reset_peer", stream="upstream", attributes={"timeout": 100})
    with connect(listenOf(proxy)) as client:
        client.sendall(b"PING\r\n")
        started = time.monotonic()
        with pytest.raises(ConnectionResetError):
            client.recv(100)
        assert time.monotonic() - started >= 0.09


def test_pythonClientTimeout(toxiproxy: Any, redis: tuple[str, int]) -> None:  # noqa: F811
    """
    A timeout toxic swallows redis's answer and closes the connection its timeout later.
    """
    proxy = toxiproxy.create(upstream=f"127.0.0.1:{redis[1]}", name="redis_timeout")
    proxy.add_toxic(type="timeout", attributes={"timeout": TIMEOUT_MS})
    with connect(listenOf(proxy)) as client:
        client.sendall(b"PING\r\n")
        started = time.monotonic()
        assert recvUntilClosed(client) == b""
        assert time.monotonic() - started >= (TIMEOUT_MS - 50) / 1000


def test_pythonClientSlowClose(toxiproxy: Any, redis: tuple[str, int]) -> None:  # noqa: F811
    """
    A slow_close toxic downstream passes redis's answer to QUIT at once and its close its delay later.
    """
    proxy = toxiproxy.create(upstream=f"127.0.0.1:{redis[1]}", name="redis_slow_close")
    proxy.add_toxic(type="slow_close", attributes={"delay": TIMEOUT_MS})
    with connect(listenOf(proxy)) as client:
        started = time.monotonic()
        client.sendall(b"QUIT\r\n")
        assert recvExactly(client, 5) == b"+OK\r\n"
        assert time.monotonic() - started < TIMEOUT_MS / 1000
        assert recvUntilClosed(client) == b""
        assert time.monotonic() - started >= (TIMEOUT_MS - 50) / 1000


def storeValue(redis: tuple[str, int], key: bytes, value: bytes) -> None:
    """
    SET a key on the redis-server directly.
    """
    with connect(redis) as client:
        client.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
        assert recvExactly(client, 5) == b"+OK\r\n"


def test_pythonClientBandwidthAndSlicer(toxiproxy: Any, redis: tuple[str, int]) -> None:  # noqa: F811
    """
    A bandwidth toxic of 100 KB/s makes a 50 kB answer take half a second; a slicer toxic of 10 bytes every 10 ms makes each recv get at most 10 bytes.
    """
    value = bytes(range(256)) * 195 + b"x" * 80
    storeValue(redis, b"toxiproxy:big", value)
    reply = b"$%d\r\n%s\r\n" % (len(value), value)
    proxy = toxiproxy.create(upstream=f"127.0.0.1:{redis[1]}", name="redis_bandwidth")
    proxy.add_toxic(type="bandwidth", attributes={"rate": 100})
    with connect(listenOf(proxy)) as client:
        started = time.monotonic()
        client.sendall(b"GET toxiproxy:big\r\n")
        assert recvExactly(client, len(reply)) == reply
        assert time.monotonic() - started >= 0.4
    proxy.destroy_toxic("bandwidth_downstream")
    proxy.add_toxic(type="slicer", attributes={"average_size": 10, "delay": 10_000})
    with connect(listenOf(proxy)) as client:
        client.sendall(b"PING\r\nPING\r\nPING\r\nPING\r\n")
        pieces = []
        while sum(map(len, pieces)) < 28:
            pieces.append(client.recv(100))
            assert pieces[-1]
    assert b"".join(pieces) == b"+PONG\r\n" * 4
    assert max(map(len, pieces)) <= 10


def test_pythonClientDisableResetPopulate(toxiproxy: Any, redis: tuple[str, int]) -> None:  # noqa: F811
    """
    With the Python client, a disabled proxy refuses connections, reset enables it again and removes its toxics, and populate creates proxies that redis answers through.
    """
    upstream = f"127.0.0.1:{redis[1]}"
    proxy = toxiproxy.create(upstream=upstream, name="redis_down")
    proxy.add_toxic(type="latency", attributes={"latency": LATENCY_MS})
    address = listenOf(proxy)
    with proxy.down():
        with pytest.raises(ConnectionRefusedError), socket.create_connection(address, timeout=IO_TIMEOUT):
            pass
    assert pingTime(address) >= LATENCY_MS / 1000
    proxy.disable()
    assert toxiproxy.reset()
    again = toxiproxy.get_proxy("redis_down")
    assert again.enabled is True and again.toxics() == {}
    assert pingTime(address) < LATENCY_MS / 1000
    [populated] = toxiproxy.populate([{"name": "redis_populated", "upstream": upstream, "listen": "127.0.0.1:0"}])
    assert pingTime(listenOf(populated)) < LATENCY_MS / 1000


NODE_SCRIPT = r"""
const net = require("net");
const { Toxiproxy } = require(process.env.NODE_CLIENT);

// One PING through the proxy: what the client saw and when.
function ping(listen) {
  const [host, port] = [listen.slice(0, listen.lastIndexOf(":")), Number(listen.slice(listen.lastIndexOf(":") + 1))];
  return new Promise((resolve) => {
    const started = Date.now();
    const socket = net.connect({ host, port }, () => socket.write("PING\r\n"));
    let data = "";
    const done = (how) => { socket.destroy(); resolve({ how, data, ms: Date.now() - started }); };
    socket.setTimeout(5000, () => done("timeout"));
    socket.on("data", (chunk) => {
      data += chunk.toString();
      if (data === "+PONG\r\n") done("answered");
    });
    socket.on("end", () => done("closed"));
    socket.on("error", (error) => done(error.code));
  });
}

async function main() {
  const toxiproxy = new Toxiproxy(process.env.TOXIPROXY_URL);
  const result = { version: await toxiproxy.getVersion() };
  const upstream = "127.0.0.1:" + process.env.REDIS_PORT;
  const proxy = await toxiproxy.createProxy({ name: "redis_node", listen: "127.0.0.1:0", upstream });
  result.created = proxy.toJson();
  result.plain = await ping(proxy.listen);
  let toxic = await proxy.addToxic({ type: "latency", stream: "downstream", toxicity: 1, attributes: { latency: 200 } });
  result.latencyToxic = toxic.toJson();
  result.latency = await ping(proxy.listen);
  await toxic.remove();
  toxic = await proxy.addToxic({ type: "limit_data", stream: "downstream", toxicity: 1, attributes: { bytes: 3 } });
  result.limitData = await ping(proxy.listen);
  await toxic.remove();
  toxic = await proxy.addToxic({ type: "reset_peer", stream: "upstream", toxicity: 1, attributes: { timeout: 100 } });
  result.resetPeer = await ping(proxy.listen);
  await toxic.remove();
  toxic = await proxy.addToxic({ type: "timeout", stream: "downstream", toxicity: 1, attributes: { timeout: 400 } });
  result.timeout = await ping(proxy.listen);
  result.fetched = (await proxy.getToxic("timeout_downstream")).toJson();
  const updated = await proxy.update({ enabled: false, listen: proxy.listen, upstream });
  result.disabled = updated.toJson();
  result.whileDisabled = await ping(proxy.listen);
  await toxiproxy.reset();
  const reset = await toxiproxy.get("redis_node");
  result.reset = reset.toJson();
  result.afterReset = await ping(proxy.listen);
  const populated = await toxiproxy.populate([{ name: "redis_node_populated", listen: "127.0.0.1:0", upstream }]);
  result.populated = Object.keys(populated);
  result.populatedPing = await ping(populated.redis_node_populated.listen);
  result.all = Object.keys(await toxiproxy.getAll()).sort();
  for (const each of Object.values(await toxiproxy.getAll())) await each.remove();
  result.left = Object.keys(await toxiproxy.getAll());
  console.log(JSON.stringify(result));
}

main().catch((error) => { console.error(error.stack || error); process.exit(1); });
"""


def test_nodeClient(netd: NetdServer, redis: tuple[str, int], tmp_path: Path) -> None:  # noqa: F811
    """
    The Node client creates a proxy in front of redis, adds latency, limit_data, reset_peer and timeout toxics, disables, resets and populates, and a Node socket sees the delay, the cut answer, the reset, the silence and close, the refusal and the recovery.
    """
    node = requireTool("node")
    if not NODE_CLIENT.is_dir():
        unavailable(f"toxiproxy-node-client is not installed in {NODE_CLIENT.parent} (./setup.sh --test installs it)")
    script = tmp_path / "toxiproxy-node.js"
    script.write_text(NODE_SCRIPT)
    environment = {
        **os.environ,
        "NODE_CLIENT": str(NODE_CLIENT),
        "TOXIPROXY_URL": netd.toxiproxyURL,
        "REDIS_PORT": str(redis[1]),
    }
    run = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=NODE_TIMEOUT, env=environment)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert json.loads(result["version"])["version"]
    assert result["created"]["enabled"] is True and not result["created"]["listen"].endswith(":0")
    assert result["plain"]["how"] == "answered" and result["plain"]["ms"] < LATENCY_MS
    assert result["latencyToxic"]["attributes"] == {"latency": LATENCY_MS, "jitter": 0}
    assert result["latency"]["how"] == "answered" and result["latency"]["ms"] >= LATENCY_MS
    assert (result["limitData"]["how"], result["limitData"]["data"]) == ("closed", "+PO")
    assert (result["resetPeer"]["how"], result["resetPeer"]["data"]) == ("ECONNRESET", "")
    assert result["resetPeer"]["ms"] >= 90
    assert (result["timeout"]["how"], result["timeout"]["data"]) == ("closed", "")
    assert result["timeout"]["ms"] >= TIMEOUT_MS - 50
    assert result["fetched"]["attributes"] == {"timeout": TIMEOUT_MS}
    assert result["disabled"]["enabled"] is False
    assert result["whileDisabled"]["how"] == "ECONNREFUSED"
    assert result["reset"]["enabled"] is True
    assert result["afterReset"]["how"] == "answered" and result["afterReset"]["ms"] < LATENCY_MS
    assert result["populated"] == ["redis_node_populated"]
    assert result["populatedPing"]["how"] == "answered"
    assert result["all"] == ["redis_node", "redis_node_populated"]
    assert result["left"] == []


def documentedPython() -> str:
    """
    The Python example of docs/toxiproxy.md.
    """
    text = (ROOT / "docs" / "toxiproxy.md").read_text(encoding="utf-8")
    [block] = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    return block


def test_documentedPythonExampleRuns(netd: NetdServer, redis: tuple[str, int]) -> None:  # noqa: F811
    """
    The Python example of docs/toxiproxy.md runs as written against netd and a real redis-server, its addresses swapped for the test's.
    """
    address = urlsplit(netd.toxiproxyURL)
    example = documentedPython()
    for documented, actual in (
        ('"127.0.0.1", 8474', f'"{address.hostname}", {address.port}'),
        ("127.0.0.1:6379", f"127.0.0.1:{redis[1]}"),
        ("127.0.0.1:26379", "127.0.0.1:0"),
    ):
        assert documented in example
        example = example.replace(documented, actual)
    exec(compile(example, "docs/toxiproxy.md", "exec"), {})
