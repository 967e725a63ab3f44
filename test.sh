#!/bin/sh
# Set up everything the test suite needs on a fresh Debian machine with Python 3.11,
# then run the whole suite.  Safe to run again: it reuses what is already there.
#   - Debian tools the integration tests drive (socat), installed with apt-get if missing;
#   - a virtualenv in .venv with netd (editable), its test extra, and the example
#     third-party plugin of tests/thirdparty/ (installed like any plugin package);
#   - pytest over tests/ (arguments are passed on: ./test.sh -k framing).
set -eu
cd "$(dirname "$0")"

missing=""
for tool in socat; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    echo "installing$missing with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q $missing >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $missing >/dev/null; }
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' ./tests/thirdparty
exec .venv/bin/python -m pytest "$@"
