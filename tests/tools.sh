#!/usr/bin/env bash
# Tools the test suite needs beyond the Python packages: Debian's prometheus package
# (the prometheus server and promtool) and openssl. Installs what is missing where it
# can (root with apt-get, as on a CI machine); otherwise stops and names it. With the
# explicit opt-out NNSERVE_TEST_ALLOW_MISSING_TOOLS=1 it goes on, and the tests that
# need a missing tool skip, each listed with its reason in pytest's summary.
set -euo pipefail

declare -A package_of=([prometheus]=prometheus [promtool]=prometheus [openssl]=openssl)
missing=()
packages=()
for tool in prometheus promtool openssl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    missing+=("$tool")
    [[ " ${packages[*]} " == *" ${package_of[$tool]} "* ]] || packages+=("${package_of[$tool]}")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "tests need ${missing[*]}: installing Debian packages ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  exit 0
fi
if [ "${NNSERVE_TEST_ALLOW_MISSING_TOOLS:-}" = "1" ]; then
  echo "warning: ${missing[*]} missing; the tests that need them will skip" \
    "(NNSERVE_TEST_ALLOW_MISSING_TOOLS=1)" >&2
  exit 0
fi
cat >&2 <<MSG
error: the tests need ${missing[*]}, which are not on PATH.
  Install them (Debian/Ubuntu): sudo apt-get install ${packages[*]}
  (run as root with apt-get, make test installs them itself),
  or run the other tests only: NNSERVE_TEST_ALLOW_MISSING_TOOLS=1 make test
MSG
exit 1
