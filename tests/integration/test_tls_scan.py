"""
The TLS versions, cipher suites and key-exchange groups a real netd offers, as
a real scanner sees them: C{sslscan --xml=-} against tls-echo services serving
an ECDSA certificate (C{netd certs}) and an RSA one (C{netd certs --key-type
rsa}), with the default profile ("intermediate"), "modern", "old" and a
C{ciphers} override.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from typing import Any

import attrs
import pytest
import tomli_w

from netd.testing.harness import NetdServer, netdCommand
from netd.tls.options import PROFILES

from .conftest import requireTool

pytestmark = pytest.mark.integration

SCAN_TIMEOUT = 120.0

TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}

INTERMEDIATE_ECDSA = {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"}
INTERMEDIATE_RSA = {"ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"}
"""
Mozilla's intermediate TLS 1.2 suites (guidelines 5.7) that each kind of
certificate can serve, without the DHE ones (netd sets no DH parameters).
"""

GROUPS = {"x25519", "secp256r1", "secp384r1"}
"""
The classical key-exchange groups of Mozilla's profiles, as sslscan names them
(it does not know the post-quantum hybrid X25519MLKEM768 netd also offers).
"""


@attrs.frozen
class Scan:
    """
    What sslscan found: the versions enabled, the suites accepted and the
    groups accepted, per version (C{"TLSv1.2"}).
    """

    versions: frozenset[str]
    suites: dict[str, set[str]]
    groups: dict[str, set[str]]


def sslscan(address: tuple[str, int]) -> Scan:
    """
    Run sslscan against C{address} and read its XML report.
    """
    done = subprocess.run(
        [requireTool("sslscan"), "--no-colour", "--xml=-", f"{address[0]}:{address[1]}"],
        capture_output=True,
        timeout=SCAN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    report = done.stdout[done.stdout.index(b"<?xml") :]
    test = ElementTree.fromstring(report).find("ssltest")
    assert test is not None, report
    versions = frozenset(
        f"TLSv{p.get('version')}" for p in test.iter("protocol") if p.get("type") == "tls" and p.get("enabled") == "1"
    )
    assert not [p for p in test.iter("protocol") if p.get("type") == "ssl" and p.get("enabled") == "1"], report
    suites: dict[str, set[str]] = defaultdict(set)
    for cipher in test.iter("cipher"):
        suites[str(cipher.get("sslversion"))].add(str(cipher.get("cipher")))
    groups: dict[str, set[str]] = defaultdict(set)
    for group in test.iter("group"):
        groups[str(group.get("sslversion"))].add(str(group.get("name")).split(" ")[0])
    return Scan(versions, suites, groups)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """
    An ECDSA and an RSA server certificate, each with its key, made by C{netd certs}.
    """
    root = tmp_path_factory.mktemp("scan-certs")
    pairs = {}
    for kind in ("ecdsa", "rsa"):
        directory = root / kind
        done = subprocess.run(
            netdCommand("certs", "--out", str(directory), "--key-type", kind),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stderr
        pairs[kind] = {"certificate": str(directory / "server.pem"), "private_key": str(directory / "server-key.pem")}
    return pairs


@pytest.fixture(scope="module")
def netd(certificates: dict[str, dict[str, str]], startModuleNetd: Any) -> NetdServer:
    """
    One netd with a tls-echo service per certificate and profile under scan.
    """
    requireTool("sslscan")

    def service(name: str, tls: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "plugin": "tls-echo", "listen": ["tcp:0:interface=127.0.0.1"], "tls": tls}

    ecdsa, rsa = certificates["ecdsa"], certificates["rsa"]
    services = [
        service("ecdsa", ecdsa),
        service("rsa", rsa),
        service("ecdsa-modern", {**ecdsa, "profile": "modern"}),
        service("rsa-modern", {**rsa, "profile": "modern"}),
        service("rsa-old", {**rsa, "profile": "old"}),
        service("rsa-ciphers", {**rsa, "ciphers": "ECDHE-RSA-AES256-GCM-SHA384"}),
    ]
    return startModuleNetd(tomli_w.dumps({"services": services}))


@pytest.mark.parametrize(("service", "tls12"), [("ecdsa", INTERMEDIATE_ECDSA), ("rsa", INTERMEDIATE_RSA)])
def test_defaultProfileIsIntermediate(netd: NetdServer, service: str, tls12: set[str]) -> None:
    """
    By default a service offers TLS 1.2 and 1.3 only, with exactly Mozilla's intermediate suites for its certificate's key (ECDHE with AES-GCM or ChaCha20-Poly1305; no static RSA, no CBC) and exactly the groups X25519, P-256 and P-384.
    """
    scan = sslscan(netd.address(service))
    assert scan.versions == {"TLSv1.2", "TLSv1.3"}
    assert scan.suites == {"TLSv1.3": TLS13_SUITES, "TLSv1.2": tls12}
    assert scan.groups["TLSv1.3"] == GROUPS
    # TLS 1.2 with an ECDSA P-256 certificate: OpenSSL accepts only the groups
    # the certificate's curve is among, which sslscan offers one at a time.
    assert scan.groups["TLSv1.2"] == (GROUPS if service == "rsa" else {"secp256r1"})


@pytest.mark.parametrize("service", ["ecdsa-modern", "rsa-modern"])
def test_modernProfileIsTLS13Only(netd: NetdServer, service: str) -> None:
    """
    profile = "modern" offers TLS 1.3 alone, with its three suites and the three groups.
    """
    scan = sslscan(netd.address(service))
    assert scan.versions == {"TLSv1.3"}
    assert scan.suites == {"TLSv1.3": TLS13_SUITES}
    assert set(scan.groups) == {"TLSv1.3"} and scan.groups["TLSv1.3"] == GROUPS


def test_oldProfile(netd: NetdServer) -> None:
    """
    profile = "old" offers TLS 1.0 to 1.3, and with an RSA certificate its CBC and static-RSA suites too, none outside Mozilla's old list.
    """
    scan = sslscan(netd.address("rsa-old"))
    assert {"TLSv1.0", "TLSv1.2", "TLSv1.3"} <= scan.versions
    old = set(PROFILES["old"].ciphers.split(":"))
    assert (
        INTERMEDIATE_RSA | {"ECDHE-RSA-AES128-SHA", "AES128-SHA", "AES256-GCM-SHA384"} <= scan.suites["TLSv1.2"] <= old
    )
    assert scan.suites["TLSv1.3"] == TLS13_SUITES


def test_ciphersOverrideTheProfile(netd: NetdServer) -> None:
    """
    ciphers replaces the profile's TLS 1.2 suites; TLS 1.3 keeps its own.
    """
    scan = sslscan(netd.address("rsa-ciphers"))
    assert scan.suites == {"TLSv1.3": TLS13_SUITES, "TLSv1.2": {"ECDHE-RSA-AES256-GCM-SHA384"}}
