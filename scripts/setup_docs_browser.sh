#!/usr/bin/env bash
# Make sure a Chromium is there for the documentation site's browser test (tests/docs/test_site_browser.py).
# The test drives Debian's `chromium` package through Playwright (pip's playwright, in the dev extra);
# Playwright's own browser download is not used. Run as root, it installs the package with apt-get when missing.
set -euo pipefail

find_chromium() {
    if [ -n "${VERTICALS_CHROMIUM:-}" ] && [ -x "${VERTICALS_CHROMIUM}" ]; then
        echo "${VERTICALS_CHROMIUM}"
        return 0
    fi
    command -v chromium || command -v chromium-browser || true
}

found="$(find_chromium)"
if [ -n "$found" ]; then
    echo "setup_docs_browser: chromium found at $found"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "setup_docs_browser: chromium is not installed and this is not root, so nothing was installed." >&2
    echo "  Install it with:  sudo apt-get update && sudo apt-get install -y chromium" >&2
    echo "  or point VERTICALS_CHROMIUM at a Chromium or Chrome binary. Without one, the browser test" >&2
    echo "  skips (and fails under CI=true)." >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_docs_browser: chromium is not installed and there is no apt-get here; install Chromium with" >&2
    echo "  this system's package manager, or set VERTICALS_CHROMIUM to its binary." >&2
    exit 1
fi

echo "setup_docs_browser: installing Debian's chromium with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium
found="$(find_chromium)"
if [ -z "$found" ]; then
    echo "setup_docs_browser: apt-get finished but no chromium binary is on PATH." >&2
    exit 1
fi
echo "setup_docs_browser: chromium installed at $found"
