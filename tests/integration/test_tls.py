"""
TLS end to end: netd runs as a subprocess with tls-echo services on ports it
picks, serving certificates made by C{netd certs --out DIR --bad}, and real
clients talk to it: C{openssl s_client} (TLS 1.2 and 1.3, the refused TLS 1.0
and 1.1, SNI, ALPN, mutual TLS) and Python's ssl module (hostname
verification against the auto certificates and the deliberately bad ones,
echo in every framing, several MiB, garbage beside a working client, a stalled
handshake).
"""

from __future__ import annotations

import os
import re
import secrets
import select
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from netd.testing.harness import NetdServer, netdCommand
from netd.tls.devcerts import WRONG_HOST, KeyAndCertificate, issue

from .conftest import (
    IO_TIMEOUT,
    connect,
    recvExactly,
    recvUntilClosed,
    requireEmbeddedDefaultPorts,
    requireTool,
    unavailable,
    usesEmbeddedDefaultPorts,
)
from .processes import stopProcess

pytestmark = pytest.mark.integration

HANDSHAKE_TIMEOUT = 1.0
"""
The handshake_timeout of the service that tests it: short, so the test is quick.
"""

BAD_NAMES = ("expired", "not-yet-valid", "wrong-host", "self-signed", "unknown-ca")

BAD_ERRORS = {
    "expired": "certificate has expired",
    "not-yet-valid": "certificate is not yet valid",
    "wrong-host": "Hostname mismatch, certificate is not valid for 'localhost'.",
    "self-signed": "self-signed certificate",
    "unknown-ca": "unable to get local issuer certificate",
}
"""
The C{verify_message} of the C{ssl.SSLCertVerificationError} that Python
raises against each bad certificate (the errors `netd certs --bad` documents).
"""

# Golden wire bytes per framing (as in test_echo_service): what the client
# sends through TLS, and what the echo sends back, re-encoded frame by frame.
GOLDEN = {
    "raw": (b"hello\x00\xff world\r\n", b"hello\x00\xff world\r\n"),
    "line": (b"a\r\nb\n\nline three\n", b"a\nb\n\nline three\n"),
    "netstring": (b"5:hello,0:,3:\x00\n\xff,", b"5:hello,0:,3:\x00\n\xff,"),
    "u16": (b"\x00\x05hello\x00\x00\x00\x03\x00\n\xff", b"\x00\x05hello\x00\x00\x00\x03\x00\n\xff"),
    "u32": (b"\x00\x00\x00\x05hello\x00\x00\x00\x00", b"\x00\x00\x00\x05hello\x00\x00\x00\x00"),
}

BIG_FRAME = 8 * 2**20
"""
The max_frame of the u32 service that echoes one frame of several MiB.
"""


# Certificates.


@attrs.frozen
class Certs:
    """
    The certificate folders of the tests.

    @ivar dev: C{netd certs --out DIR --bad}: the development CA, server and
        client certificates, and C{bad/}.
    @ivar other: C{netd certs --out OTHER}: the same from another CA, which
        netd's services do not trust.
    """

    dev: Path
    other: Path

    def pair(self, name: str) -> dict[str, str]:
        """
        The C{certificate} and C{private_key} keys of a certificate of C{dev}
        (C{server}, C{bad/expired}, C{wild}, ...).
        """
        return {"certificate": str(self.dev / f"{name}.pem"), "private_key": str(self.dev / f"{name}-key.pem")}

    @property
    def ca(self) -> str:
        """
        The development CA, which clients trust.
        """
        return str(self.dev / "ca.pem")


