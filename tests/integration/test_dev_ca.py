"""
The development CA's name constraints, checked by a real client: OpenSSL
(C{openssl verify}, and C{openssl s_client} against netd serving the
certificate) refuses a certificate the development CA signed for a name
outside localhost, .test, .invalid, 127.0.0.0/8 and ::1, and accepts every
certificate of the development set.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from netd.tls.devcerts import KeyAndCertificate, ensureDevelopmentSet, issue, writeBadCertificates

from .conftest import IO_TIMEOUT, requireTool

pytestmark = pytest.mark.integration


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    """
    Run openssl with C{args}; its output and status.
    """
    return subprocess.run(
        [requireTool("openssl"), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=IO_TIMEOUT
    )


def developmentCA(directory: Path) -> KeyAndCertificate:
    """
    The development set of C{directory} (made now) and its CA with its key.
    """
    files, _ = ensureDevelopmentSet(str(directory))
    return KeyAndCertificate(
        x509.load_pem_x509_certificate(Path(files.ca).read_bytes()),
        serialization.load_pem_private_key(Path(files.caKey).read_bytes(), password=None),  # type: ignore[arg-type]
    )


def test_opensslVerifiesTheSetAndRefusesOtherNames(tmp_path: Path) -> None:
    """
    openssl verify accepts the development server and client certificates and the wrong-host bad one (its name is .invalid), and refuses a certificate the development CA signed for example.com with "permitted subtree violation".
    """
    ca = developmentCA(tmp_path)
    writeBadCertificates(str(tmp_path))
    caFile = str(tmp_path / "ca.pem")
    for name in ("server.pem", "client.pem", "bad/wrong-host.pem"):
        result = openssl("verify", "-CAfile", caFile, str(tmp_path / name))
        assert result.returncode == 0, result.stdout + result.stderr
    issue(ca, ["example.com"]).write(str(tmp_path / "example.pem"), str(tmp_path / "example-key.pem"))
    result = openssl("verify", "-CAfile", caFile, str(tmp_path / "example.pem"))
    assert result.returncode != 0
    assert "permitted subtree violation" in result.stdout + result.stderr


def test_sClientRefusesNetdServingAnOutsideName(tmp_path: Path, startNetd: Any) -> None:
    """
    netd serving a certificate the development CA signed for example.com is refused by openssl s_client trusting that CA (permitted subtree violation), while the same CA's localhost certificate is accepted.
    """
    ca = developmentCA(tmp_path / "tls")
    issue(ca, ["example.com"]).write(str(tmp_path / "example.pem"), str(tmp_path / "example-key.pem"))
    config = ""
    for name, certificate, key in (
        ("outside", tmp_path / "example.pem", tmp_path / "example-key.pem"),
        ("inside", tmp_path / "tls" / "server.pem", tmp_path / "tls" / "server-key.pem"),
    ):
        config += (
            f'[[services]]\nname = "{name}"\nplugin = "echo"\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
            f'tls = {{ certificate = "{certificate}", private_key = "{key}" }}\n\n'
        )
    netd = startNetd(config)
    for service, serverName, expected in (("outside", "example.com", 1), ("inside", "localhost", 0)):
        host, port = netd.address(service)
        result = openssl(
            "s_client",
            "-connect",
            f"{host}:{port}",
            "-servername",
            serverName,
            "-verify_hostname",
            serverName,
            "-CAfile",
            str(tmp_path / "tls" / "ca.pem"),
            "-verify_return_error",
            "-brief",
        )
        output = result.stdout + result.stderr
        assert result.returncode == expected, output
        if expected:
            assert "permitted subtree violation" in output, output
