#!/bin/sh
# The DNS proxy benchmark (bench/README.md): netd's dns-proxy beside dnsmasq and
# unbound, all forwarding to one loopback dnsmasq, measured with dnsperf.
# Installs dnsperf, unbound and dnsmasq-base with apt-get when missing (root),
# installs the work tree's netd into .venv with ./setup.sh, then runs bench/dns/bench.py
# with the arguments given (--record adds the results to bench/RESULTS.md).
# Takes about five minutes with the defaults; everything listens on 127.0.0.1.
set -eu
cd "$(dirname "$0")/../.."

# (Where systemd runs, the unbound package also starts a system unbound on port
# 53; the benchmark does not use it: its own unbound runs on a free loopback
# port from a generated config.)
bench/setup-tools.sh bench/dns/run.sh dnsperf:dnsperf unbound:unbound dnsmasq:dnsmasq-base
PATH="$PATH:/usr/sbin" exec .venv/bin/python bench/dns/bench.py "$@"