def makeCertificates(directory: Path, *args: str) -> str:
    """
    Run C{netd certs --out DIRECTORY ARGS}; return what it printed.
    """
    done = subprocess.run(
        netdCommand("certs", "--out", str(directory), *args),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """
    The certificates made by C{netd certs} (with C{--bad}), another CA's set,
    and a wildcard certificate for C{*.wild.test} signed by the development CA
    (for SNI).
    """
    root = tmp_path_factory.mktemp("certs")
    dev, other = root / "dev", root / "other"
    printed = makeCertificates(dev, "--bad")
    assert f"Development CA:      {dev / 'ca.pem'}  (made now)" in printed
    for name in BAD_NAMES:
        assert str(dev / "bad" / f"{name}.pem") in printed
    makeCertificates(other)
    ca = KeyAndCertificate(
        x509.load_pem_x509_certificate((dev / "ca.pem").read_bytes()),
        serialization.load_pem_private_key((dev / "ca-key.pem").read_bytes(), password=None),  # type: ignore[arg-type]
    )
    issue(ca, ["*.wild.test"]).write(str(dev / "wild.pem"), str(dev / "wild-key.pem"))
    return Certs(dev, other)


# The daemon.


def tlsEcho(name: str, tls: dict[str, Any], **keys: Any) -> dict[str, Any]:
    """
    One tls-echo service on a port of 127.0.0.1 that netd picks.
    """
    return {"name": name, "plugin": "tls-echo", "listen": ["tcp:0:interface=127.0.0.1"], **keys, "tls": tls}


def servicesConfig(services: list[dict[str, Any]], **daemon: Any) -> str:
    """
    A config of these service tables, as TOML.
    """
    return tomli_w.dumps({"daemon": daemon, "services": services} if daemon else {"services": services})


@pytest.fixture(scope="module")
def netd(certs: Certs, startModuleNetd: Any) -> NetdServer:
    """
    One netd (debug logging) with a tls-echo service per feature under test:
    plain, every framing, ALPN, SNI, mutual TLS, old versions allowed,
    a short handshake timeout, the auto certificate, and each bad certificate.
    """
    server = certs.pair("server")
    services = [
        tlsEcho("basic", server, framing="line"),
        tlsEcho("old", {**server, "profile": "old"}, framing="line"),
        tlsEcho("alpn", {**server, "alpn": ["x-netd", "echo"]}, framing="line"),
        tlsEcho(
            "sni",
            {**server, "sni": {WRONG_HOST: certs.pair("bad/wrong-host"), "*.wild.test": certs.pair("wild")}},
            framing="line",
        ),
        tlsEcho("mtls", {**server, "client_ca": certs.ca, "client_auth": "required"}, framing="line"),
        tlsEcho(
            "allow-dns",
            {**server, "client_ca": certs.ca, "client_auth": "required", "client_allow": ["dns:client.netd.test"]},
            framing="line",
        ),
        tlsEcho(
            "allow-cn",
            {**server, "client_ca": certs.ca, "client_auth": "required", "client_allow": ["cn:netd client"]},
            framing="line",
        ),
        tlsEcho("slow", {**server, "handshake_timeout": HANDSHAKE_TIMEOUT}, framing="line"),
        tlsEcho("auto", {"certificate": "auto"}, framing="line"),
        tlsEcho("big", server, framing="u32", max_frame=BIG_FRAME),
        *(tlsEcho(f"framing-{framing}", server, framing=framing) for framing in GOLDEN),
        *(tlsEcho(f"bad-{name}", certs.pair(f"bad/{name}")) for name in BAD_NAMES),
    ]
    return startModuleNetd(servicesConfig(services, log_level="debug"))


def handshakeFailures(netd: NetdServer, service: str, reason: str) -> int:
    """
    How many handshakes of C{service} netd has logged as failed for C{reason}.
    """
    return len(re.findall(rf"\[{re.escape(service)}#info\] TLS handshake from .* failed: {reason} ", netd.log()))


def waitForFailure(netd: NetdServer, service: str, reason: str, before: int, timeout: float = IO_TIMEOUT) -> None:
    """
    Poll netd's log until a handshake of C{service} failed for C{reason} has
    been logged since there were C{before}.
    """
    deadline = time.monotonic() + timeout
    while handshakeFailures(netd, service, reason) <= before:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no new {reason!r} handshake failure of {service!r} logged within {timeout} s:\n{netd.log()[-4000:]}"
            )
        time.sleep(0.05)


