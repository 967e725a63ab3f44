#!/bin/sh
# The echo benchmark (bench/README.md): netd's echo beside an asyncio echo, the
# same on uvloop, and socat, each in turn under the same load from
# bench/loadgen (C, built here with the machine's compiler), the server pinned
# to one CPU and the load generator to another.
# Installs socat and a C compiler with apt-get when missing (root), prepares
# .venv with ./setup.sh when there is none, puts uvloop in a venv of its own
# (bench/build/peers, gitignored: netd's .venv and its test dependencies stay
# as they are), then runs bench/echo/bench.py with the arguments given
# (--quick for a short run, --record to add the results to bench/RESULTS.md).
# Takes about three minutes with the defaults; everything listens on 127.0.0.1
# and every process is stopped by its PID.
set -eu
cd "$(dirname "$0")/../.."

bench/setup-tools.sh bench/echo/run.sh socat:socat "cc|gcc:gcc" /usr/include/openssl/ssl.h:libssl-dev
if ! bench/build/peers/bin/python -c 'import uvloop' 2>/dev/null; then
    echo "bench/echo/run.sh: installing uvloop into bench/build/peers" >&2
    { .venv/bin/python -m venv bench/build/peers && bench/build/peers/bin/pip install -q uvloop; } ||
        echo "bench/echo/run.sh: could not install uvloop; its peer is left out" >&2
fi
exec .venv/bin/python bench/echo/bench.py "$@"
