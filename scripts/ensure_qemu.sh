#!/usr/bin/env bash
# qemu-user (8 or newer) runs the reproducibility fingerprint as another vendor's CPU
# (bench/repro_fingerprint.py --emulate; a test does). Debian 13 ships it; on Debian 12 it comes from
# the release's backports suite, added from the mirror this machine already uses.
set -u
recent() {
  local major
  major=$(qemu-x86_64 --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1)
  [ -n "$major" ] && [ "$major" -ge 8 ]
}
recent && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  apt-get install -y -qq qemu-user >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq qemu-user >/dev/null; }
  if ! recent && [ "$codename" = bookworm ]; then
    sources=/etc/apt/sources.list.d/debian.sources
    mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' "$sources" 2>/dev/null | head -1)
    [ -n "$mirror" ] || mirror=$(sed -n 's/^deb  *\([^ ]*\)  *bookworm .*/\1/p' /etc/apt/sources.list 2>/dev/null | head -1)
    if [ -n "$mirror" ]; then
      printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$mirror" > /etc/apt/sources.list.d/bookworm-backports.sources
      apt-get update -qq && apt-get install -y -qq -t bookworm-backports qemu-user >/dev/null
    fi
  fi
fi
recent || echo "warning: the reproducibility fingerprint's emulation needs qemu-user 8 or newer (Debian: apt-get install qemu-user)" >&2
exit 0