# Clients.


def tlsConnect(address: tuple[str, int], caFile: str, serverName: str = "localhost") -> ssl.SSLSocket:
    """
    A TLS connection by Python's ssl module that verifies the chain against
    C{caFile} and the name C{serverName} (sent as SNI when it is a DNS name).
    """
    context = ssl.create_default_context(cafile=caFile)
    raw = socket.create_connection(address, timeout=IO_TIMEOUT)
    try:
        return context.wrap_socket(raw, server_hostname=serverName)
    except BaseException:
        raw.close()
        raise


def echoesLine(client: socket.socket, line: bytes = b"ping") -> None:
    """
    Assert that a line-framed echo sends C{line} back.
    """
    client.sendall(line + b"\n")
    assert recvExactly(client, len(line) + 1) == line + b"\n"


@attrs.frozen
class SClient:
    """
    What one run of C{openssl s_client} printed, and whether the marker it
    sent came back through TLS.
    """

    output: str
    echoed: bool
    exited: int | None
    """
    Its exit status if it ended by itself (a refused handshake), L{None} if it
    was stopped (after the echo, or at the deadline).
    """

    def field(self, label: str) -> str | None:
        """
        The value of a C{LABEL: VALUE} line of s_client's report.
        """
        found = re.search(rf"^\s*{re.escape(label)}\s*:\s*(.*)$", self.output, re.MULTILINE)
        return found.group(1).strip() if found else None

    @property
    def version(self) -> str | None:
        """
        The TLS version negotiated: the C{Protocol} of the session report (TLS
        1.2 and older; for TLS 1.3 it comes only with a session ticket), else
        the version of the C{New, VERSION, Cipher is ...} line.
        """
        found = re.search(r"^New, (TLSv[0-9.]+), Cipher is", self.output, re.MULTILINE)
        return self.field("Protocol") or (found.group(1) if found else None)


def sClient(address: tuple[str, int], *args: str, timeout: float = IO_TIMEOUT) -> SClient:
    """
    Run C{openssl s_client} against C{address} with C{args}, send a marker
    line through it, and wait (bounded) for the marker to come back or for
    s_client to end by itself; if it has not, stop it by its PID.
    """
    marker = f"netd-marker-{secrets.token_hex(6)}\n".encode()
    command = [requireTool("openssl"), "s_client", "-connect", f"{address[0]}:{address[1]}", "-ign_eof", *args]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdin is not None and process.stdout is not None
    output = bytearray()
    ended = False
    deadline = time.monotonic() + timeout
    try:
        try:
            process.stdin.write(marker)
            process.stdin.flush()
        except BrokenPipeError:
            # s_client ended before reading its input (an alert at once, say):
            # what it printed says why.
            pass
        while marker not in output:
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
    return SClient(output.decode(errors="replace"), marker in output, process.returncode if ended else None)


# openssl s_client: versions, SNI, ALPN, mutual TLS.


