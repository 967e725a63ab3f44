"""
Flow control end to end: a client that sends without reading must not make
netd buffer without bound.  The client's sender stalls (TCP back-pressure reaches
it through netd), netd's resident memory stays flat, and once the client reads
again every byte comes back, in order.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from .conftest import echoService

pytestmark = pytest.mark.integration

MiB = 2**20
CHUNK = MiB
SEND_PIECE = 64 * 1024
RSS_GROWTH_LIMIT = 64 * MiB
STALL_QUIET = 1.0
STALL_TIMEOUT = 30.0
OVERALL_TIMEOUT = 120.0
LINE_LENGTH = 64 * 1024

# Bytes that cannot end a line frame (LF) or be stripped from its end (CR).
_NO_LINE_ENDS = bytes.maketrans(b"\n\r", b"NR")


def rawChunk(index: int) -> bytes:
    """
    Chunk C{index} of the raw stream: 1 MiB from a generator seeded with the index.
    """
    return random.Random(index).randbytes(CHUNK)


def lineChunk(index: int) -> bytes:
    """
    Chunk C{index} of the line stream: 16 lines of 64 KiB, LF included, none of
    whose content is LF or CR, so that line echo gives back the same bytes.
    """
    content = random.Random(index).randbytes(CHUNK).translate(_NO_LINE_ENDS)
    lines = [content[i : i + LINE_LENGTH - 1] + b"\n" for i in range(0, CHUNK, LINE_LENGTH)]
    chunk = b"".join(lines)
    assert len(chunk) == CHUNK
    return chunk


class Sender(threading.Thread):
    """
    Sends C{chunks} chunks on a socket in 64 KiB pieces, counting what the
    kernel accepted, then shuts down the write side.
    """

    def __init__(self, client: socket.socket, chunk: Callable[[int], bytes], chunks: int) -> None:
        super().__init__(name="flow-control-sender", daemon=True)
        self.client = client
        self.chunk = chunk
        self.chunks = chunks
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        """
        Send everything, recording a failure instead of raising it.
        """
        try:
            for index in range(self.chunks):
                view = memoryview(self.chunk(index))
                offset = 0
                while offset < len(view):
                    n = self.client.send(view[offset : offset + SEND_PIECE])
                    offset += n
                    self.sent += n
            self.client.shutdown(socket.SHUT_WR)
        except BaseException as e:
            self.error = e


def waitForStall(sender: Sender, total: int) -> int:
    """
    Poll the sender's progress until it has not moved for C{STALL_QUIET}
    seconds; return how much it had sent by then.
    """
    deadline = time.monotonic() + STALL_TIMEOUT
    last = -1
    lastMoved = time.monotonic()
    while time.monotonic() < deadline:
        if sender.error is not None:
            raise AssertionError(f"the sender failed: {sender.error!r}")
        assert sender.sent < total and sender.is_alive(), (
            "the sender sent everything without the client reading: nothing held it back"
        )
        sent = sender.sent
        now = time.monotonic()
        if sent != last:
            last, lastMoved = sent, now
        elif now - lastMoved >= STALL_QUIET:
            return sent
        time.sleep(0.05)
    raise AssertionError(f"the sender never stalled within {STALL_TIMEOUT} seconds (sent {sender.sent} bytes)")


def receiveAndVerify(client: socket.socket, chunk: Callable[[int], bytes], chunks: int, deadline: float) -> int:
    """
    Read until EOF, comparing each byte with the regenerated stream as it
    arrives (nothing beyond one chunk is kept); return how many bytes came.
    """
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    index = 0
    expected = memoryview(chunk(0))
    offset = 0
    received = 0
    for _ in range(64 * chunks * CHUNK // 1024 + 1000):  # generous bound on the number of reads
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {received} bytes came back in time"
        client.settimeout(remaining)
        n = client.recv_into(buffer)
        if n == 0:
            return received
        position = 0
        while position < n:
            if offset == len(expected):
                index += 1
                assert index < chunks, f"more bytes came back than were sent ({received + position} and more)"
                expected = memoryview(chunk(index))
                offset = 0
            take = min(n - position, len(expected) - offset)
            if view[position : position + take] != expected[offset : offset + take]:
                got = bytes(view[position : position + take])
                want = bytes(expected[offset : offset + take])
                first = next(i for i in range(take) if got[i] != want[i])
                raise AssertionError(f"the echo differs from what was sent at byte {received + position + first}")
            position += take
            offset += take
        received += n
    raise AssertionError("too many reads")


def rssWhileStalled(netd: Any, samples: int = 5) -> int:
    """
    netd's largest resident size over a few samples taken while the client is stalled.
    """
    largest = 0
    for _ in range(samples):
        largest = max(largest, netd.rssBytes())
        time.sleep(0.1)
    return largest


def assertBoundedEcho(netd: Any, service: str, chunk: Callable[[int], bytes], total: int) -> None:
    """
    Send C{total} bytes of C{chunk}s to C{service} without reading until the
    sender stalls, check netd's memory, then read and verify everything.
    """
    started = time.monotonic()
    deadline = started + OVERALL_TIMEOUT
    chunks = total // CHUNK
    client = socket.create_connection(netd.address(service, "tcp"), timeout=10)
    client.settimeout(OVERALL_TIMEOUT)
    sender = Sender(client, chunk, chunks)
    try:
        before = netd.rssBytes()
        sender.start()
        stalledAt = waitForStall(sender, total)
        during = rssWhileStalled(netd)
        growth = during - before
        print(
            f"\n{service}: sender stalled after {stalledAt / MiB:.1f} MiB of {total / MiB:.0f} MiB; "
            f"netd RSS {before / MiB:.1f} MiB before, {during / MiB:.1f} MiB while stalled "
            f"(growth {growth / MiB:.1f} MiB, limit {RSS_GROWTH_LIMIT / MiB:.0f} MiB)"
        )
        assert growth < RSS_GROWTH_LIMIT, f"netd grew by {growth / MiB:.1f} MiB while the client did not read"
        received = receiveAndVerify(client, chunk, chunks, deadline)
        assert received == total, f"{received} bytes came back, {total} were sent"
        sender.join(timeout=max(0.0, deadline - time.monotonic()))
        assert not sender.is_alive(), "the sender did not finish"
        assert sender.error is None, f"the sender failed: {sender.error!r}"
        assert sender.sent == total
        print(f"{service}: {total / MiB:.0f} MiB echoed and verified in {time.monotonic() - started:.1f} s")
    finally:
        try:
            client.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        client.close()
        sender.join(timeout=10)


def test_rawEchoIsBounded(startNetd: Any) -> None:
    """
    A client sending 256 MiB to raw echo without reading stalls while netd grows by less than 64 MiB, then gets every byte back in order.
    """
    netd = startNetd(echoService("raw", ["tcp:0:interface=127.0.0.1"], framing="raw"))
    assertBoundedEcho(netd, "raw", rawChunk, 256 * MiB)


def test_lineEchoIsBounded(startNetd: Any) -> None:
    """
    A client sending 256 MiB of 64 KiB lines to line echo without reading stalls while netd grows by less than 64 MiB, then gets every line back.
    """
    netd = startNetd(echoService("lines", ["tcp:0:interface=127.0.0.1"], framing="line"))
    assertBoundedEcho(netd, "lines", lineChunk, 256 * MiB)
