#!/usr/bin/env bash
# wrk is the load client of the serving and load benchmarks; install it from Debian when we can.
set -u
command -v wrk >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
fi
command -v wrk >/dev/null || echo "warning: the serving and load benchmarks need wrk (Debian: apt-get install wrk)" >&2
exit 0
