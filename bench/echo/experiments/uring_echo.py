"""
An echo on io_uring with a Python protocol per connection, for the io_uring
experiment of issue 18 (bench/README.md, "The C echo as the next bar").

Builds uringloop.c beside this file (a small CPython extension on liburing:
one ring, one submit-and-wait per loop turn) into bench/build/ with the
machine's compiler, then serves on 127.0.0.1 and prints C{{"port": N}}:

- by default each message crosses into Python as netd's would:
  C{protocol.dataReceived(data)} calling C{transport.write(data)};
- with C{--pure} the loop echoes in C, without Python: the floor an io_uring
  server reaches, beside bench/proxy/echo_backend.c on epoll.

Needs liburing's headers (Debian: C{apt-get install liburing-dev}).  Run from
the repository root: C{.venv/bin/python bench/echo/experiments/uring_echo.py
[--pure]}; it serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "uringloop.c"
BUILD = HERE.parents[2] / "bench" / "build"


def build() -> ModuleType:
    """
    The extension, compiled when missing or older than its source, and imported.
    """
    binary = BUILD / f"uringloop{sysconfig.get_config_var('EXT_SUFFIX')}"
    if not binary.exists() or binary.stat().st_mtime < SOURCE.stat().st_mtime:
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            sys.exit("uring_echo: no C compiler")
        BUILD.mkdir(parents=True, exist_ok=True)
        include = sysconfig.get_paths()["include"]
        subprocess.run(
            [compiler, "-O2", "-Wall", "-shared", "-fPIC", f"-I{include}", "-o", str(binary), str(SOURCE), "-luring"],
            check=True,
            timeout=120,
        )
    spec = importlib.util.spec_from_file_location("uringloop", binary)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Echo:
    """
    The protocol: write back what was read, as netd's raw echo does.
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:
        """
        Echo.
        """
        self.transport.write(data)


def main() -> None:
    """
    Build, listen, say the port, serve.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pure", action="store_true", help="echo in C, without crossing into Python")
    parser.add_argument("--port", type=int, default=0)
    options = parser.parse_args()
    loop = build()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", options.port))
    listener.listen(4096)
    print(json.dumps({"port": listener.getsockname()[1]}), flush=True)
    loop.run(listener.fileno(), None if options.pure else Echo)


if __name__ == "__main__":
    main()
