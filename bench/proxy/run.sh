#!/bin/sh
# The proxy benchmark (bench/README.md): netd's proxy beside HAProxy (TCP mode,
# one thread) and socat relaying to the same C echo backend
# (bench/proxy/echo_backend.c), and netd terminating TLS beside hitch and
# stunnel4 in front of it; round trips, bulk, TLS handshakes and bulk measured
# with bench/loadgen, and netd's resident size with 10,000 idle proxied pairs.
# Installs haproxy, socat, hitch, stunnel4, openssl, a C compiler and
# libssl-dev with apt-get when missing (root), installs the work tree's netd
# into .venv with ./setup.sh, then runs bench/proxy/bench.py with the arguments
# given (--quick for a short run, --record to add the results to
# bench/RESULTS.md).  Takes about two and a half minutes with the defaults;
# everything listens on 127.0.0.1 and every process is stopped by its PID.
set -eu
cd "$(dirname "$0")/../.."

# (Where systemd runs, the packages may start system services from their own
# configs; the benchmark does not use them: it starts its own proxies on free
# loopback ports from generated configs.)
bench/setup-tools.sh bench/proxy/run.sh haproxy:haproxy socat:socat hitch:hitch "stunnel4|stunnel:stunnel4" \
    openssl:openssl "cc|gcc:gcc" /usr/include/openssl/ssl.h:libssl-dev
PATH="$PATH:/usr/sbin" exec .venv/bin/python bench/proxy/bench.py "$@"
