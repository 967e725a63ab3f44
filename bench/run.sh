#!/bin/sh
# The whole benchmark suite (bench/README.md), one part after the other:
# echo (bench/echo), DNS proxy (bench/dns), TLS echo (bench/tls), a pytest
# suite with a netd per test or per session (bench/pytest_suite), the stream
# proxy (bench/proxy); each prints its Markdown tables on standard output and
# its progress on standard error.
#
#   bench/run.sh             about fifteen minutes (more on a busy machine)
#   bench/run.sh --quick     about three and a half minutes
#   bench/run.sh --record    also adds each part's results to bench/RESULTS.md
#
# Each part installs what it needs when it is missing (apt-get, root); see its
# own run.sh.  A part that fails does not stop the others; the exit status
# says whether all of them ran.
set -eu
cd "$(dirname "$0")/.."

quick=""
record=""
for argument in "$@"; do
    case "$argument" in
        --quick) quick=yes ;;
        --record) record=--record ;;
        -h | --help) sed -n '2,14s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "bench/run.sh: unknown argument $argument (--quick, --record)" >&2; exit 2 ;;
    esac
done

# Settings that keep the parts within the suite's time: shorter runs and fewer
# rounds than each part's own defaults (which are for a closer look at one part).
if [ -n "$quick" ]; then
    echo_settings="--quick"
    dns_settings="--duration 2 --latency-duration 1 --rounds 1 --miss-names 200000"
    tls_settings="--duration 1 --rounds 1 --versions 1.3 --memory-connections 1000"
    pytest_settings="--tests 50"
    proxy_settings="--quick"
else
    echo_settings=""
    dns_settings="--duration 5 --latency-duration 3 --rounds 2 --miss-names 500000"
    tls_settings="--duration 3 --rounds 2"
    pytest_settings="--tests 200"
    proxy_settings=""
fi

started=$(date +%s)
failed=""
# (The settings are unquoted on purpose: each is several words.)
bench/echo/run.sh $echo_settings $record || failed="$failed echo"
bench/dns/run.sh $dns_settings $record || failed="$failed dns"
bench/tls/run.sh $tls_settings $record || failed="$failed tls"
bench/pytest_suite/run.sh $pytest_settings $record || failed="$failed pytest_suite"
bench/proxy/run.sh $proxy_settings $record || failed="$failed proxy"
echo "bench/run.sh: the suite took $(($(date +%s) - started)) s" >&2
if [ -n "$failed" ]; then
    echo "bench/run.sh: failed:$failed" >&2
    exit 1
fi
