#!/bin/sh
# The DNS proxy benchmark (bench/README.md): netd's dns-proxy beside dnsmasq and
# unbound, all forwarding to one loopback dnsmasq, measured with dnsperf.
# Installs dnsperf, unbound and dnsmasq-base with apt-get when missing (root),
# prepares .venv with ./setup.sh when there is none, then runs bench/dns/bench.py
# with the arguments given (--record appends the results to bench/RESULTS.md).
# Takes about five minutes with the defaults; everything listens on 127.0.0.1.
set -eu
cd "$(dirname "$0")/../.."

missing=""
command -v dnsperf >/dev/null 2>&1 || missing="$missing dnsperf"
PATH="$PATH:/usr/sbin" command -v unbound >/dev/null 2>&1 || missing="$missing unbound"
PATH="$PATH:/usr/sbin" command -v dnsmasq >/dev/null 2>&1 || missing="$missing dnsmasq-base"
if [ -n "$missing" ]; then
    echo "bench/dns/run.sh: installing$missing with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    # (Where systemd runs, the unbound package also starts a system unbound on
    # port 53; the benchmark does not use it: its own unbound runs on a free
    # loopback port from a generated config.)
    apt-get install -y -q $missing >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $missing >/dev/null; }
fi

# An existing .venv (an editable install from ./setup.sh --test) is used as it
# is; only a checkout without one is set up.
[ -x .venv/bin/python ] && .venv/bin/python -c 'import netd' 2>/dev/null || ./setup.sh
PATH="$PATH:/usr/sbin" exec .venv/bin/python bench/dns/bench.py "$@"
