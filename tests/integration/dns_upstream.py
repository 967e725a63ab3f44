"""
A real upstream DNS server for the dns-proxy tests and benchmark: dnsmasq from
Debian, run in the foreground on a free loopback port with a configuration made
entirely of command-line options (no config file, no /etc/hosts, no
resolv.conf), and stopped by its process ID.

The test upstream (L{upstreamArguments}) is authoritative for C{example.test}
and for the reverse zone of 192.0.2.0/24: it answers A, AAAA, NS, SOA, MX, TXT,
SRV, CNAME, PTR and one unknown type (TYPE65534) from L{EXPECTED}; unknown
names in the zone get NXDOMAIN with the zone's SOA, known names without the
asked type get NODATA with the SOA; names outside its zones (and class CH) get
REFUSED, as from any authoritative-only server.  C{big.example.test} has 40 TXT
records, about 4.6 KB, more than a 512- or 1232-byte UDP answer can hold.

This module uses only the standard library, so that bench/dns/ can import it.
"""

from __future__ import annotations

import grp
import os
import pwd
import random
import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from .processes import STOP_TIMEOUT, stopProcess

DNSMASQ_CANDIDATES = ("/usr/sbin/dnsmasq", "/sbin/dnsmasq")
START_TIMEOUT = 10.0
PORT_ATTEMPTS = 5

ZONE = "example.test"
TTL = 300
"""
The TTL of every record the test upstream serves, and its SOA minimum (so also
the negative-caching TTL of its NXDOMAIN and NODATA answers).
"""

BIG_NAME = f"big.{ZONE}"
BIG_COUNT = 40
BIG_TEXTS = [f"{index:02d}-" + "x" * 97 for index in range(BIG_COUNT)]
"""
The 40 TXT strings of L{BIG_NAME}: 100 bytes each.
"""

NXDOMAIN_NAME = f"nothing-here.{ZONE}"

EXPECTED: dict[tuple[str, str], list[str]] = {
    (f"www.{ZONE}", "A"): ["192.0.2.10"],
    (f"www.{ZONE}", "AAAA"): ["2001:db8::10"],
    (f"ns1.{ZONE}", "A"): ["192.0.2.53"],
    (f"mail.{ZONE}", "A"): ["192.0.2.25"],
    (f"v6only.{ZONE}", "AAAA"): ["2001:db8::6"],
    (ZONE, "NS"): [f"ns1.{ZONE}."],
    (ZONE, "MX"): [f"10 mail.{ZONE}.", f"20 backup-mx.{ZONE}."],
    (ZONE, "TXT"): ['"v=spf1 -all"', '"netd test zone"'],
    (f"_sip._udp.{ZONE}", "SRV"): [f"10 20 5060 sip.{ZONE}."],
    (f"alias.{ZONE}", "CNAME"): [f"www.{ZONE}."],
    ("10.2.0.192.in-addr.arpa", "PTR"): [f"www.{ZONE}."],
    (f"odd.{ZONE}", "TYPE65534"): ["\\# 4 DEADBEEF"],
    (BIG_NAME, "TXT"): [f'"{text}"' for text in BIG_TEXTS],
}
"""
What the test upstream answers, as C{dig +short} prints it: (name without the
final dot, type) to the record data, in no particular order.
"""

SOA = f"ns1.{ZONE}. hostmaster.{ZONE}. 2024010101 1200 180 1209600 {TTL}"


def upstreamArguments() -> list[str]:
    """
    The dnsmasq options that make it the test upstream described in this
    module's docstring (everything but the listening and process options).
    """
    return [
        f"--auth-zone={ZONE},192.0.2.0/24,2001:db8::/64",
        f"--auth-soa=2024010101,hostmaster.{ZONE}",
        f"--auth-ttl={TTL}",
        f"--local-ttl={TTL}",
        f"--host-record=www.{ZONE},192.0.2.10,2001:db8::10",
        f"--host-record=ns1.{ZONE},192.0.2.53",
        f"--host-record=mail.{ZONE},192.0.2.25",
        f"--host-record=v6only.{ZONE},2001:db8::6",
        f"--mx-host={ZONE},mail.{ZONE},10",
        f"--mx-host={ZONE},backup-mx.{ZONE},20",
        f"--txt-record={ZONE},v=spf1 -all",
        f"--txt-record={ZONE},netd test zone",
        f"--srv-host=_sip._udp.{ZONE},sip.{ZONE},5060,10,20",
        f"--cname=alias.{ZONE},www.{ZONE}",
        f"--dns-rr=odd.{ZONE},65534,deadbeef",
        *[f"--txt-record={BIG_NAME},{text}" for text in BIG_TEXTS],
    ]


def benchUpstreamArguments() -> list[str]:
    """
    The dnsmasq options of the benchmark's upstream: every name under
    C{example.test} has the address 127.0.0.2 (a zone of unlimited size, for
    cache-miss runs), with a TTL long enough to outlast any run.
    """
    return [f"--address=/{ZONE}/127.0.0.2", "--local-ttl=3600", "--cache-size=0"]


