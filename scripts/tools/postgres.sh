#!/usr/bin/env bash
# Makes sure PostgreSQL's server binaries are installed (Debian's
# `postgresql` package); the tests start their own server on loopback in a
# temporary directory, so the package's own cluster is neither needed nor
# started. Idempotent: a machine that has them returns at once.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/postgres" > /dev/null; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "postgres.sh: PostgreSQL is missing; run as root, or: apt-get install postgresql" >&2
    exit 1
fi
echo "postgres.sh: installing Debian's postgresql" >&2
export DEBIAN_FRONTEND=noninteractive
# Install the binaries without starting the package's own cluster.
mkdir -p /etc/postgresql-common
if [[ ! -e /etc/postgresql-common/createcluster.conf ]]; then
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
fi
apt-get update -qq
apt-get install -y -qq postgresql util-linux > /dev/null
compgen -G "/usr/lib/postgresql/*/bin/postgres" > /dev/null
