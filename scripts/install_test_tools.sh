#!/usr/bin/env bash
# Installs the system tools some tests use: Debian's prometheus (prometheus + promtool).
# Idempotent, and never fails the build: where it cannot install, it says why and the tests skip.
set -u

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_test_tools: not root, prometheus not installed (Prometheus tests will skip)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_test_tools: no apt-get, prometheus not installed (Prometheus tests will skip)"
    exit 0
fi
echo "install_test_tools: installing Debian's prometheus package"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; then
    echo "install_test_tools: apt-get could not install prometheus (Prometheus tests will skip)"
    exit 0
fi
exit 0
