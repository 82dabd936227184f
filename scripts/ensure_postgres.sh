#!/usr/bin/env bash
# The local cluster (scripts/cluster.sh) runs PostgreSQL's initdb and pg_ctl; install Debian's server when we can.
set -u
have_pg() { command -v pg_ctl >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; }
have_pg && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq postgresql >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }
fi
have_pg || echo "warning: the local cluster needs PostgreSQL (Debian: apt-get install postgresql)" >&2
exit 0
