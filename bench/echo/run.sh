#!/bin/sh
# The echo benchmark (bench/README.md): netd's echo beside an asyncio echo, the
# same on uvloop, and socat, each in turn under the same load from
# bench/loadgen (C, built here with the machine's compiler), the server pinned
# to one CPU and the load generator to another.
# Installs socat and a C compiler with apt-get when missing (root), installs
# the work tree's netd into .venv with ./setup.sh (uvloop, which netd runs on, comes
# with it), then runs bench/echo/bench.py with the arguments given (--quick
# for a short run, --record to add the results to bench/RESULTS.md).
# Takes about three minutes with the defaults; everything listens on 127.0.0.1
# and every process is stopped by its PID.
set -eu
cd "$(dirname "$0")/../.."

bench/setup-tools.sh bench/echo/run.sh socat:socat "cc|gcc:gcc" /usr/include/openssl/ssl.h:libssl-dev
exec .venv/bin/python bench/echo/bench.py "$@"
