"""
netd's tls-echo against stunnel4 and hitch terminating TLS in front of an echo
backend, all on loopback, in one run.

Three TLS servers, each with the same certificates (made by C{netd certs}: an
ECDSA P-256 and an RSA-2048 development set), each on its own free loopback
port:

- netd: one process with two tls-echo services (raw framing), one per key type;
- stunnel4: one process, one service per key type, connecting to the backend;
- hitch: one process (one worker), one frontend per key type, to the backend.

The backend of stunnel and hitch is netd's own plain echo (the echo plugin,
raw framing) in a process of its own.  For each server:

- handshakes: C{openssl s_time -new} (a full handshake per connection, no
  resumption, one connection at a time) for C{DURATION} seconds, per key type
  and TLS version; connections per second of wall-clock time;
- bulk: one TLS connection (Python's ssl, TLS 1.3, the ECDSA certificate)
  sending 64 KiB chunks while reading the echo back, for C{DURATION} seconds;
  echoed megabytes (10^6 bytes) per second.  The plain backend is measured the
  same way without TLS, for reference.

Rounds go round-robin over the servers so that the machine's noise falls on
all alike; the table shows the median of the rounds and the ratios
netd/stunnel and netd/hitch.

Run from the repository root: bench/tls/run.sh (installs stunnel4 and hitch
with apt-get when missing), or .venv/bin/python bench/tls/bench.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from benchlib import machine, netdVersion, quietDaemonTable, record, say, startNetd, stopProcess, toolVersion  # noqa: E402  (the path above makes it importable)

HOST = "127.0.0.1"
START_TIMEOUT = 20.0
KEY_TYPES = ("ecdsa", "rsa")
SERVERS = ("netd", "stunnel", "hitch")
VERSIONS = ("1.3", "1.2")
CHUNK = 65536


class Server:
    """
    One TLS server under test: its name, its port per key type, how to stop it.
    """

    def __init__(self, name: str, ports: dict[str, int], stop: Callable[[], None], version: str) -> None:
        self.name = name
        self.ports = ports
        self.stop = stop
        self.version = version


def freePort() -> int:
    """
    A TCP port of 127.0.0.1 free right now (callers retry if it is taken meanwhile).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def tlsProbe(port: int, maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> tuple[str, str] | None:
    """
    One TLS handshake with the server (no verification): its version and cipher, or None if it failed.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = maximum
    try:
        with socket.create_connection((HOST, port), timeout=2) as raw, context.wrap_socket(raw, server_hostname="localhost") as client:
            client.sendall(b"probe")
            client.settimeout(2)
            if client.recv(5) != b"probe":
                return None
            cipher = client.cipher()
            return client.version() or "?", cipher[0] if cipher else "?"
    except (OSError, ssl.SSLError):
        return None


def waitUntilServing(process: subprocess.Popen[bytes], ports: list[int], what: str, log: Path) -> None:
    """
    Poll until a TLS echo through every port works.
    """
    deadline = time.monotonic() + START_TIMEOUT
    for port in ports:
        while tlsProbe(port) is None:
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                stopProcess(process)
                raise RuntimeError(f"{what} did not serve TLS within {START_TIMEOUT} s:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)


# The servers.


def makeCertificates(directory: Path) -> dict[str, Path]:
    """
    A development set per key type, made by C{netd certs --key-type TYPE}.
    """
    folders = {}
    for keyType in KEY_TYPES:
        folder = directory / keyType
        subprocess.run(
            [sys.executable, "-m", "netd", "certs", "--out", str(folder), "--key-type", keyType],
            check=True,
            capture_output=True,
            timeout=60,
        )
        folders[keyType] = folder
    return folders


def startBackend(directory: Path) -> tuple[int, Callable[[], None]]:
    """
    The plain echo behind stunnel and hitch: netd's echo plugin, raw framing.
    """
    config = quietDaemonTable() + '\n[[services]]\nname = "backend"\nplugin = "echo"\nlisten = ["tcp:0:interface=127.0.0.1"]\nframing = "raw"\n'
    process, services, _ = startNetd(config, directory, "backend")
    return int(services["backend"][0]["port"]), lambda: stopProcess(process)  # type: ignore[call-overload]


def startNetdTLS(certs: dict[str, Path], directory: Path) -> Server:
    """
    netd with one tls-echo service (raw framing) per key type.
    """
    lines = [quietDaemonTable()]
    for keyType, folder in certs.items():
        lines.append(
            f'[[services]]\nname = "tls-{keyType}"\nplugin = "tls-echo"\nlisten = ["tcp:0:interface={HOST}"]\nframing = "raw"\n'
            f'tls = {{ certificate = "{folder / "server.pem"}", private_key = "{folder / "server-key.pem"}" }}\n'
        )
    process, services, log = startNetd("\n".join(lines), directory, "netd")
    ports = {keyType: int(services[f"tls-{keyType}"][0]["port"]) for keyType in certs}  # type: ignore[call-overload]
    waitUntilServing(process, list(ports.values()), "netd", log)
    return Server("netd", ports, lambda: stopProcess(process), netdVersion())


def stunnelExecutable() -> str | None:
    """
    stunnel4 (Debian's name) or stunnel.
    """
    return shutil.which("stunnel4") or shutil.which("stunnel")


def startStunnel(certs: dict[str, Path], backend: int, directory: Path) -> Server:
    """
    stunnel in the foreground, one service per key type, each to the backend.
    """
    executable = stunnelExecutable()
    assert executable is not None
    for _ in range(5):
        ports = {keyType: freePort() for keyType in certs}
        config = directory / "stunnel.conf"
        sections = [
            "foreground = yes",
            "pid =",
            "syslog = no",
            "debug = 3",
            f"output = {directory / 'stunnel.log'}",
        ]
        for keyType, folder in certs.items():
            sections += [
                f"[{keyType}]",
                f"accept = {HOST}:{ports[keyType]}",
                f"connect = {HOST}:{backend}",
                f"cert = {folder / 'server.pem'}",
                f"key = {folder / 'server-key.pem'}",
                "sslVersionMin = TLSv1.2",
            ]
        config.write_text("\n".join(sections) + "\n")
        log = directory / "stunnel.out"
        with log.open("wb") as output:
            process = subprocess.Popen([executable, str(config)], stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
        try:
            waitUntilServing(process, list(ports.values()), "stunnel", log)
        except RuntimeError:
            stopProcess(process)
            if "Address already in use" in log.read_text(errors="replace") + _read(directory / "stunnel.log"):
                continue
            raise
        version = toolVersion([executable, "-version"], r"(stunnel [0-9.]+)")
        return Server("stunnel", ports, lambda: stopProcess(process), version)
    raise RuntimeError("stunnel found no free port")


def startHitch(certs: dict[str, Path], backend: int, directory: Path) -> Server:
    """
    hitch in the foreground with one worker, one frontend per key type, to the backend.
    """
    executable = shutil.which("hitch") or "/usr/sbin/hitch"
    for _ in range(5):
        ports = {keyType: freePort() for keyType in certs}
        lines = [
            f'backend = "[{HOST}]:{backend}"',
            "workers = 1",
            "daemon = off",
            "syslog = off",
            "log-level = 1",
            "tls-protos = TLSv1.2 TLSv1.3",
            f'ocsp-dir = "{directory / "ocsp"}"',
            "ocsp-verify-staple = off",
        ]
        if os.geteuid() == 0:
            lines += ['user = "nobody"', 'group = "nogroup"']  # hitch refuses to run its workers as root
        for keyType, folder in certs.items():
            combined = directory / f"hitch-{keyType}.pem"
            combined.write_bytes((folder / "server-key.pem").read_bytes() + (folder / "server.pem").read_bytes())
            lines.append(f'frontend = {{\n  host = "{HOST}"\n  port = "{ports[keyType]}"\n  pem-file = "{combined}"\n}}')
        (directory / "ocsp").mkdir(exist_ok=True)
        config = directory / "hitch.conf"
        config.write_text("\n".join(lines) + "\n")
        log = directory / "hitch.out"
        with log.open("wb") as output:
            process = subprocess.Popen([executable, f"--config={config}"], stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
        try:
            waitUntilServing(process, list(ports.values()), "hitch", log)
        except RuntimeError:
            stopProcess(process)
            if "in use" in log.read_text(errors="replace"):
                continue
            raise
        version = toolVersion([executable, "--version"], r"(hitch [0-9.]+)")
        return Server("hitch", ports, lambda: stopProcess(process), version)
    raise RuntimeError("hitch found no free port")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


@contextmanager
def servers(directory: Path, names: list[str]) -> Iterator[tuple[dict[str, Server], int]]:
    """
    The backend and the TLS servers, stopped (by PID) on the way out.
    """
    certs = makeCertificates(directory)
    stops: list[Callable[[], None]] = []
    started: dict[str, Server] = {}
    try:
        backend, stopBackend = startBackend(directory)
        stops.append(stopBackend)
        starters = {
            "netd": lambda: startNetdTLS(certs, directory),
            "stunnel": lambda: startStunnel(certs, backend, directory),
            "hitch": lambda: startHitch(certs, backend, directory),
        }
        for name in names:
            say(f"starting {name}")
            started[name] = starters[name]()
            stops.append(started[name].stop)
        yield started, backend
    finally:
        for stop in reversed(stops):
            stop()


# The measurements.


def handshakes(port: int, version: str, duration: int) -> float:
    """
    Full handshakes per second: openssl s_time -new for C{duration} seconds,
    counted over the wall-clock time of the run.
    """
    command = ["openssl", "s_time", "-connect", f"{HOST}:{port}", "-new", "-time", str(duration), "-tls1_3" if version == "1.3" else "-tls1_2"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 30, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    found = re.search(r"^(\d+) connections in [0-9.]+s;", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return int(found.group(1)) / elapsed


def bulk(port: int, duration: float, useTLS: bool = True) -> float:
    """
    Echoed megabytes per second over one connection: 64 KiB chunks sent while
    reading the echo, for C{duration} seconds, in one thread (non-blocking).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((HOST, port), timeout=10)
    client: socket.socket = context.wrap_socket(raw, server_hostname="localhost") if useTLS else raw
    chunk = os.urandom(CHUNK)
    sent = received = 0
    view = memoryview(chunk)
    offset = 0
    try:
        client.setblocking(False)
        started = time.monotonic()
        end = started + duration
        while True:
            now = time.monotonic()
            if now >= end:
                break
            readable, writable, _ = select.select([client], [client] if sent - received < 4 * 2**20 else [], [], min(1.0, end - now))
            if writable:
                try:
                    count = client.send(view[offset:])
                    sent += count
                    offset = (offset + count) % CHUNK
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    pass
            pending = isinstance(client, ssl.SSLSocket) and client.pending()
            if readable or pending:
                for _ in range(64):
                    try:
                        data = client.recv(262144)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                        break
                    if not data:
                        raise RuntimeError(f"the server closed the connection after {received} bytes")
                    received += len(data)
        elapsed = time.monotonic() - started
    finally:
        client.close()
    return received / elapsed / 1e6


def run(options: argparse.Namespace) -> dict[str, object]:
    """
    Every measurement, round-robin over the servers; the medians.
    """
    info = machine()
    raw: dict[str, dict[str, list[float]]] = {}
    negotiated: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="netd-tls-bench-") as temporary:
        with servers(Path(temporary), options.servers) as (started, backend):
            versions = {name: server.version for name, server in started.items()}
            for name, server in started.items():
                negotiated[name] = {}
                for version in options.versions:
                    maximum = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
                    for keyType, port in server.ports.items():
                        probe = tlsProbe(port, maximum)
                        negotiated[name][f"{keyType} TLS {version}"] = f"{probe[0]} {probe[1]}" if probe else "failed"
            for round in range(options.rounds):
                for version in options.versions:
                    for keyType in KEY_TYPES:
                        for name, server in started.items():
                            say(f"round {round + 1}/{options.rounds}: {name} handshakes, {keyType}, TLS {version}")
                            metric = f"handshakes/s {keyType} TLS {version}"
                            raw.setdefault(metric, {}).setdefault(name, []).append(handshakes(server.ports[keyType], version, options.duration))
                for name, server in started.items():
                    say(f"round {round + 1}/{options.rounds}: {name} bulk")
                    raw.setdefault("bulk MB/s", {}).setdefault(name, []).append(bulk(server.ports["ecdsa"], options.duration))
                if options.plain_reference:
                    say(f"round {round + 1}/{options.rounds}: plain backend bulk")
                    raw.setdefault("bulk MB/s", {}).setdefault("plain echo (no TLS)", []).append(bulk(backend, options.duration, useTLS=False))
    medians = {metric: {name: statistics.median(values) for name, values in byServer.items()} for metric, byServer in raw.items()}
    return {"machine": info, "versions": versions, "negotiated": negotiated, "medians": medians, "rounds": raw}


def describeNegotiated(negotiated: dict[str, dict[str, str]], names: list[str]) -> str:
    """
    The version and cipher each server agreed on with the bulk client, per
    key type and TLS version; once for all servers when they agree.
    """
    parts = []
    for setting in sorted({setting for byServer in negotiated.values() for setting in byServer}):
        values = {name: negotiated.get(name, {}).get(setting, "?") for name in names}
        if len(set(values.values())) == 1:
            parts.append(f"{setting}: {next(iter(values.values()))} (all)")
        else:
            parts.append(f"{setting}: " + ", ".join(f"{name} {value}" for name, value in values.items()))
    return "; ".join(parts)


def report(result: dict[str, object], options: argparse.Namespace) -> str:
    """
    The results as Markdown: the machine, the settings, the table with ratios.
    """
    info: dict[str, str] = result["machine"]  # type: ignore[assignment]
    versions: dict[str, str] = result["versions"]  # type: ignore[assignment]
    medians: dict[str, dict[str, float]] = result["medians"]  # type: ignore[assignment]
    negotiated: dict[str, dict[str, str]] = result["negotiated"]  # type: ignore[assignment]
    names = [name for name in SERVERS if name in options.servers]
    peers = [name for name in names if name != "netd"]
    lines = [
        f"### TLS echo, {info['date']}",
        "",
        f"- machine: {info['cpus']} CPUs (nproc {info['nproc']}), {info['cpu']}, {info['kernel']}, load average before the run {info['load']}",
        f"- software: Python {info['python']} ({info['python_ssl']}), Twisted {info['twisted']}, pyOpenSSL {info['pyopenssl']}, "
        f"client {info['openssl']}; " + "; ".join(f"{name}: {version}" for name, version in versions.items()),
        f"- settings: handshakes with openssl s_time -new -time {options.duration} (one connection at a time, full handshakes); "
        f"bulk: one TLS 1.3 connection (ECDSA certificate) echoing 64 KiB chunks for {options.duration} s; "
        f"{options.rounds} rounds, medians shown; stunnel and hitch (1 worker) in front of netd's plain echo; all on 127.0.0.1",
        "- negotiated: " + describeNegotiated(negotiated, names),
        "",
        "| measure | " + " | ".join(names) + "".join(f" | netd/{peer}" for peer in peers) + " |",
        "| --- |" + " ---: |" * (len(names) + len(peers)),
    ]
    for metric, byServer in medians.items():
        cells = [f"{byServer[name]:,.1f}" if metric.startswith("bulk") else f"{byServer[name]:,.0f}" for name in names if name in byServer]
        ratios = [f"{byServer['netd'] / byServer[peer]:.2f}" if "netd" in byServer and byServer.get(peer) else "-" for peer in peers]
        lines.append(f"| {metric} | " + " | ".join(cells + ratios) + " |")
    plain = medians.get("bulk MB/s", {}).get("plain echo (no TLS)")
    if plain is not None:
        lines += ["", f"- reference: the plain echo backend alone (no TLS), same bulk client: {plain:,.1f} MB/s"]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    """
    Parse the options, check the tools, run, print and (with --record) record.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=4, help="seconds of each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all servers; the medians are reported")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--versions", nargs="+", default=list(VERSIONS), choices=VERSIONS, help="TLS versions of the handshake runs")
    parser.add_argument("--no-plain-reference", dest="plain_reference", action="store_false", help="skip the plain backend's bulk run")
    parser.add_argument("--record", action="store_true", help="add the results to bench/RESULTS.md (newest first)")
    parser.add_argument("--json", type=Path, help="also write every round's numbers to this file")
    options = parser.parse_args()
    if "netd" not in options.servers:
        parser.error("--servers must include netd (the ratios are netd's)")
    tools = [("openssl", shutil.which("openssl"))]
    if "stunnel" in options.servers:
        tools.append(("stunnel4", stunnelExecutable()))
    if "hitch" in options.servers:
        tools.append(("hitch", shutil.which("hitch") or (os.access("/usr/sbin/hitch", os.X_OK) and "/usr/sbin/hitch") or None))
    missing = [tool for tool, found in tools if not found]
    if missing:
        sys.exit(f"bench: missing {', '.join(missing)}; bench/tls/run.sh installs them (apt-get)")
    result = run(options)
    text = report(result, options)
    print(text)
    if options.json:
        options.json.write_text(json.dumps(result, indent=2))
    if options.record:
        record(text)


if __name__ == "__main__":
    main()