@pytest.mark.parametrize(("flag", "version"), [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_sClientVersions(netd: NetdServer, certs: Certs, flag: str, version: str) -> None:
    """
    openssl s_client limited to TLS 1.2 or to TLS 1.3 verifies netd's certificate for localhost, negotiates that version and gets its line echoed.
    """
    result = sClient(
        netd.address("basic"), flag, "-CAfile", certs.ca, "-verify_return_error", "-verify_hostname", "localhost"
    )
    assert result.echoed, result.output
    assert result.version == version, result.output
    assert result.field("Verification") == "OK", result.output
    assert result.field("Verified peername") == "localhost", result.output


@pytest.mark.parametrize(("flag", "version"), [("-tls1", "TLSv1"), ("-tls1_1", "TLSv1.1")])
def test_sClientOldVersionsRefused(netd: NetdServer, certs: Certs, flag: str, version: str) -> None:
    """
    openssl s_client limited to TLS 1.0 or 1.1 (at security level 0) is refused by the default min_version 1.2 and counted as a version failure, though a service allowing that version accepts the same client.
    """
    client = (flag, "-cipher", "DEFAULT@SECLEVEL=0", "-CAfile", certs.ca)
    control = sClient(netd.address("old"), *client)
    if not (control.echoed and control.version == version):
        reason = f"this openssl client cannot speak {version} even at SECLEVEL=0:\n{control.output}"
        unavailable(reason)
    before = handshakeFailures(netd, "basic", "version")
    refused = sClient(netd.address("basic"), *client)
    assert not refused.echoed and refused.exited not in (None, 0), refused.output
    assert "alert protocol version" in refused.output, refused.output
    waitForFailure(netd, "basic", "version", before)


@pytest.mark.parametrize(
    ("args", "subject", "verifyName"),
    [
        pytest.param(["-servername", WRONG_HOST], f"CN = {WRONG_HOST}", WRONG_HOST, id="exact-name"),
        pytest.param(["-servername", "a.wild.test"], "CN = *.wild.test", "a.wild.test", id="wildcard"),
        pytest.param(["-servername", "A.WILD.TEST"], "CN = *.wild.test", "a.wild.test", id="wildcard-any-case"),
        pytest.param(["-servername", "other.test"], "CN = localhost", "localhost", id="unknown-name"),
        pytest.param(["-noservername"], "CN = localhost", "localhost", id="no-sni"),
    ],
)
def test_sClientSNI(netd: NetdServer, certs: Certs, args: list[str], subject: str, verifyName: str) -> None:
    """
    The name openssl s_client sends as SNI picks the certificate of the sni table (exact or wildcard), and the default one for no or an unknown name; each verifies for its name.
    """
    result = sClient(
        netd.address("sni"), *args, "-CAfile", certs.ca, "-verify_return_error", "-verify_hostname", verifyName
    )
    assert result.echoed, result.output
    assert re.search(rf"^subject={re.escape(subject)}$", result.output, re.MULTILINE), result.output
    assert result.field("Verification") == "OK", result.output


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        pytest.param("x-netd", "x-netd", id="one"),
        pytest.param("h2,echo", "echo", id="one-of-several"),
        pytest.param("echo,x-netd", "x-netd", id="server-preference"),
        pytest.param(None, None, id="none-offered"),
    ],
)
def test_sClientALPN(netd: NetdServer, certs: Certs, offered: str | None, expected: str | None) -> None:
    """
    With alpn = ["x-netd", "echo"] netd picks its most preferred protocol that openssl s_client offers, and none when the client offers none.
    """
    result = sClient(
        netd.address("alpn"), *(["-alpn", offered] if offered else []), "-CAfile", certs.ca, "-verify_return_error"
    )
    assert result.echoed, result.output
    if expected is None:
        assert "No ALPN negotiated" in result.output, result.output
    else:
        assert result.field("ALPN protocol") == expected, result.output


def test_sClientALPNMismatchRefused(netd: NetdServer, certs: Certs) -> None:
    """
    An openssl s_client offering only protocols netd does not serve is refused with no_application_protocol and counted as alpn_mismatch.
    """
    before = handshakeFailures(netd, "alpn", "alpn_mismatch")
    result = sClient(netd.address("alpn"), "-alpn", "h2,http/1.1", "-CAfile", certs.ca)
    assert not result.echoed and result.exited not in (None, 0), result.output
    assert "no application protocol" in result.output, result.output
    waitForFailure(netd, "alpn", "alpn_mismatch", before)