def findDnsmasq() -> str | None:
    """
    The path of dnsmasq, which Debian installs in /usr/sbin (often not on a
    user's PATH); L{None} when it is not installed.
    """
    found = shutil.which("dnsmasq")
    if found is not None:
        return found
    for candidate in DNSMASQ_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def freeLoopbackPort(host: str = "127.0.0.1") -> int:
    """
    A port that is free for both UDP and TCP on C{host} right now (bound to
    port 0 and released, so another process may still take it: callers retry).
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no port free for both UDP and TCP on {host}")


def buildQuery(name: str, qtype: int = 1, qclass: int = 1, *, queryId: int | None = None) -> bytes:
    """
    A plain recursive DNS query for C{name} (no EDNS), as wire bytes.
    """
    if queryId is None:
        queryId = random.randrange(1 << 16)
    question = b"".join(bytes([len(label)]) + label.encode("ascii") for label in name.strip(".").split(".") if label)
    return struct.pack("!HHHHHH", queryId, 0x0100, 1, 0, 0, 0) + question + b"\x00" + struct.pack("!HH", qtype, qclass)


def answerRcode(query: bytes, answer: bytes) -> int | None:
    """
    The RCODE of C{answer} when it answers C{query} (same ID, QR set); else L{None}.
    """
    if len(answer) < 12 or answer[:2] != query[:2] or not answer[2] & 0x80:
        return None
    return answer[3] & 0x0F


def askUdp(host: str, port: int, query: bytes, timeout: float = 1.0) -> bytes | None:
    """
    Send one query over UDP and return the answer, or L{None} when none comes in time.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(timeout)
        try:
            client.sendto(query, (host, port))
            answer, _ = client.recvfrom(65535)
        except (TimeoutError, ConnectionRefusedError):
            return None
        return answer


class Dnsmasq:
    """
    One dnsmasq process in the foreground on C{host}:C{port} (UDP and TCP),
    logging every query to C{logFile}.
    """

    def __init__(self, process: subprocess.Popen[bytes], host: str, port: int, logFile: Path, stderrFile: Path) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.logFile = logFile
        self.stderrFile = stderrFile
        self._syncs = 0

    @property
    def pid(self) -> int:
        """
        dnsmasq's process ID.
        """
        return self.process.pid

    @property
    def address(self) -> tuple[str, int]:
        """
        Where it answers, as (host, port).
        """
        return self.host, self.port

    @property
    def upstream(self) -> str:
        """
        It as a dns-proxy upstream string (C{udp:HOST:PORT}).
        """
        return f"udp:{self.host}:{self.port}"

    def log(self) -> str:
        """
        What dnsmasq has logged so far (with C{--log-queries}: one line per query).
        """
        try:
            return self.logFile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def sync(self, timeout: float = 5.0) -> None:
        """
        Wait until every query dnsmasq answered before this call is in its log:
        ask a marker name and wait for the marker's log line (dnsmasq handles
        and logs queries in order).
        """
        self._syncs += 1
        marker = f"log-sync-{os.getpid()}-{self._syncs}.{ZONE}"
        deadline = time.monotonic() + timeout
        asked = 0.0
        while True:
            now = time.monotonic()
            if now - asked > 1.0:
                askUdp(self.host, self.port, buildQuery(marker), timeout=0.2)
                asked = time.monotonic()
            if f" {marker} from " in self.log():
                return
            if now > deadline:
                raise AssertionError(f"dnsmasq did not log {marker} within {timeout} seconds:\n{self.log()[-3000:]}")
            time.sleep(0.02)

    def queriesFor(self, name: str, qtype: str | None = None) -> int:
        """
        How many queries for C{name} (of type C{qtype}, any when L{None})
        dnsmasq has received so far, over UDP and TCP, whatever their case.
        """
        return len(self.answeringPids(name, qtype))

    def answeringPids(self, name: str, qtype: str | None = None) -> list[int]:
        """
        For each query for C{name} received so far, the PID of the dnsmasq
        process that logged it: the main process for UDP, and one child process
        per TCP connection (so queries logged by the same child came over one
        connection).
        """
        self.sync()
        kind = r"[^\]]*" if qtype is None else re.escape(qtype)
        pattern = re.compile(
            r"dnsmasq\[(\d+)\]: (?:query|auth)\[" + kind + r"\] " + re.escape(name.rstrip(".")) + r" from ",
            re.IGNORECASE,
        )
        return [int(pid) for pid in pattern.findall(self.log())]

    def stop(self) -> None:
        """
        Stop dnsmasq (SIGTERM to its PID, then SIGKILL if it lingers) and wait for it.
        """
        stopProcess(self.process)


