#!/usr/bin/env bash
# Makes sure a headless Chromium is on the machine for the dashboard's browser test
# (tests/browser/): Debian's `chromium` package and a font to draw text with, installed with
# apt-get when this runs as root and it is missing; quick and silent when it is there.
# Playwright (the dev extra) drives it through `executable_path` and never downloads a
# browser of its own.
#
# Never fails the build: where Chromium cannot be installed (not root, no apt-get, no
# network), it says so, and the browser test skips with that reason.
set -u

find_chromium() {
    command -v chromium || command -v chromium-browser || true
}

if [[ -n "$(find_chromium)" ]]; then
    exit 0
fi
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: no chromium and not root with apt-get; the browser test will skip"
    exit 0
fi
echo "ensure-chromium: installing Debian's chromium for the browser test ..."
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; then
    echo "ensure-chromium: $("$(find_chromium)" --version 2>/dev/null | head -n 1)"
else
    echo "ensure-chromium: apt-get could not install chromium; the browser test will skip"
fi
exit 0
