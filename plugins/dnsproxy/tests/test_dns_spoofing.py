"""
What keeps forged upstream answers out (RFC 5452, issue 13 item 7), in
memory: UDP source ports that keep changing (a socket serves a bounded number
of queries for a bounded time, then one on a new port takes its place), DNS
0x20 case randomisation with an exact-case check, the TCP re-ask that tells an
upstream that does not keep the case from a forger, and the client's question
put back byte for byte in every answer.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import CannotListenError
from twisted.logger import LogLevel
from twisted.names import dns

from netd_plugins.dnsproxy.resolver import CASE_RECHECK, PooledSystemRandom
from netd_plugins.dnsproxy.transports import randomCase
from netd_plugins.dnsproxy.wire import HEADER_SIZE, parseQuestion

from .dnsmessages import parse
from .test_dns_upstream import CLIENT_ID, Harness, ScriptedRandom, answerAddress, answerTo, messageID, reply


def sentName(message: bytes) -> bytes:
    """
    The question name of a message, as it is on the wire (case kept).
    """
    return parseQuestion(message).name


def questionBytes(message: bytes) -> bytes:
    """
    The question section of a one-question message, byte for byte.
    """
    return message[HEADER_SIZE : parseQuestion(message).end]


# 0x20.


def test_udpNameGoesInRandomCaseAndAnswerGetsTheClientsQuestion() -> None:
    """
    A UDP query goes with its name's letters in a random case; the answer in that case is accepted and returned with the client's ID and question, byte for byte.
    """
    harness = Harness(["udp:192.0.2.53"])
    harness.resolver.random = ScriptedRandom([0xBEEF], caseByte=0xFF)
    query, box = harness.resolve("Example-1.COM")
    port, sent, addr = harness.takeOneUDP()
    assert sentName(sent) == b"\x09eXAMPLE-1\x03com\x00", "every letter flipped, the digit and hyphen kept"
    assert sent[:2] == b"\xbe\xef" and sent[2:HEADER_SIZE] == query[2:HEADER_SIZE]
    reply(port, answerTo(sent, address="198.51.100.7"), addr)
    (answer,) = box
    assert messageID(answer) == CLIENT_ID
    assert questionBytes(answer) == questionBytes(query)
    assert answerAddress(answer) == "198.51.100.7"
    assert harness.counters["upstream_case_mismatches"] == 0


def test_answerInAnotherCaseIsNotBelievedButAskedAgainOverTCP() -> None:
    """
    A UDP answer with the right source and ID but the name in another case is not accepted: it is counted, and the query is asked again over TCP in a random case, whose answer (same case) is returned with the client's question.
    """
    harness = Harness(["udp:192.0.2.53"])
    harness.resolver.random = ScriptedRandom([0x0F0F], caseByte=0xFF)
    query, box = harness.resolve("www.Example.com")
    port, sent, addr = harness.takeOneUDP()
    forged = answerTo(sent, address="203.0.113.66", name="www.Example.com")
    reply(port, forged, addr)
    assert box == []
    assert harness.counters["upstream_case_mismatches"] == 1
    assert harness.counters["upstream_spoofed_dropped"] == 0
    peer = harness.acceptTCP()
    assert (peer.host, peer.port) == ("192.0.2.53", 53)
    (frame,) = peer.frames()
    assert sentName(frame) == b"\x03WWW\x07eXAMPLE\x03COM\x00"
    peer.send(answerTo(frame, address="192.0.2.10"))
    (answer,) = box
    assert answerAddress(answer) == "192.0.2.10"
    assert questionBytes(answer) == questionBytes(query)
    assert messageID(answer) == CLIENT_ID
    assert harness.counters["upstream_case_disabled"] == 0, "the TCP answer kept the case: the upstream does"
    harness.resolve("next.example")
    assert sentName(harness.takeOneUDP()[1]) == b"\x04NEXT\x07EXAMPLE\x00", "0x20 stays on"


def test_upstreamThatDoesNotKeepTheCaseIsAskedWithoutIt() -> None:
    """
    When the TCP answer too has the name in another case, the upstream is logged once and counted as not keeping the case, its UDP queries go in the client's case matched without regard to case, and after CASE_RECHECK seconds 0x20 is tried again.
    """
    harness = Harness(["udp:192.0.2.53"], timeout=2.0, deadline=5.0)
    harness.resolver.random = ScriptedRandom([], caseByte=0xFF)
    query, box = harness.resolve("Mixed.Example")
    port, sent, addr = harness.takeOneUDP()
    reply(port, answerTo(sent, name="mixed.example"), addr)
    peer = harness.acceptTCP()
    (frame,) = peer.frames()
    peer.send(answerTo(frame, name="mixed.example", address="192.0.2.20"))
    (answer,) = box
    assert answerAddress(answer) == "192.0.2.20"
    assert questionBytes(answer) == questionBytes(query), "the client's case is put back"
    assert harness.counters["upstream_case_disabled"] == 1
    (warning,) = harness.logged(LogLevel.warn)
    assert "upstream udp:192.0.2.53:53 does not keep the letter case" in warning

    query, box = harness.resolve("Mixed.Example")
    port, sent, addr = harness.takeOneUDP()
    assert sentName(sent) == b"\x05Mixed\x07Example\x00", "the client's case, no 0x20"
    reply(port, answerTo(sent, name="mixed.example"), addr)
    assert questionBytes(box[0]) == questionBytes(query)
    assert len(harness.reactor.tcpClients) == 1, "answered over UDP, no TCP re-ask"

    harness.reactor.advance(CASE_RECHECK)
    harness.resolve("Mixed.Example")
    port, sent, addr = harness.takeOneUDP()
    assert sentName(sent) == b"\x05mIXED\x07eXAMPLE\x00", "0x20 again after CASE_RECHECK"
    reply(port, answerTo(sent, name="mixed.example"), addr)
    peer = harness.acceptTCP()
    (frame,) = peer.frames()
    peer.send(answerTo(frame, name="mixed.example"))
    assert harness.counters["upstream_case_disabled"] == 2
    assert len(harness.logged(LogLevel.warn)) == 1, "logged once"


def test_randomizeCaseOffSendsTheClientsCase() -> None:
    """
    With randomizeCase off, UDP queries go in the client's case and an answer in another case is accepted, with the client's question put back.
    """
    harness = Harness(["udp:192.0.2.53"], randomizeCase=False)
    harness.resolver.random = ScriptedRandom([], caseByte=0xFF)
    query, box = harness.resolve("Example.COM")
    port, sent, addr = harness.takeOneUDP()
    assert sent[2:] == query[2:]
    reply(port, answerTo(sent, name="example.com"), addr)
    assert questionBytes(box[0]) == questionBytes(query)
    assert harness.counters["upstream_case_mismatches"] == 0


def test_streamQueriesGoInTheClientsCase() -> None:
    """
    TCP queries go in the client's case (no 0x20: nothing off the path can forge a TCP answer), an answer in another case is accepted, and the client's question is put back.
    """
    harness = Harness(["tcp:192.0.2.53"])
    harness.resolver.random = ScriptedRandom([], caseByte=0xFF)
    query, box = harness.resolve("Example.COM")
    peer = harness.acceptTCP()
    (frame,) = peer.frames()
    assert frame[2:] == query[2:]
    peer.send(answerTo(frame, name="EXAMPLE.com"))
    assert questionBytes(box[0]) == questionBytes(query)


def test_refusalReturnedWithTheClientsQuestion() -> None:
    """
    When every upstream refuses, the refusal returned also carries the client's question byte for byte.
    """
    harness = Harness(["udp:192.0.2.53"])
    query, box = harness.resolve("Refused.Example")
    port, sent, addr = harness.takeOneUDP()
    reply(port, answerTo(sent, rcode=dns.EREFUSED), addr)
    assert questionBytes(box[0]) == questionBytes(query)
    assert parse(box[0]).rCode == dns.EREFUSED


def test_randomCaseFlipsEachLetterEvenly() -> None:
    """
    randomCase flips each letter with probability one half, independently, and leaves every other byte alone.
    """
    name = b"\x0aabcdefghij\x05x-1_9\x00"
    source = PooledSystemRandom()
    draws = [randomCase(name, source) for _ in range(4000)]
    assert all(d.lower() == name for d in draws)
    for index, byte in enumerate(name):
        upper = sum(d[index] != byte for d in draws)
        if chr(byte).isalpha():
            assert 1700 < upper < 2300, (index, upper)
        else:
            assert upper == 0
    assert len(set(draws)) > 1650, "11 letters, 2048 cases: about 1760 distinct ones expected in 4000 draws"


# Source ports.


def test_udpSocketReplacedAfterPortQueries() -> None:
    """
    A UDP socket sends at most udpPortQueries queries; then a socket on a new port takes its place, the old one still accepts the answers it waits for and closes after the last.
    """
    harness = Harness(["udp:192.0.2.53"], udpSockets=1, udpPortQueries=2)
    boxes = [harness.resolve(f"q{index}.example")[1] for index in range(3)]
    sent = harness.takeUDP()
    ports = [port.port for port, _, _ in sent]
    assert ports[0] == ports[1] != ports[2]
    old = sent[0][0]
    assert old.listening, "two queries still wait on it"
    reply(old, answerTo(sent[0][1]), sent[0][2])
    assert old.listening
    reply(old, answerTo(sent[1][1]), sent[1][2])
    assert not old.listening, "closed after its last answer"
    assert all(len(box) == 1 and isinstance(box[0], bytes) for box in boxes[:2])
    assert harness.counters["upstream_udp_sockets_opened"] == 2


def test_udpSocketReplacedAfterItsLifetime() -> None:
    """
    A UDP socket older than udpPortLifetime seconds takes no new query: one on a new port does, and the old one, with nothing waiting, closes at once.
    """
    harness = Harness(["udp:192.0.2.53"], udpSockets=1, udpPortLifetime=1.0)
    harness.resolve()
    old, sent, addr = harness.takeOneUDP()
    reply(old, answerTo(sent), addr)
    harness.reactor.advance(0.999)
    harness.resolve()
    port, sent, addr = harness.takeOneUDP()
    assert port is old
    reply(old, answerTo(sent), addr)
    harness.reactor.advance(0.001)
    harness.resolve()
    new, _, _ = harness.takeOneUDP()
    assert new is not old
    assert not old.listening


def test_retiringSocketGivenUpWhenItsQueryTimesOut() -> None:
    """
    A replaced socket whose query times out closes then, and stopService closes the sockets still waiting.
    """
    harness = Harness(["udp:192.0.2.53"], udpSockets=1, udpPortQueries=1, timeout=1.0, deadline=1.0)
    harness.resolve("a.example")
    harness.resolve("b.example")
    (first, _, _), (second, _, _) = harness.takeUDP()
    assert first.listening and second.listening
    harness.reactor.advance(1)
    assert not first.listening
    assert second.listening, "still in the pool"
    harness.resolve("c.example")
    harness.resolver.stopService()
    assert all(not port.listening for port in harness.reactor.udpPorts.values())


def test_socketThatCannotBeReplacedStaysOn() -> None:
    """
    When no new socket can be opened, the old one keeps serving, and the failure is counted each time and logged once.
    """
    harness = Harness(["udp:192.0.2.53"], udpSockets=1, udpPortQueries=1)
    harness.resolve("a.example")

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise CannotListenError("127.0.0.1", 0, OSError(24, "Too many open files"))

    harness.reactor.listenUDP = refuse  # type: ignore[method-assign]
    harness.resolve("b.example")
    harness.resolve("c.example")
    ports = {port.port for port, _, _ in harness.takeUDP()}
    assert len(ports) == 1
    assert harness.counters["upstream_udp_socket_errors"] == 2
    (warning,) = harness.logged(LogLevel.warn)
    assert "cannot open a UDP socket for upstream queries" in warning


def test_portsAreDrawnByTheKernel() -> None:
    """
    Every socket, the first ones and their replacements, is bound to port 0: the kernel draws the port (at random, on Linux).
    """
    harness = Harness(["udp:192.0.2.53"], udpSockets=2, udpPortQueries=1)
    harness.resolver.random = ScriptedRandom([])
    asked: list[int] = []
    listen = harness.reactor.listenUDP

    def recording(port: int, *args: Any, **kwargs: Any) -> Any:
        asked.append(port)
        return listen(port, *args, **kwargs)

    harness.reactor.listenUDP = recording  # type: ignore[method-assign]
    for index in range(5):
        harness.resolve(f"q{index}.example")
    assert asked == [0] * 6, "two for the pool, then one per query after the first"
    assert harness.counters["upstream_udp_sockets_opened"] == 6
