#!/bin/sh
# What a benchmark's run.sh needs before it runs its bench.py, from the
# repository root: bench/setup-tools.sh CALLER COMMAND:PACKAGE...
# Installs with apt-get (root) the Debian PACKAGE of each COMMAND found neither
# on PATH nor in /usr/sbin (COMMAND may be alternatives, "stunnel4|stunnel";
# an absolute path stands for a file the package provides, such as the header
# /usr/include/openssl/ssl.h of libssl-dev, which the load generator needs),
# then installs the work tree's netd into .venv with ./setup.sh (pip install .,
# made again each time, so that the numbers are those of the code in the tree).
set -eu
cd "$(dirname "$0")/.."
caller="$1"
shift

found() {
    case "$1" in
    /*) [ -e "$1" ] ;;
    *) command -v "$1" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$1" >/dev/null 2>&1 ;;
    esac
}

missing=""
for entry in "$@"; do
    commands="${entry%%:*}"
    present=""
    oldIFS="$IFS"
    IFS="|"
    for command in $commands; do
        if found "$command"; then present=yes; fi
    done
    IFS="$oldIFS"
    [ -n "$present" ] || missing="$missing ${entry#*:}"
done
if [ -n "$missing" ]; then
    echo "$caller: installing$missing with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q $missing >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $missing >/dev/null; }
fi

./setup.sh
