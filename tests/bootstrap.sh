#!/bin/sh
# Everything the test suite needs, on a machine with only Python, pip and apt:
# Debian's Chromium (the JupyterLab test drives it) and a virtualenv in .venv
# holding the package with its test extras.
set -eu
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
fi
python3 -m venv .venv
.venv/bin/pip install -q '.[test]'
