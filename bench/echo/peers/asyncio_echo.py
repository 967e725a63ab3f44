"""
The Python peers of netd's echo benchmark: an echo server on asyncio's own
event loop or on uvloop, with raw or u32 framing.

What a competent asyncio programmer would write, no more: a C{Protocol} (not
streams, which cost a coroutine switch per read) that writes back what it
reads; with u32 framing it cuts the stream into frames and sends each frame
back with its 4-byte big-endian length, as netd's framing layer does.  Flow
control as netd's: reading pauses while the transport's write buffer is over
its high-water mark, so a client that does not read cannot make it buffer
without bound.

One process serves both framings, each on a port the system picks, like the
benchmark's netd (one process, a raw and a u32 service); it writes
C{{"raw": PORT, "u32": PORT}} to C{--ports-file} once it listens, as
C{netd run --ports-file} does, so that the benchmark starts every server the
same way.  Runs with the standard library
alone (uvloop only for C{--loop uvloop}); not part of netd.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import resource
import signal
from typing import cast

MAX_FRAME = 65536  # netd's default max_frame: a larger length prefix closes the connection
PREFIX = 4


class RawEcho(asyncio.Protocol):
    """
    Every byte goes back as it came.
    """

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """
        Keep the transport to echo to.
        """
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """
        Echo what was read.
        """
        self.transport.write(data)

    def pause_writing(self) -> None:
        """
        The peer is not reading: stop reading from it too.
        """
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        """
        The write buffer drained: read again.
        """
        self.transport.resume_reading()


class U32Echo(RawEcho):
    """
    Frames of a 4-byte big-endian length and that many bytes, each sent back framed.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """
        Keep the transport and start an empty buffer.
        """
        super().connection_made(transport)
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        """
        Add to the buffer and send back every complete frame in it; close on an
        over-long length prefix before buffering its payload.
        """
        buffer = self.buffer
        buffer += data
        offset = 0
        while len(buffer) - offset >= PREFIX:
            length = int.from_bytes(buffer[offset : offset + PREFIX], "big")
            if length > MAX_FRAME:
                self.transport.close()
                return
            end = offset + PREFIX + length
            if end > len(buffer):
                break
            self.frameReceived(bytes(buffer[offset + PREFIX : end]))
            offset = end
        del buffer[:offset]

    def frameReceived(self, frame: bytes) -> None:
        """
        Echo one frame, framed again.
        """
        self.transport.write(len(frame).to_bytes(PREFIX, "big") + frame)


async def serve(host: str, portsFile: str) -> None:
    """
    Listen (asyncio's default backlog), report the ports, serve until SIGTERM or SIGINT.
    """
    loop = asyncio.get_running_loop()
    servers = {
        "raw": await loop.create_server(RawEcho, host, 0),
        "u32": await loop.create_server(U32Echo, host, 0),
    }
    ports = {framing: server.sockets[0].getsockname()[1] for framing, server in servers.items()}
    temporary = portsFile + ".tmp"
    with open(temporary, "w") as output:
        json.dump(ports, output)
    os.replace(temporary, portsFile)
    stopped = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set_result, None)
    await stopped
    for server in servers.values():
        server.close()


def main() -> None:
    """
    Parse the options, raise the open-files limit for the idle-connections
    test, run on the chosen event loop.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ports-file", required=True)
    options = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if options.loop == "uvloop":
        # Imported by name: uvloop lives in the benchmark's own venv, not where mypy checks this file.
        importlib.import_module("uvloop").run(serve(options.host, options.ports_file))
    else:
        asyncio.run(serve(options.host, options.ports_file))


if __name__ == "__main__":
    main()
