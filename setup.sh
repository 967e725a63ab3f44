#!/bin/sh
# Prepare this checkout on a fresh Debian machine with Python 3.11: a virtualenv in
# .venv with netd installed.  With --test, also what the test suite needs: the test
# extra, the example third-party plugin of tests/thirdparty/, and the Debian tools
# the integration tests drive: socat, dig, dnsmasq, openssl, sslscan (the TLS scanner), curl, ss,
# systemd-socket-activate and systemd-analyze (installed with apt-get when missing; needs root).
# Safe to run again: it reuses what is already there.
set -eu
cd "$(dirname "$0")"

aptInstall() {
    echo "setup.sh: installing $* with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$@" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "$@" >/dev/null; }
}

# Debian's python3 ships venv (with ensurepip) separately.
python3 -c 'import ensurepip, venv' 2>/dev/null || aptInstall python3-venv

if [ "${1:-}" = "--test" ]; then
    # command:Debian package, for each tool the integration tests drive.
    missing=""
    # systemd: systemd-socket-activate and systemd-analyze (installing the package
    # in a container starts nothing; the tests only run these two tools).
    for entry in socat:socat dig:bind9-dnsutils dnsmasq:dnsmasq-base openssl:openssl sslscan:sslscan curl:curl ss:iproute2 systemd-socket-activate:systemd; do
        command -v "${entry%%:*}" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "${entry%%:*}" >/dev/null 2>&1 \
            || missing="$missing ${entry#*:}"
    done
    [ -z "$missing" ] || aptInstall $missing
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
pip="./.venv/bin/python -m pip install -q --disable-pip-version-check"
# netd is distributed as netd-daemon since 0.2.0: a distribution named netd in
# .venv is netd 0.1 or the package index's unrelated netd, and owns netd/ too.
./.venv/bin/python -m pip uninstall -q -y --disable-pip-version-check netd 2>/dev/null || true
if [ "${1:-}" = "--test" ]; then
    # In two steps: the pip of Python 3.11's venv cannot resolve the plugin's
    # dependency on netd-daemon from '.[test]' given beside it.
    $pip -e '.[test]'
    $pip ./tests/thirdparty
else
    $pip .
fi
