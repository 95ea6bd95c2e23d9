#!/usr/bin/env bash
# Install Debian's chromium and chromium-driver for the report's browser test, if missing.
# Needs root and apt (as on CI); elsewhere it says what to do and the test is skipped.
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: chromium/chromedriver missing; the browser test of the report will be skipped" \
       "(install Debian's chromium and chromium-driver to run it)" >&2
  exit 0
fi
echo "installing Debian's chromium and chromium-driver for the report's browser test..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
  || echo "note: could not install chromium; the browser test will be skipped" >&2
exit 0
