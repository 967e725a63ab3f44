#!/bin/sh
# The TLS benchmark (bench/README.md): netd's tls-echo beside stunnel4 and hitch
# terminating TLS in front of netd's plain echo, with the same certificate;
# handshakes, request/response and bulk echo measured with bench/loadgen's TLS
# modes (C and libssl, built here with the machine's compiler), then the
# memory each holds for 10,000 idle or stalled TLS connections.
# Installs stunnel4, hitch, openssl, a C compiler and libssl-dev with apt-get
# when missing (root), installs the work tree's netd into .venv with ./setup.sh, then
# runs bench/tls/bench.py with the arguments given (--record adds the results
# to bench/RESULTS.md).  Takes about two minutes with the defaults, and five to
# fifteen more for the memory scenario (stunnel opens a thread per
# connection; --memory-connections 2000 is quicker); everything
# listens on 127.0.0.1 and every process is stopped by its PID.
set -eu
cd "$(dirname "$0")/../.."

# (Where systemd runs, the packages may start system services from their own
# configs; the benchmark does not use them: it starts its own stunnel and hitch
# on free loopback ports from generated configs.)
bench/setup-tools.sh bench/tls/run.sh openssl:openssl "stunnel4|stunnel:stunnel4" hitch:hitch "cc|gcc:gcc" /usr/include/openssl/ssl.h:libssl-dev
PATH="$PATH:/usr/sbin" exec .venv/bin/python bench/tls/bench.py "$@"