def startDnsmasq(
    arguments: Sequence[str],
    directory: Path,
    *,
    host: str = "127.0.0.1",
    readyName: str = f"www.{ZONE}",
    logQueries: bool = True,
    name: str = "dnsmasq",
) -> Dnsmasq:
    """
    Start dnsmasq in the foreground on a free port of C{host} with C{arguments}
    (its records and behaviour), and return once it answers C{readyName}.  A
    port taken between choosing and binding is retried on another port.

    It runs as the current user and group (as root, dnsmasq would otherwise
    switch to C{nobody}), reads no configuration file, hosts file or
    resolv.conf, writes no PID file, and logs to a file in C{directory}.
    """
    executable = findDnsmasq()
    if executable is None:
        raise FileNotFoundError("dnsmasq is not installed (Debian package dnsmasq-base)")
    directory.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for attempt in range(PORT_ATTEMPTS):
        port = freeLoopbackPort(host)
        logFile = directory / f"{name}-{port}.log"
        stderrFile = directory / f"{name}-{port}.stderr"
        command = [
            executable,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--pid-file",  # no value: no PID file
            "--no-hosts",
            "--no-resolv",
            "--no-poll",
            f"--user={pwd.getpwuid(os.getuid()).pw_name}",
            f"--group={grp.getgrgid(os.getgid()).gr_name}",
            f"--port={port}",
            f"--listen-address={host}",
            "--bind-interfaces",
            f"--log-facility={logFile}",
            *(["--log-queries"] if logQueries else []),
            *arguments,
        ]
        if any(argument.startswith("--auth-zone") for argument in arguments):
            # Authoritative answers for queries arriving at this address.
            command.append(f"--auth-server=ns1.{ZONE},{host}")
        with stderrFile.open("wb") as stderr:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=subprocess.STDOUT)
        server = Dnsmasq(process, host, port, logFile, stderrFile)
        query = buildQuery(readyName)
        deadline = time.monotonic() + START_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            if answerRcode(query, askUdp(host, port, query, timeout=0.2) or b"") is not None:
                return server
            time.sleep(0.02)
        server.stop()
        output = stderrFile.read_text(errors="replace")
        failures.append(f"attempt {attempt + 1} on port {port}: exit {process.returncode}: {output.strip()}")
        if "in use" not in output:
            break
    raise RuntimeError("dnsmasq did not start:\n" + "\n".join(failures))


def startTestUpstream(directory: Path) -> Dnsmasq:
    """
    Start the test upstream of this module's docstring.
    """
    return startDnsmasq(upstreamArguments(), directory, name="upstream")


BOGUS_NAME = f"bogus.{ZONE}"
BOGUS_ADDRESS = "192.0.2.66"
"""
What L{ValidatingUpstream} answers for L{BOGUS_NAME} to a query with CD set.
"""


class ValidatingUpstream:
    """
    A UDP upstream that answers as a validating resolver does for a zone whose
    signatures are bogus: a query for L{BOGUS_NAME} with CD set (checking
    disabled) gets its A record (L{BOGUS_ADDRESS}, TTL L{TTL}); the same query
    without CD gets SERVFAIL.  Other names get REFUSED.  An OPT record of
    version 0 is added when the query had one.  It runs in a thread of the
    test process until L{stop}, and counts the queries it gets by CD bit.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        import threading

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind((host, 0))
        self.socket.settimeout(0.1)
        self.host, self.port = self.socket.getsockname()
        self.asked = {True: 0, False: 0}
        self._running = True
        self._thread = threading.Thread(target=self._serve, name="validating-upstream", daemon=True)
        self._thread.start()

    @property
    def upstream(self) -> str:
        """
        It as a dns-proxy upstream string (C{udp:HOST:PORT}).
        """
        return f"udp:{self.host}:{self.port}"

    def _serve(self) -> None:
        """
        Answer queries until stopped.
        """
        while self._running:
            try:
                query, peer = self.socket.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            answer = self.answer(query)
            if answer is not None:
                self.socket.sendto(answer, peer)

    def answer(self, query: bytes) -> bytes | None:
        """
        The answer to one query, or L{None} for one too short to answer.
        """
        if len(query) < 12:
            return None
        queryId, flags, qdcount, _, _, arcount = struct.unpack_from("!6H", query)
        end = 12
        while end < len(query) and query[end]:
            end += query[end] + 1
        end += 5
        if qdcount != 1 or end > len(query):
            return None
        question = query[12:end]
        labels = []
        position = 0
        while question[position]:
            labels.append(question[position + 1 : position + 1 + question[position]].decode("ascii", "replace"))
            position += question[position] + 1
        qtype = struct.unpack_from("!H", question, len(question) - 4)[0]
        checkingDisabled = bool(flags & 0x0010)
        records = b""
        if ".".join(labels).lower() != BOGUS_NAME:
            rcode = 5
        else:
            self.asked[checkingDisabled] += 1
            rcode = 0 if checkingDisabled else 2
            if checkingDisabled and qtype == 1:
                records = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, TTL, 4) + socket.inet_aton(BOGUS_ADDRESS)
        opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0) if arcount else b""
        header = struct.pack(
            "!6H", queryId, 0x8080 | (flags & 0x0110) | rcode, 1, 1 if records else 0, 0, 1 if opt else 0
        )
        return header + question + records + opt

    def stop(self) -> None:
        """
        Stop answering and close the socket.
        """
        self._running = False
        self._thread.join(timeout=STOP_TIMEOUT)
        self.socket.close()
