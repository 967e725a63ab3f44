"""
TLS on both sides of the proxy: netd runs as a subprocess, terminating TLS
from C{openssl s_client} with its C{tls} table and originating TLS with
C{upstream_tls} to a real C{openssl s_server} that requires a client
certificate (C{-Verify 1}) and answers each line reversed (C{-rev}).  The
certificates are two development sets of L{netd.tls.devcerts}: one trusted
everywhere, one of a CA nobody trusts.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import tomli_w

from netd.testing.harness import NetdServer
from netd.tls.devcerts import DevelopmentSet, ensureDevelopmentSet

from .conftest import IO_TIMEOUT, requireTool
from .processes import stopProcess

pytestmark = pytest.mark.integration

UPSTREAM_ALPN = "x-upstream"


@attrs.frozen
class Certs:
    """
    The development set (CA, localhost server, client) and another CA's set.
    """

    dev: DevelopmentSet
    other: DevelopmentSet


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """
    Two development sets of two CAs.
    """
    root = tmp_path_factory.mktemp("certs")
    dev, _ = ensureDevelopmentSet(str(root / "dev"))
    other, _ = ensureDevelopmentSet(str(root / "other"))
    return Certs(dev, other)


@attrs.define
class SServer:
    """
    A running C{openssl s_server} and what it has printed so far.
    """

    process: subprocess.Popen[bytes]
    port: int
    output: bytearray = attrs.field(factory=bytearray)

    def read(self, timeout: float = 0.0) -> str:
        """
        Everything it printed so far, waiting up to C{timeout} seconds for more.
        """
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.process.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                break
            self.output += chunk
        return self.output.decode(errors="replace")

    def stop(self, timeout: float = IO_TIMEOUT) -> str:
        """
        Wait up to C{timeout} seconds for it to end by itself (C{-naccept}),
        then stop it by its PID; everything it printed.
        """
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stopProcess(self.process)
        printed = self.read()
        assert self.process.stdout is not None
        self.process.stdout.close()
        return printed

    def waitFor(self, pattern: str, since: int, timeout: float = IO_TIMEOUT) -> str:
        """
        What it printed after offset C{since}, once that matches C{pattern}.
        """
        deadline = time.monotonic() + timeout
        while True:
            text = self.read(0.05)[since:]
            if re.search(pattern, text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"s_server did not print {pattern!r} within {timeout} s; it printed:\n{text}")


def startSServer(certs: Certs, *extra: str) -> SServer:
    """
    C{openssl s_server} on a port of 127.0.0.1 it picks: the development
    server certificate, a client certificate of the development CA required,
    ALPN C{x-upstream}, the client's extensions (SNI) printed, each line answered
    reversed, with C{extra} arguments.
    """
    dev = certs.dev
    command = [
        requireTool("openssl"), "s_server", "-accept", "127.0.0.1:0", "-rev",
        "-cert", dev.server, "-key", dev.serverKey, "-CAfile", dev.ca, "-Verify", "1",
        "-alpn", UPSTREAM_ALPN, "-tlsextdebug", *extra,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    server = SServer(process, 0)
    try:
        found = re.search(r"ACCEPT \S+:(\d+)", server.waitFor(r"ACCEPT \S+:\d+", 0))
    except BaseException:
        server.stop()
        raise
    assert found is not None
    server.port = int(found.group(1))
    return server


@pytest.fixture(scope="module")
def upstream(certs: Certs) -> Iterator[SServer]:
    """
    The s_server of the module's services (L{startSServer}), stopped by its PID after the module.
    """
    server = startSServer(certs)
    try:
        yield server
    finally:
        server.stop(timeout=0)


def proxyService(
    name: str, upstream: SServer, certs: Certs, upstreamTLS: dict[str, Any], **keys: Any
) -> dict[str, Any]:
    """
    A proxy service terminating TLS (the development server certificate) and
    originating it to C{upstream} with C{upstreamTLS}.
    """
    return {
        "name": name,
        "plugin": "proxy",
        "listen": ["tcp:0:interface=127.0.0.1"],
        "upstream": f"tcp:127.0.0.1:{upstream.port}",
        "tls": {"certificate": certs.dev.server, "private_key": certs.dev.serverKey},
        "upstream_tls": upstreamTLS,
        **keys,
    }


@pytest.fixture(scope="module")
def netd(certs: Certs, upstream: SServer, startModuleNetd: Any) -> Iterator[NetdServer]:
    """
    One netd with a TLS proxy to the module's s_server per case: the wrong CA, no client certificate (TLS 1.2 and 1.3), and a tls_abort
    fault on the client-facing handshake; after the module, its log shows no
    unhandled error.
    """
    dev = certs.dev
    trusted = {"ca_bundle": dev.ca, "server_name": "localhost"}
    client = {"certificate": dev.client, "private_key": dev.clientKey}
    services = [
        proxyService("wrong-ca", upstream, certs, {**client, "ca_bundle": certs.other.ca}),
        proxyService("no-cert-12", upstream, certs, {**trusted, "max_version": "1.2"}, on_upstream_failure="reset"),
        proxyService("no-cert-13", upstream, certs, {**trusted, "min_version": "1.3"}),
        proxyService(
            "tls-abort",
            upstream,
            certs,
            {**trusted, **client},
            faults=[{"type": "tls_abort", "alert": "protocol_version"}],
        ),
    ]
    server: NetdServer = startModuleNetd(tomli_w.dumps({"services": services}))
    yield server
    # Clients killed mid-connection (s_client stopped by its PID) end as a TCP EOF under TLS.
    assert "Unhandled Error" not in server.log(), server.log()[-4000:]


@attrs.frozen
class SClient:
    """
    What one run of C{openssl s_client} printed, whether the answer it
    waited for came, and whether it ended by itself (netd closed it) rather
    than being stopped.
    """

    output: str
    answered: bool
    ended: bool


def sClient(address: tuple[str, int], certs: Certs, line: bytes, answer: bytes) -> SClient:
    """
    Run C{openssl s_client} to netd (verifying its certificate for
    localhost), send C{line}, and wait (bounded) for C{answer} or for
    s_client to end by itself; stop it by its PID if it has not.
    """
    command = [
        requireTool("openssl"), "s_client", "-connect", f"{address[0]}:{address[1]}", "-ign_eof",
        "-servername", "localhost", "-CAfile", certs.dev.ca, "-verify_return_error",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdin is not None and process.stdout is not None
    output = bytearray()
    deadline = time.monotonic() + IO_TIMEOUT
    ended = False
    try:
        try:
            process.stdin.write(line)
            process.stdin.flush()
        except BrokenPipeError:
            pass
        while answer not in output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([process.stdout], [], [], remaining)
            if ready:
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    ended = True
                    break
                output += chunk
    finally:
        stopProcess(process)
        try:
            process.stdin.close()
        except BrokenPipeError:
            pass
        process.stdout.close()
    return SClient(output.decode(errors="replace"), answer in output, ended)


def counters(netd: NetdServer, service: str) -> dict[str, Any]:
    """
    A service's counters, from the control API.
    """
    report: dict[str, Any] = netd.admin.service(service)["counters"]
    return report


def waitForCounter(netd: NetdServer, service: str, name: str, atLeast: int) -> dict[str, Any]:
    """
    Poll a service's counters until C{name} reaches C{atLeast}; return them.
    """
    deadline = time.monotonic() + IO_TIMEOUT
    while True:
        found = counters(netd, service)
        if found.get(name, 0) >= atLeast:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{service}'s {name} did not reach {atLeast}: {found}\n{netd.log()[-3000:]}")
        time.sleep(0.05)


def test_bothSidesTLSWithClientCertificateSNIAndALPN(netd: NetdServer, certs: Certs) -> None:
    """
    s_client verifies netd's certificate, its line reaches the s_server through netd's own TLS with the client certificate, SNI and ALPN offered, and the answer comes back.
    """
    upstream = startSServer(certs, "-naccept", "1")  # it prints the ALPN report as it ends
    try:
        dev = certs.dev
        upstreamTLS = {
            "ca_bundle": dev.ca,
            "server_name": "localhost",
            "certificate": dev.client,
            "private_key": dev.clientKey,
            "alpn": [UPSTREAM_ALPN, "http/1.1"],
        }
        [bound] = netd.admin.addService(proxyService("both", upstream, certs, upstreamTLS))["addresses"]
        result = sClient((bound["host"], bound["port"]), certs, b"through both tls\n", b"slt htob hguorht\n")
        assert result.answered, result.output
        assert "Verify return code: 0 (ok)" in result.output
        netd.admin.removeService("both")
    finally:
        printed = upstream.stop()
    assert re.search(r'TLS client extension "server name" \(id=0\), len=14\n0000 - .*\.localhost\n', printed), printed
    assert "Peer certificate: CN = netd client" in printed
    assert f"ALPN protocols advertised by the client: {UPSTREAM_ALPN}, http/1.1" in printed
    assert f"ALPN protocols selected: {UPSTREAM_ALPN}" in printed


def test_wrongCAIsAnUpstreamFailure(netd: NetdServer, certs: Certs) -> None:
    """
    An upstream whose certificate does not chain to upstream_tls.ca_bundle gets nothing: the client is closed, the failure counted and logged with OpenSSL's reason.
    """
    before = counters(netd, "wrong-ca")
    result = sClient(netd.address("wrong-ca"), certs, b"secret\n", b"terces\n")
    assert not result.answered and result.ended
    assert "Verify return code: 0 (ok)" in result.output  # netd's own side was fine
    after = waitForCounter(netd, "wrong-ca", "upstream_tls_failures", before.get("upstream_tls_failures", 0) + 1)
    assert after["upstream_connect_failures"] == before.get("upstream_connect_failures", 0) + 1
    assert after.get("upstream_connects", 0) == before.get("upstream_connects", 0)
    assert "TLS handshake failed: certificate verify failed" in netd.log()


@pytest.mark.parametrize("service", ["no-cert-12", "no-cert-13"])
def test_noClientCertificateRefusedAndCounted(netd: NetdServer, upstream: SServer, certs: Certs, service: str) -> None:
    """
    Without a client certificate the s_server refuses netd (in the handshake with TLS 1.2, just after it with TLS 1.3): the client is closed without an answer, and the refusal is counted as an upstream TLS failure.
    """
    before = counters(netd, service)
    since = len(upstream.read())
    result = sClient(netd.address(service), certs, b"no certificate\n", b"etacifitrec on\n")
    assert not result.answered and result.ended
    after = waitForCounter(netd, service, "upstream_tls_failures", before.get("upstream_tls_failures", 0) + 1)
    upstream.waitFor(r"(?i)peer did not return a certificate|certificate required|no certificate", since)
    if service == "no-cert-12":
        assert after["upstream_connect_failures"] == before.get("upstream_connect_failures", 0) + 1


def test_tlsFaultOnTheClientFacingHandshake(netd: NetdServer, certs: Certs) -> None:
    """
    A tls_abort fault acts on the handshake netd terminates: s_client sees the protocol_version alert, and no upstream connection is made.
    """
    result = sClient(netd.address("tls-abort"), certs, b"hello\n", b"olleh\n")
    assert not result.answered and result.ended
    assert "alert protocol version" in result.output, result.output
    assert counters(netd, "tls-abort").get("upstream_connects", 0) == 0