@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_sClientMutualTLS(netd: NetdServer, certs: Certs, flag: str) -> None:
    """
    With client_auth = "required", openssl s_client with the development client certificate is echoed and logged with its subject; without one, or with one from another CA, it is refused and counted by reason.
    """
    address = netd.address("mtls")
    common = (flag, "-CAfile", certs.ca, "-verify_return_error")
    accepted = sClient(
        address, *common, "-cert", str(certs.dev / "client.pem"), "-key", str(certs.dev / "client-key.pem")
    )
    assert accepted.echoed, accepted.output
    assert "client CN=netd client" in netd.log()

    before = handshakeFailures(netd, "mtls", "client_cert_missing")
    missing = sClient(address, *common)
    assert not missing.echoed and missing.exited not in (None, 0), missing.output
    assert re.search(r"alert (certificate required|handshake failure)", missing.output), missing.output
    waitForFailure(netd, "mtls", "client_cert_missing", before)

    before = handshakeFailures(netd, "mtls", "client_cert_untrusted")
    untrusted = sClient(
        address, *common, "-cert", str(certs.other / "client.pem"), "-key", str(certs.other / "client-key.pem")
    )
    assert not untrusted.echoed and untrusted.exited not in (None, 0), untrusted.output
    assert "alert unknown ca" in untrusted.output, untrusted.output
    waitForFailure(netd, "mtls", "client_cert_untrusted", before)
    assert re.search(
        r"\[mtls#info\] TLS handshake from .* failed: client_cert_untrusted \(unable to get local issuer certificate",
        netd.log(),
    )


def test_sClientClientAllow(netd: NetdServer, certs: Certs) -> None:
    """
    openssl s_client with the development client certificate (CN "netd client", SAN DNS client.netd.test) passes client_allow = ["dns:client.netd.test"], and is refused by ["cn:netd client"]: its CN does not count beside its SAN (RFC 6125).
    """
    client = (
        "-CAfile",
        certs.ca,
        "-verify_return_error",
        "-cert",
        str(certs.dev / "client.pem"),
        "-key",
        str(certs.dev / "client-key.pem"),
    )
    accepted = sClient(netd.address("allow-dns"), *client)
    assert accepted.echoed, accepted.output
    before = handshakeFailures(netd, "allow-cn", "client_not_allowed")
    refused = sClient(netd.address("allow-cn"), *client)
    assert not refused.echoed, refused.output
    waitForFailure(netd, "allow-cn", "client_not_allowed", before)
    assert "(names dns:client.netd.test) carries no name of client_allow" in netd.log()


