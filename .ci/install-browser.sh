#!/usr/bin/env bash
# Install headless Chromium for the browser test (tests/test_browser.py) when it is missing.
# Idempotent and quiet: does nothing when /usr/bin/chromium exists. Needs root or passwordless sudo;
# on a machine without either it prints why and exits 0, and the browser test then skips with that reason.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "install-browser: /usr/bin/chromium is missing and this user cannot run apt-get (no root, no sudo)" >&2
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: /usr/bin/chromium is missing and apt-get is not available on this system" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Quiet on success; the apt output is shown only when something fails.
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install-browser: apt-get failed (see above)" >&2
    exit 1
fi
echo "install-browser: installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
