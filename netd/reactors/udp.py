"""
UDP ports that read and send datagrams in batches: one C{recvmmsg} call reads
up to L{BATCH} of them, and the answers sent while they are handled go out
together in one C{sendmmsg} call once the last is handled.

A UDP server in Python pays per datagram for two system calls (C{recvfrom},
C{sendto}), for the address tuple built from each one and for the final
C{recvfrom} that finds the socket empty; on a DNS cache hit those were
about half of what netd spent.  Here the calls are made once per batch
(through C{ctypes}: Python's socket module has neither), a batch that comes
back short tells the socket is drained without asking again, and the address
of a peer seen before is taken from a table keyed by its raw socket address.

While one port's read is handled, what the other batching ports are given
to send waits for its end too (L{_READS}): the answers a DNS proxy sends its
clients as a batch of its upstream's answers comes in go out in one call.

L{BatchingPort} is Twisted's L{udp.Port} with these two differences: its
C{doRead}, and L{BatchingPort.send} for protocols that want their answers
batched (L{IBatchingDatagramTransport}); C{write}, C{connect}, closing and the
rest are Twisted's.  C{udp:} listeners use it on netd's reactor
(L{netd.config.listen.ListenAddress.listenDatagram}), and Twisted's port on
Twisted's reactor or where L{CANARY} fails: libc has no
C{recvmmsg}/C{sendmmsg} (L{AVAILABLE} is false), C{udp.Port}'s internals
(C{_bindSocket}, C{_connectedAddr}, C{_fromListeningDescriptor}) changed, or a batch does not make the
round trip through the C{mmsghdr} layout declared here.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import socket
import sys
from errno import EAGAIN, ECONNREFUSED, EINTR, EWOULDBLOCK
from typing import Any

from twisted.internet import udp
from twisted.internet.interfaces import IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.python import log
from zope.interface import Interface, implementer

from netd.canary import Canary, require, requireNames
from netd.reactors.shared import UnwatchedReactor

BATCH = 64
"""
The most datagrams read by one C{recvmmsg} call, and sent by one C{sendmmsg}.
"""

MAX_PEERS = 4096
"""
How many peers' addresses are remembered (as tuple and as raw socket address)
before the table starts again from empty.
"""

_IGNORED_READ_ERRORS = frozenset({EAGAIN, EWOULDBLOCK, EINTR})


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def _libcFunctions() -> tuple[Any, Any] | None:
    """
    libc's C{recvmmsg} and C{sendmmsg}, or L{None} where it has not both.

    Their arguments are not declared (no C{argtypes}): declared ones are
    converted by a Python-level C{from_param} per argument and call, a fifth
    of what a call costs.  Callers pass small Python ints for the C{int}
    and C{unsigned int} parameters, a L{ctypes.c_void_p} for the vector and
    L{None} for the timeout, which ctypes passes as they are.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.restype = ctypes.c_int
    sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


_FUNCTIONS = _libcFunctions() if sys.platform == "linux" else None
AVAILABLE = _FUNCTIONS is not None
"""
Whether this system has what L{BatchingPort} needs.
"""

_HEADER_WORDS = ctypes.sizeof(_Mmsghdr) // 4
_LENGTH_WORD = _Mmsghdr.msg_len.offset // 4
_IOVEC_WORDS = ctypes.sizeof(_Iovec) // ctypes.sizeof(ctypes.c_size_t)
_IOV_LEN_WORD = _Iovec.iov_len.offset // ctypes.sizeof(ctypes.c_size_t)
_NAME_SLOT = 32
"""
Bytes kept for each message's socket address (C{sockaddr_in6} is 28).
"""


def _anonymous(size: int) -> mmap.mmap:
    """
    C{size} bytes of private memory, zero, backed page by page as they are written.
    """
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


