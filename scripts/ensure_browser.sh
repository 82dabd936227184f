#!/usr/bin/env bash
# A real headless browser for the page test (tests/serving/test_ui_browser.py): Debian's chromium and its driver.
set -u
command -v chromium >/dev/null && command -v chromedriver >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }
fi
command -v chromedriver >/dev/null || echo "warning: the page test needs chromium and chromium-driver (Debian)" >&2
exit 0
