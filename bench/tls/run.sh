#!/bin/sh
# The TLS benchmark (bench/README.md): netd's tls-echo beside stunnel4 and hitch
# terminating TLS in front of netd's plain echo, with the same certificates;
# handshakes with openssl s_time, bulk echo with a small Python client.
# Installs stunnel4, hitch and openssl with apt-get when missing (root),
# prepares .venv with ./setup.sh when there is none, then runs
# bench/tls/bench.py with the arguments given (--record appends the results to
# bench/RESULTS.md).  Takes about three minutes with the defaults; everything
# listens on 127.0.0.1 and every process is stopped by its PID.
set -eu
cd "$(dirname "$0")/../.."

missing=""
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v stunnel4 >/dev/null 2>&1 || command -v stunnel >/dev/null 2>&1 || missing="$missing stunnel4"
PATH="$PATH:/usr/sbin" command -v hitch >/dev/null 2>&1 || missing="$missing hitch"
if [ -n "$missing" ]; then
    echo "bench/tls/run.sh: installing$missing with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    # (Where systemd runs, the packages may start system services from their
    # own configs; the benchmark does not use them: it starts its own stunnel
    # and hitch on free loopback ports from generated configs.)
    apt-get install -y -q $missing >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $missing >/dev/null; }
fi

# An existing .venv (an editable install from ./setup.sh --test) is used as it
# is; only a checkout without one is set up.
[ -x .venv/bin/python ] && .venv/bin/python -c 'import netd' 2>/dev/null || ./setup.sh
PATH="$PATH:/usr/sbin" exec .venv/bin/python bench/tls/bench.py "$@"
