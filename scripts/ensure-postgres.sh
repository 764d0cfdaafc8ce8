#!/bin/sh
# PostgreSQL server binaries from Debian's packages, for the accountant's PostgreSQL ledger tests
# (cluster/postgres.py starts a throwaway server on loopback). Idempotent: does nothing when a
# server is installed already.
set -e
if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
