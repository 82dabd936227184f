#!/usr/bin/env bash
# Create the project's virtual environment, installing Debian's venv support first if it is missing.
set -euo pipefail
python="$1"
venv="$2"
if [ -x "$venv/bin/python" ]; then
  exit 0
fi
if ! command -v "$python" >/dev/null; then
  echo "error: $python not found; install Python 3.11 (Debian: apt-get install python3 python3-venv)" >&2
  exit 2
fi
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$version" != "3.11" ]; then
  echo "error: transferline needs Python 3.11, $python is $version (set PYTHON=python3.11)" >&2
  exit 2
fi
if ! "$python" -m venv "$venv" 2>/dev/null; then
  rm -rf "$venv"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv git
    "$python" -m venv "$venv"
  else
    echo "error: '$python -m venv' failed; install python3-venv (apt-get install python3-venv)" >&2
    exit 2
  fi
fi