def test_readableKeyWarned(certs: Certs, startNetd: Any, tmp_path: Path) -> None:
    """
    A real netd whose private key file everyone may read logs one warning at start naming the file and its mode, and serves; netd check prints the same warning.
    """
    key = tmp_path / "server-key.pem"
    key.write_bytes((certs.dev / "server-key.pem").read_bytes())
    key.chmod(0o644)
    config = servicesConfig(
        [tlsEcho("readable", {"certificate": str(certs.dev / "server.pem"), "private_key": str(key)}, framing="line")]
    )
    netd = startNetd(config)
    warning = f"tls.private_key {key} is readable by its group or by everyone (mode 0644)"
    assert netd.log().count(warning) == 1, netd.log()
    with tlsConnect(netd.address("readable"), certs.ca) as client:
        echoesLine(client)
    configFile = tmp_path / "check.toml"
    configFile.write_text(config)
    done = subprocess.run(
        netdCommand("check", "-c", str(configFile)),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0 and warning in done.stderr, done.stderr


# Python's ssl module: hostname verification and the bad certificates.


@pytest.mark.parametrize("serverName", ["localhost", "127.0.0.1"])
def test_pythonVerifiesAutoCertificate(netd: NetdServer, serverName: str) -> None:
    """
    Python's ssl module trusting the CA that certificate = "auto" made in the state directory verifies the chain and the name (localhost or 127.0.0.1), and is echoed.
    """
    assert netd.stateDir is not None
    ca = netd.stateDir / "tls" / "ca.pem"
    assert f"clients trust it with the CA {ca}" in netd.log()
    with tlsConnect(netd.address("auto"), str(ca), serverName) as client:
        assert client.version() in ("TLSv1.2", "TLSv1.3")
        echoesLine(client, b"verified " + serverName.encode())


def test_pythonRefusesOtherName(netd: NetdServer) -> None:
    """
    Python's ssl module refuses the auto certificate for a name it does not carry, with a hostname mismatch.
    """
    assert netd.stateDir is not None
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        tlsConnect(netd.address("auto"), str(netd.stateDir / "tls" / "ca.pem"), "not-localhost.test")
    assert info.value.verify_message == "Hostname mismatch, certificate is not valid for 'not-localhost.test'."


@pytest.mark.parametrize("name", BAD_NAMES)
def test_pythonRefusesBadCertificate(netd: NetdServer, certs: Certs, name: str) -> None:
    """
    Python's ssl module, trusting the development CA and connecting to localhost, refuses each bad certificate with the error netd certs documents, and netd counts the rejection.
    """
    service = f"bad-{name}"
    before = handshakeFailures(netd, service, "certificate_rejected")
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        tlsConnect(netd.address(service), certs.ca)
    assert info.value.verify_message == BAD_ERRORS[name]
    waitForFailure(netd, service, "certificate_rejected", before)


def test_badCertificatesServedAsIs(netd: NetdServer, certs: Certs) -> None:
    """
    A client that checks nothing gets each bad certificate exactly as netd certs wrote it, and is echoed through it.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for name in BAD_NAMES:
        expected = x509.load_pem_x509_certificate((certs.dev / "bad" / f"{name}.pem").read_bytes())
        with context.wrap_socket(socket.create_connection(netd.address(f"bad-{name}"), timeout=IO_TIMEOUT)) as client:
            served = client.getpeercert(binary_form=True)
            assert served == expected.public_bytes(serialization.Encoding.DER), name
            client.sendall(b"raw through " + name.encode())
            assert recvExactly(client, 12 + len(name)) == b"raw through " + name.encode()


# Echo through TLS.


@pytest.mark.parametrize("framing", sorted(GOLDEN))
def test_echoEveryFraming(netd: NetdServer, certs: Certs, framing: str) -> None:
    """
    Through TLS, each framing's golden bytes come back as its golden echo bytes, whether sent at once or one byte per TLS record.
    """
    sent, expected = GOLDEN[framing]
    with tlsConnect(netd.address(f"framing-{framing}"), certs.ca) as client:
        client.sendall(sent)
        assert recvExactly(client, len(expected)) == expected
        for i in range(len(sent)):
            client.sendall(sent[i : i + 1])
        assert recvExactly(client, len(expected)) == expected


def exchange(client: ssl.SSLSocket, payload: bytes, timeout: float = 60.0) -> bytes:
    """
    Send C{payload} while reading the echo, in one thread (an SSL socket must
    not be used by two threads at once), until as many bytes came back as were
    sent; bounded by C{timeout}.  Writing everything before reading would stall:
    netd stops reading from a client that does not read its answers.
    """
    client.setblocking(False)
    sent = 0
    received = bytearray()
    deadline = time.monotonic() + timeout
    while len(received) < len(payload):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"sent {sent} and got back {len(received)} of {len(payload)} bytes in {timeout} s")
        writing = [client] if sent < len(payload) else []
        readable, writable, _ = select.select([client], writing, [], min(remaining, 1.0))
        if writable:
            try:
                sent += client.send(payload[sent : sent + 65536])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass
        if readable or client.pending():
            for _ in range(64):  # drain what is there, boundedly
                try:
                    chunk = client.recv(262144)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                if not chunk:
                    raise AssertionError(f"netd closed the connection after {len(received)} of {len(payload)} bytes")
                received += chunk
    client.setblocking(True)
    return bytes(received)


@pytest.mark.parametrize(
    ("service", "size"),
    [pytest.param("framing-raw", 6 * 2**20, id="raw-6MiB"), pytest.param("big", 5 * 2**20, id="u32-one-5MiB-frame")],
)
def test_severalMiBThroughTLS(netd: NetdServer, certs: Certs, service: str, size: int) -> None:
    """
    Several MiB through TLS come back whole and in order: a raw stream, and a single u32 frame (with a max_frame to allow it).
    """
    data = os.urandom(size)
    payload = data if service == "framing-raw" else len(data).to_bytes(4, "big") + data
    with tlsConnect(netd.address(service), certs.ca) as client:
        received = exchange(client, payload)
    assert received == payload


# Bad input beside good clients.


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", id="http"),
        pytest.param(b"hello in the clear\n", id="plain-text"),
        pytest.param(bytes(range(256)) * 8, id="garbage"),
    ],
)
def test_notTLSClosedOthersServed(netd: NetdServer, certs: Certs, data: bytes) -> None:
    """
    Plain HTTP, plain text or garbage sent to a TLS port is closed without an echo and counted as not_tls, while a TLS client connected before keeps being echoed.
    """
    address = netd.address("basic")
    with tlsConnect(address, certs.ca) as good:
        echoesLine(good, b"before")
        before = handshakeFailures(netd, "basic", "not_tls")
        with connect(address) as bad:
            bad.sendall(data)
            answer = recvUntilClosed(bad, timeout=5)
        assert data not in answer and b"HTTP/" not in answer
        waitForFailure(netd, "basic", "not_tls", before)
        echoesLine(good, b"after")
    with tlsConnect(address, certs.ca) as fresh:
        echoesLine(fresh, b"a new client")


def clientHello() -> bytes:
    """
    The first flight of a TLS client (its ClientHello record), made by Python's ssl in memory.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize(
    "sent",
    [pytest.param(b"", id="silent"), pytest.param(None, id="half-a-client-hello")],
)
def test_stalledHandshakeCut(netd: NetdServer, certs: Certs, sent: bytes | None) -> None:
    """
    A client that stalls its handshake (sending nothing, or half a ClientHello) is disconnected after handshake_timeout and counted as timeout, while a TLS client beside it is echoed.
    """
    address = netd.address("slow")
    data = clientHello()[:40] if sent is None else sent
    before = handshakeFailures(netd, "slow", "timeout")
    with connect(address) as stalled:
        opened = time.monotonic()
        if data:
            stalled.sendall(data)
        with tlsConnect(address, certs.ca) as good:
            echoesLine(good, b"not stalled")
        answer = recvUntilClosed(stalled, timeout=HANDSHAKE_TIMEOUT + 5)
        elapsed = time.monotonic() - opened
    assert HANDSHAKE_TIMEOUT * 0.8 <= elapsed < HANDSHAKE_TIMEOUT + 4, elapsed
    assert answer == b""
    waitForFailure(netd, "slow", "timeout", before)


