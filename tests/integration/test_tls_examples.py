"""
The TLS examples in config/examples run as their headers say: tls-echo.toml
on a fresh machine with nothing made first, tls-client-checks.toml after its
stated first step.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from netd.testing.harness import netdCommand

from .conftest import IO_TIMEOUT

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"


def echoOverTLS(address: tuple[str, int], context: ssl.SSLContext, line: bytes) -> tuple[bytes, str | None]:
    """
    Send one line over TLS to C{address} (as localhost); return what came back and the ALPN protocol agreed.
    """
    with socket.create_connection(address, timeout=IO_TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(line)
            received = b""
            while not received.endswith(b"\n"):
                chunk = tls.recv(4096)
                if not chunk:
                    break
                received += chunk
            return received, tls.selected_alpn_protocol()


def test_tlsEchoExampleNeedsNothingMadeFirst(startNetd: Any) -> None:
    """
    tls-echo.toml starts with an empty state directory, makes the development CA there, and a client trusting that CA is echoed, over ALPN "echo" on the second service.
    """
    netd = startNetd((EXAMPLES / "tls-echo.toml").read_text(encoding="utf-8"))
    ca = netd.stateDir / "tls" / "ca.pem"
    assert ca.exists(), netd.log()
    context = ssl.create_default_context(cafile=str(ca))
    assert echoOverTLS(netd.address("tls-echo"), context, b"hello\n") == (b"hello\n", None)
    context.set_alpn_protocols(["echo"])
    assert echoOverTLS(netd.address("tls-echo-alpn"), context, b"again\n") == (b"again\n", "echo")


def test_tlsClientChecksExampleAfterItsFirstStep(startNetd: Any, tmp_path: Path) -> None:
    """
    tls-client-checks.toml runs after `netd certs --out certs --bad` in its folder: the mutual-TLS service echoes a client with certs/client.pem, and the expired one is refused by a client that checks it.
    """
    folder = tmp_path / "examples"
    folder.mkdir()
    shutil.copyfile(EXAMPLES / "tls-client-checks.toml", folder / "tls-client-checks.toml")
    subprocess.run(
        netdCommand("certs", "--out", "certs", "--bad"), cwd=folder, check=True, capture_output=True, timeout=60
    )
    # The harness writes the config text into a folder of its own: the paths name the example's folder.
    text = (folder / "tls-client-checks.toml").read_text(encoding="utf-8").replace('"certs/', f'"{folder}/certs/')
    netd = startNetd(text)
    context = ssl.create_default_context(cafile=str(folder / "certs" / "ca.pem"))
    context.load_cert_chain(str(folder / "certs" / "client.pem"), str(folder / "certs" / "client-key.pem"))
    assert echoOverTLS(netd.address("tls-echo-mtls"), context, b"mutual\n")[0] == b"mutual\n"
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        echoOverTLS(netd.address("bad-expired"), context, b"no\n")
