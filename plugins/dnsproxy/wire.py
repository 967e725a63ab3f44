"""
DNS messages at the wire level: just enough parsing for the proxy's hot paths.

The proxy never fully decodes a message it only forwards or serves from cache:
it reads the header and the question, finds the OPT record, and records where
the TTLs are, so that a cached answer can be sent again with its ID, question
case, RD bit and TTLs patched in place.  twisted.names builds the messages the
proxy makes itself (static records, errors) and is the reference in the tests.

Every function here treats its input as hostile: anything malformed raises
L{WireError} (never IndexError or struct.error), and no length read from the
message is trusted before it is checked against the message's real size.
"""

from __future__ import annotations

import attrs

HEADER_SIZE = 12
TYPE_OPT = 41
TYPE_SOA = 6
CLASS_IN = 1

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
FLAG_AD = 0x0020
FLAG_CD = 0x0010
OPCODE_MASK = 0x7800
RCODE_MASK = 0x000F
DO_BIT = 0x8000
"""
The DO bit, in the 16 low bits of an OPT record's TTL field.
"""

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5

MIN_UDP_SIZE = 512
"""
The UDP answer size every client accepts (RFC 1035); larger only with EDNS(0).
"""


class WireError(ValueError):
    """
    A message that cannot be read: too short, a name running off the end, a
    compression loop, counts that promise more records than there are bytes.
    """


@attrs.frozen
class Question:
    """
    The question of a message.

    @ivar name: the name in wire form (length-prefixed labels, ending with the
        root's zero byte), exactly as it was sent (case kept).
    @ivar key: C{name} lowercased (ASCII only): the name's identity for caches
        and for matching answers to queries.
    @ivar qtype: the query type (any 16-bit value, unknown types included).
    @ivar qclass: the query class (IN, CH, ...).
    @ivar end: the offset just past the question in the message.
    """

    name: bytes
    key: bytes
    qtype: int
    qclass: int
    end: int


@attrs.frozen
class EDNS:
    """
    The OPT record of a message (EDNS(0), RFC 6891).

    @ivar udpSize: the requestor's UDP payload size (the OPT record's class).
    @ivar do: whether the DO bit (DNSSEC OK) is set.
    @ivar version: the EDNS version (only 0 exists).
    @ivar offset: where the OPT record starts in the message.
    """

    udpSize: int
    do: bool
    version: int
    offset: int


@attrs.frozen
class Query:
    """
    The parts of a client's query the proxy acts on.

    @ivar id: the message ID.
    @ivar flags: the 16 flag bits of the header (QR, opcode, RD, CD, ...).
    @ivar question: the question (queries have exactly one).
    @ivar edns: the OPT record, if the client sent one.
    """

    id: int
    flags: int
    question: Question
    edns: EDNS | None

    @property
    def opcode(self) -> int:
        """
        The opcode (0 for a standard query).
        """
        return (self.flags & OPCODE_MASK) >> 11

    def maxUDPSize(self) -> int:
        """
        The largest UDP answer this client accepts: 512 bytes without EDNS,
        else its payload size (never less than 512).
        """
        return MIN_UDP_SIZE if self.edns is None else max(MIN_UDP_SIZE, self.edns.udpSize)
