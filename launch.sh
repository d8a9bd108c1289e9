#!/usr/bin/env bash
# AI Artist Studio
#   ./launch.sh [app options]   set up .venv (first run) and start the studio on the built-in model
#   ./launch.sh test [pytest options]   set up .venv (with test tools) and run the whole test suite
#   ./launch.sh bench           print the benchmark numbers
set -euo pipefail
cd "$(dirname "$0")"

PYTHON_BIN="${PYTHON:-}"
if [ -z "$PYTHON_BIN" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON_BIN="$candidate"; break; fi
  done
fi
MODE="${1:-run}"
EXTRAS=""
if [ "$MODE" = "test" ] || [ "$MODE" = "bench" ]; then EXTRAS="[test]"; fi

if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv with $PYTHON_BIN"
  "$PYTHON_BIN" -m venv .venv
fi
STAMP=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)${EXTRAS:+-test}"
if [ ! -f "$STAMP" ]; then
  echo "Installing dependencies (first run only)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
  .venv/bin/python -m pip install --quiet -e ".${EXTRAS}"
  touch "$STAMP"
fi

ensure_chromium() {
  if [ -x /usr/bin/chromium ]; then return; fi
  echo "Installing Debian chromium for the browser tests"
  if [ "$(id -u)" = "0" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
}

case "$MODE" in
  test)
    shift
    ensure_chromium
    exec .venv/bin/python -m pytest "$@"
    ;;
  bench)
    shift
    exec .venv/bin/python -m studio.bench "$@"
    ;;
  *)
    if [ "$MODE" = "run" ] && [ $# -gt 0 ]; then shift; fi
    exec .venv/bin/python app.py --inbrowser "$@"
    ;;
esac
