#!/bin/sh
# Run the whole test suite on a fresh Debian machine with Python 3.11: set-up
# (./setup.sh --test) first, then pytest over tests/.  Arguments go to pytest
# (./test.sh -k framing).
set -eu
cd "$(dirname "$0")"
./setup.sh --test
exec .venv/bin/python -m pytest "$@"