class _Messages:
    """
    The memory of one batch of messages: L{BATCH} C{mmsghdr} headers, each
    with one buffer of C{size} bytes (its slot in L{data}) and room for a
    socket address of C{nameSize} bytes.

    Both regions are anonymous memory maps: a page is backed only once a
    datagram reaches it, so slots as big as the largest datagram cost no more
    resident memory than the datagrams really read.  Slots start on a page,
    so that a small datagram takes one page, not two.

    @ivar address: the address of the first header, for the system calls;
        L{pointer} the same as a L{ctypes.c_void_p}, made once.
    @ivar lengths: the headers as 32-bit words (C{msg_len} of message I{i} at
        C{i * _HEADER_WORDS + _LENGTH_WORD}).
    @ivar sizes: the I/O vectors as C{size_t} words (C{iov_len} of message
        I{i} at C{i * _IOVEC_WORDS + _IOV_LEN_WORD}).
    @ivar slots: for each message, where things are, worked out once: its
        buffer's offset in L{data}, its C{msg_len} in L{lengths}, its
        C{iov_len} in L{sizes}, and where its address starts and ends in
        L{control}.
    """

    def __init__(self, size: int, nameSize: int) -> None:
        self.size = size
        stride = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        self.nameSize = nameSize
        self.data = _anonymous(BATCH * stride)
        headerBytes = BATCH * ctypes.sizeof(_Mmsghdr)
        iovecBytes = BATCH * ctypes.sizeof(_Iovec)
        self.namesAt = headerBytes + iovecBytes
        self.control = _anonymous(self.namesAt + BATCH * _NAME_SLOT)
        headers = (_Mmsghdr * BATCH).from_buffer(self.control)
        iovecs = (_Iovec * BATCH).from_buffer(self.control, headerBytes)
        dataAt = ctypes.addressof(ctypes.c_char.from_buffer(self.data))
        namesAt = ctypes.addressof(headers) + self.namesAt
        for index in range(BATCH):
            iovecs[index].iov_base = dataAt + index * stride
            iovecs[index].iov_len = size
            header = headers[index].msg_hdr
            header.msg_name = namesAt + index * _NAME_SLOT
            header.msg_namelen = nameSize
            header.msg_iov = ctypes.addressof(iovecs[index])
            header.msg_iovlen = 1
        self.address = ctypes.addressof(headers)
        self.pointer = ctypes.c_void_p(self.address)
        self.lengths = memoryview(self.control)[:headerBytes].cast("I")
        iovecWords = memoryview(self.control)[headerBytes : self.namesAt]
        self.sizes = iovecWords.cast("Q") if ctypes.sizeof(ctypes.c_size_t) == 8 else iovecWords.cast("I")
        self.slots = [
            (
                index * stride,
                index * _HEADER_WORDS + _LENGTH_WORD,
                index * _IOVEC_WORDS + _IOV_LEN_WORD,
                self.namesAt + index * _NAME_SLOT,
                self.namesAt + index * _NAME_SLOT + nameSize,
            )
            for index in range(BATCH)
        ]

    def release(self) -> None:
        """
        Give the memory back (the port is closed).
        """
        self.lengths.release()
        self.sizes.release()
        self.data.close()
        self.control.close()


class _Reads:
    """
    The batching ports' read in progress: while one port hands its batch to
    its protocol, C{joined} lists the other ports sent on meanwhile (a DNS
    proxy answering its clients as its upstream's answers come in), whose
    datagrams go out in batches too when the read ends; L{None} between reads.
    """

    joined: list[BatchingPort] | None = None


_READS = _Reads()

_SHARED_RECEIVE: dict[tuple[int, int], _Messages] = {}
"""
The receive batches shared by the ports made with C{sharedBuffers}, by
datagram size and address size: a read copies every datagram out before it
returns, so one batch serves every such port, and a port that lives for a
few dozen datagrams (a DNS proxy's upstream sockets, on new ports all the
time) costs no memory map of its own.
"""


class IBatchingDatagramTransport(IUDPTransport):
    """
    A UDP transport whose protocol may have its answers sent in batches.
    """

    def send(datagram: bytes, addr: tuple[str, int]) -> None:
        """
        Send a datagram to C{addr}: at once, or, while the datagrams of a read
        (of this port or of another batching port) are handled, with the
        other answers once the last is handled (in the same reactor turn, in
        the order sent).  Never raises: a datagram the
        system refuses (a full buffer, too big, an unreachable peer) is
        reported to the protocol's L{IBatchingDatagramProtocol.datagramNotSent}.
        """