# The embedded default config.


@usesEmbeddedDefaultPorts
def test_embeddedDefaultServesTLSEcho(startNetd: Any) -> None:
    """
    netd run without -c serves tls-echo on 127.0.0.1:7443 with a development certificate made in the state directory, whose CA netd certs then reports and a verifying client trusts.
    """
    requireEmbeddedDefaultPorts()
    netd = startNetd(None)
    assert netd.address("tls-echo") == ("127.0.0.1", 7443)
    assert netd.stateDir is not None
    ca = netd.stateDir / "tls" / "ca.pem"
    with tlsConnect(("127.0.0.1", 7443), str(ca), "127.0.0.1") as client:
        client.sendall(b"default tls")
        assert recvExactly(client, 11) == b"default tls"
    result = sClient(("127.0.0.1", 7443), "-CAfile", str(ca), "-verify_return_error")
    assert result.echoed and result.field("Verification") == "OK", result.output
    environment = {key: value for key, value in os.environ.items() if key != "STATE_DIRECTORY"}
    environment["XDG_STATE_HOME"] = str(netd.stateDir.parent)
    printed = subprocess.run(
        netdCommand("certs"), capture_output=True, text=True, timeout=60, env=environment, stdin=subprocess.DEVNULL
    )
    assert printed.returncode == 0, printed.stderr
    assert f"Development CA:      {ca}  (reused)" in printed.stdout
    assert netd.stop(signal.SIGTERM, timeout=15) == 0
