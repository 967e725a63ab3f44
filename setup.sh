#!/bin/sh
# Prepare this checkout on a fresh Debian machine with Python 3.11.
#
#   ./setup.sh         the quick start: a virtualenv in .venv with netd installed as a
#                      user installs it (pip install .), and the tools the README's
#                      quick-start examples use: socat, dig, openssl, curl.
#   ./setup.sh --test  what the test suite needs, in a virtualenv of its own,
#                      .venv-test: netd installed editable with the test extra and the
#                      example third-party plugin of tests/thirdparty/, and the Debian
#                      tools the integration tests drive: socat, dig, dnsmasq, openssl,
#                      sslscan (the TLS scanner), curl, ss, systemd-socket-activate and
#                      systemd-analyze, redis-server, haproxy, dnsdist and dnsperf (the
#                      rolling-restart tests), kubectl (kustomize), buildah and
#                      mmdebstrap (the container image), gcc and libssl-dev (the
#                      benchmarks' load generator), and node with npm,
#                      which installs toxiproxy's Node client into .npm-test (tests/
#                      integration/test_toxiproxy_clients.py).  It leaves .venv as the
#                      quick start made it.
#
# Missing Debian packages are installed with apt-get (which needs root); without
# root, the quick start's tools are named with their install line instead.
# Safe to run again: it reuses what is already there.
set -eu
cd "$(dirname "$0")"

# command:Debian package, for each tool the quick-start examples run.
EXAMPLE_TOOLS="socat:socat dig:bind9-dnsutils openssl:openssl curl:curl"
# The same for each tool the integration tests drive.  systemd: systemd-socket-activate
# and systemd-analyze (installing the package in a container starts nothing; the tests
# only run these two tools).
TEST_TOOLS="socat:socat dig:bind9-dnsutils dnsmasq:dnsmasq-base openssl:openssl sslscan:sslscan curl:curl ss:iproute2 systemd-socket-activate:systemd redis-server:redis-server node:nodejs npm:npm haproxy:haproxy dnsdist:dnsdist dnsperf:dnsperf kubectl:kubernetes-client buildah:buildah mmdebstrap:mmdebstrap cc:gcc"

# The version of toxiproxy's Node client the toxiproxy API is tested with.
NODE_TOXIPROXY_CLIENT=4.1.0

aptInstall() {
    echo "setup.sh: installing $* with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$@" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "$@" >/dev/null; }
}

# The Debian packages of the tools in the list $1 that are not installed.
missingPackages() {
    missing=""
    for entry in $1; do
        command -v "${entry%%:*}" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "${entry%%:*}" >/dev/null 2>&1 \
            || missing="$missing ${entry#*:}"
    done
    echo $missing
}

# Debian's python3 ships venv (with ensurepip) separately.
python3 -c 'import ensurepip, venv' 2>/dev/null || aptInstall python3-venv

# netd is distributed as netd-daemon since 0.2.0: a distribution named netd in a
# virtualenv is netd 0.1 or the package index's unrelated netd, and owns netd/ too.
dropOldName() {
    "./$1/bin/python" -m pip uninstall -q -y --disable-pip-version-check netd 2>/dev/null || true
}

if [ "${1:-}" = "--test" ]; then
    missing=$(missingPackages "$TEST_TOOLS")
    # The benchmarks' load generator (C, libssl), which the suite runs briefly.
    [ -e /usr/include/openssl/ssl.h ] || missing="$missing libssl-dev"
    [ -z "$missing" ] || aptInstall $missing
    [ -x .venv-test/bin/python ] || python3 -m venv .venv-test
    dropOldName .venv-test
    # In two steps: the pip of Python 3.11's venv cannot resolve the plugin's
    # dependency on netd-daemon from '.[test]' given beside it.
    ./.venv-test/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    ./.venv-test/bin/python -m pip install -q --disable-pip-version-check ./tests/thirdparty
    # toxiproxy's Node client, unchanged from the npm registry, outside the tracked files.
    [ -d .npm-test/node_modules/toxiproxy-node-client ] \
        || npm install --silent --no-audit --no-fund --prefix .npm-test "toxiproxy-node-client@$NODE_TOXIPROXY_CLIENT" >/dev/null
else
    missing=$(missingPackages "$EXAMPLE_TOOLS")
    if [ -n "$missing" ]; then
        if [ "$(id -u)" = 0 ]; then
            aptInstall $missing
        else
            echo "setup.sh: the quick-start examples need $missing; install them with: sudo apt-get install $missing" >&2
        fi
    fi
    [ -x .venv/bin/python ] || python3 -m venv .venv
    dropOldName .venv
    ./.venv/bin/python -m pip install -q --disable-pip-version-check .
    # Before .venv-test, ./setup.sh --test put the test plugin into .venv: take it out.
    if ./.venv/bin/python -m pip show -q netd-reverse >/dev/null 2>&1; then
        ./.venv/bin/python -m pip uninstall -q -y --disable-pip-version-check netd-reverse
    fi
fi
