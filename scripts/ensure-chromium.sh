#!/bin/sh
# Makes sure Debian's Chromium is at $CHROMIUM (default /usr/bin/chromium) for the live view's browser
# test (tests/e2e/test_liveview.py, driven by Playwright without a browser download).
#
# Idempotent: when the binary is there it only says so. When it is missing and this user is root on
# a Debian/Ubuntu machine it says what it runs, then runs `apt-get update` and `apt-get install -y
# chromium`. Otherwise it prints the command to run; the browser test then skips locally and fails
# when CI is set. Set INFERGATE_NO_APT=1 to never install.
set -eu
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
  echo "chromium: $CHROMIUM is present ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
  exit 0
fi
if [ "${INFERGATE_NO_APT:-0}" != 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "chromium: $CHROMIUM is missing; installing Debian's chromium package as root:"
  echo "  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium"
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; then
    echo "chromium: installed ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
  else
    echo "chromium: apt-get failed; the browser test will skip (or fail when CI is set)" >&2
  fi
else
  echo "chromium: $CHROMIUM is missing; the browser test needs it. Install it with:"
  echo "  sudo apt-get install chromium    (Debian/Ubuntu)"
fi