class IBatchingDatagramProtocol(Interface):
    """
    A datagram protocol that sends through L{IBatchingDatagramTransport.send}.
    """

    def datagramNotSent(error: OSError) -> None:
        """
        A datagram given to C{send} was not sent, for C{error}.
        """


@implementer(IBatchingDatagramTransport)
class BatchingPort(udp.Port):
    """
    A UDP port that reads with C{recvmmsg} and sends what L{send} is given
    during a read with C{sendmmsg}.

    @ivar _peers: peers seen, from their raw socket address to the address
        tuple handed to the protocol.
    @ivar _rawPeers: the same peers, the other way round, to send to them.
    """

    _received: _Messages
    _sending: _Messages | None = None
    _queued = 0
    _batching = False
    _first: tuple[bytes, tuple[str, int]] | None = None

    def __init__(
        self,
        port: int,
        proto: DatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,
        reactor: Any = None,
        sharedBuffers: bool = False,
    ) -> None:
        """
        @param sharedBuffers: read into the receive batch shared with the
            other ports made so (L{_SHARED_RECEIVE}), not into one of its own.
        """
        super().__init__(port, proto, interface, maxPacketSize, reactor)
        self._sharedBuffers = sharedBuffers
        self._peers: dict[bytes, tuple[str, int]] = {}
        self._rawPeers: dict[tuple[str, int], bytes] = {}

    def _bindSocket(self) -> None:
        """
        Bind the socket (Twisted's way) and map the memory of its receive
        batch (the send batch is mapped when a second datagram is sent during
        a read: a port whose protocol sends through the socket never maps it).
        """
        super()._bindSocket()
        nameSize = 28 if self.addressFamily == socket.AF_INET6 else 16
        self._nameSize = nameSize
        if self._sharedBuffers:
            shape = (self.maxPacketSize, nameSize)
            received = _SHARED_RECEIVE.get(shape)
            if received is None:
                received = _SHARED_RECEIVE[shape] = _Messages(*shape)
            self._received = received
        else:
            self._received = _Messages(self.maxPacketSize, nameSize)
        self._fd = self.socket.fileno()
        self._socket = self.socket

    def connectionLost(self, reason: Any = None) -> None:
        """
        Close as Twisted does, then free the batches' memory (not a shared one).
        """
        super().connectionLost(reason)
        if not self._sharedBuffers:
            self._received.release()
        if self._sending is not None:
            self._sending.release()

    def doRead(self) -> None:
        """
        Read up to L{BATCH} datagrams with one call and hand each to the
        protocol (an exception it raises is logged, as Twisted's port does);
        then send what it answered.  Errors of the read are Twisted's: the
        socket being empty or the call interrupted ends the read, a refused
        connection is reported to a connected protocol, anything else is
        raised.
        """
        assert _FUNCTIONS is not None
        received = self._received
        count = _FUNCTIONS[0](self._fd, received.pointer, BATCH, socket.MSG_DONTWAIT, None)
        if count < 0:
            error = ctypes.get_errno()
            if error in _IGNORED_READ_ERRORS:
                return
            if error == ECONNREFUSED:
                if self._connectedAddr:
                    self.protocol.connectionRefused()
                return
            raise OSError(error, os.strerror(error))
        protocol = self.protocol
        peers = self._peers
        lengths = received.lengths
        data = received.data
        control = received.control
        self._batching = True
        reads = _READS
        outer = reads.joined is None
        if outer:
            reads.joined = []
        try:
            for start, lengthAt, _, nameAt, nameEnd in received.slots[:count]:
                datagram = data[start : start + lengths[lengthAt]]
                raw = control[nameAt:nameEnd]
                addr = peers.get(raw)
                if addr is None:
                    addr = self._newPeer(raw)
                try:
                    protocol.datagramReceived(datagram, addr)
                except BaseException:
                    log.err()
        finally:
            try:
                self._endBatch()
            finally:
                if outer:
                    joined = reads.joined or []
                    reads.joined = None
                    for other in joined:
                        try:
                            other._endBatch()
                        except BaseException:
                            # (As for a datagram: one port's protocol raising
                            # in datagramNotSent leaves the others to send.)
                            log.err()

    def _endBatch(self) -> None:
        """
        The read is over: send what was held for it.
        """
        self._batching = False
        first = self._first
        if first is not None:
            self._first = None
            self._sendNow(*first)
        elif self._queued:
            self._flush()

    def _newPeer(self, raw: bytes) -> tuple[str, int]:
        """
        The address tuple of a peer not seen before, as Python's C{recvfrom}
        gives it (with Twisted's port, only host and port for IPv6),
        remembered both ways.
        """
        if len(self._peers) >= MAX_PEERS:
            self._peers.clear()
            self._rawPeers.clear()
        port = int.from_bytes(raw[2:4], "big")
        if self.addressFamily == socket.AF_INET6:
            host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
            scope = int.from_bytes(raw[24:28], sys.byteorder)
            if scope:
                host = socket.getnameinfo((host, port, 0, scope), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)[0]
        else:
            host = socket.inet_ntop(socket.AF_INET, raw[4:8])
        addr = (host, port)
        self._peers[raw] = addr
        self._rawPeers[addr] = raw
        return addr

    def send(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """
        See L{IBatchingDatagramTransport.send}.

        Outside a read the datagram goes to C{sendto} at once.  During one
        (another port's too: this port then joins L{_READS} and sends when
        that read ends), the first answer is only held (a read answered with
        one datagram sends it with C{sendto}, cheaper than C{sendmmsg} for
        one), and copied into the batch when a second comes; an answer to a
        peer not seen lately, or too big for a slot, goes to C{sendto} after
        those queued, to keep the order.
        """
        if not self._batching:
            joined = _READS.joined
            if joined is None:
                self._sendNow(datagram, addr)
                return
            self._batching = True
            joined.append(self)
        first = self._first
        if first is not None:
            self._first = None
            if not self._queue(*first):
                self._sendNow(*first)
        elif not self._queued:
            self._first = (datagram, addr)
            return
        if not self._queue(datagram, addr):
            self._flush()
            self._sendNow(datagram, addr)

    def _queue(self, datagram: bytes, addr: tuple[str, int]) -> bool:
        """
        Copy a datagram into the next slot of the batch to send (sending the
        batch once full); C{False} if it cannot go there.
        """
        raw = self._rawPeers.get(addr)
        sending = self._sending
        if sending is None:
            sending = self._sending = _Messages(max(self.maxPacketSize, 65535), self._nameSize)
        size = len(datagram)
        if raw is None or size > sending.size:
            return False
        index = self._queued
        start, _, sizeAt, nameAt, nameEnd = sending.slots[index]
        sending.data[start : start + size] = datagram
        sending.sizes[sizeAt] = size
        sending.control[nameAt:nameEnd] = raw
        self._queued = index + 1
        if index + 1 == BATCH:
            self._flush()
        return True

    def _sendNow(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """
        Send one datagram with C{sendto} (a closed port's socket refuses it).
        """
        try:
            self._socket.sendto(datagram, addr)
        except OSError as e:
            self._notSent(e.errno or 0, e)

    def _flush(self) -> None:
        """
        Send the datagrams queued by L{send}, with as few calls as the system
        allows: a call that fails sends none, and the one it failed on is
        reported and skipped.
        """
        assert _FUNCTIONS is not None
        sendmmsg = _FUNCTIONS[1]
        queued = self._queued
        self._queued = 0
        if not queued:
            return
        sending = self._sending
        assert sending is not None
        done = 0
        while done < queued:
            at = sending.pointer if not done else ctypes.c_void_p(sending.address + done * ctypes.sizeof(_Mmsghdr))
            sent = sendmmsg(self._fd, at, queued - done, 0)
            if sent > 0:
                done += sent
                continue
            # (A call that sends nothing without an error would be the
            # kernel's bug; its message is skipped all the same.)
            error = ctypes.get_errno() if sent < 0 else 0
            if error == EINTR:
                continue
            done += 1
            self._notSent(error, OSError(error, os.strerror(error)))

    def _notSent(self, error: int, reason: OSError) -> None:
        """
        A datagram was refused: a connected protocol hears of a refused
        connection as from Twisted's C{write}; the protocol hears of every
        refused datagram.
        """
        if error == ECONNREFUSED and self._connectedAddr:
            self.protocol.connectionRefused()
        self.protocol.datagramNotSent(reason)


def listenBatchingUDP(
    reactor: Any,
    port: int,
    protocol: DatagramProtocol,
    interface: str = "",
    maxPacketSize: int = 8192,
    sharedBuffers: bool = False,
) -> BatchingPort:
    """
    Listen on a UDP port with a L{BatchingPort}, as C{reactor.listenUDP} does
    with Twisted's.

    @param sharedBuffers: see L{BatchingPort.__init__}.
    @raise twisted.internet.error.CannotListenError: when the bind fails.
    """
    listening = BatchingPort(port, protocol, interface, maxPacketSize, reactor, sharedBuffers)
    listening.startListening()
    return listening


def adoptBatchingUDP(
    reactor: Any, fileDescriptor: int, addressFamily: int, protocol: DatagramProtocol, maxPacketSize: int = 8192
) -> BatchingPort:
    """
    Serve a bound UDP socket with a L{BatchingPort}, as
    C{reactor.adoptDatagramPort} does with Twisted's (a copy of the descriptor
    is kept; the caller closes its own).
    """
    listening: BatchingPort = BatchingPort._fromListeningDescriptor(
        reactor, fileDescriptor, addressFamily, protocol, maxPacketSize
    )
    listening.startListening()
    return listening


@implementer(IBatchingDatagramProtocol)
class BatchingCanaryProbe(DatagramProtocol):
    """
    The canary's protocol (its port's opening and closing lines in the log
    name it): answers each datagram with itself through the batching
    C{send}; keeps what the system refused.
    """

    noisy = False

    def __init__(self) -> None:
        self.refused: list[OSError] = []

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        port = self.transport
        assert isinstance(port, BatchingPort)
        port.send(datagram, addr)

    def datagramNotSent(self, error: OSError) -> None:
        self.refused.append(error)


def _check() -> None:
    """
    C{udp.Port} has the internals L{BatchingPort} uses, and a batch makes the
    round trip: a port on loopback reads three datagrams with one
    C{recvmmsg}, learns their sender, and answers all three with one
    C{sendmmsg}, in order.
    """
    import select

    require(AVAILABLE, "libc's recvmmsg and sendmmsg")
    requireNames(udp.Port, "_bindSocket _fromListeningDescriptor connectionLost addressFamily", "twisted's udp.Port")
    protocol = BatchingCanaryProbe()
    port = BatchingPort(0, protocol, "127.0.0.1", 2048, UnwatchedReactor())
    requireNames(port, "_connectedAddr maxPacketSize", "twisted's udp.Port()")
    port.startListening()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            sent = [b"one", b"two", b"three"]
            for datagram in sent:
                peer.sendto(datagram, port.socket.getsockname())
            require(select.select([port.socket], [], [], 1)[0], "the probe's datagrams to arrive")
            port.doRead()
            answers: list[bytes] = []
            while len(answers) < len(sent) and select.select([peer], [], [], 1)[0]:
                answer, source = peer.recvfrom(2048)
                require(source == port.socket.getsockname(), "answers from the port")
                answers.append(answer)
            require(answers == sent and not protocol.refused, f"{sent} echoed in order, got {answers}")
    finally:
        port.connectionLost()


CANARY = Canary("batching UDP port", _check, "UDP listeners use Twisted's udp.Port")
