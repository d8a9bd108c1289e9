#!/usr/bin/env bash
# AI Artist Studio
#   ./launch.sh [app options]   set up .venv (first run) and start the studio on the built-in model
#   ./launch.sh test [pytest options]   set up .venv (with test tools) and run the whole test suite
#   ./launch.sh bench           print the benchmark numbers
#   ./launch.sh curate DIR [--json OUT]   score a folder of images (quality, duplicates, verdicts)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON_BIN="${PYTHON:-}"
if [ -z "$PYTHON_BIN" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON_BIN="$candidate"; break; fi
  done
fi
MODE="${1:-run}"

if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv with $PYTHON_BIN"
  "$PYTHON_BIN" -m venv .venv
fi
# requirements.lock: the exact versions of every dependency and the test tools (the tests passed with these);
# refresh it after changing pyproject.toml (add --upgrade to move to newer versions within its ranges):
#   uv pip compile pyproject.toml --extra test --universal --python-version 3.11 -o requirements.lock
STAMP=".venv/.installed-$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
  echo "Installing dependencies (first run, or pyproject.toml / requirements.lock changed)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.lock
  .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .  # built with the lock's setuptools
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
    exec .venv/bin/python -m bench "$@"
    ;;
  curate)
    shift
    exec .venv/bin/python -m studio.curation.cli "$@"
    ;;
  *)
    if [ "$MODE" = "run" ] && [ $# -gt 0 ]; then shift; fi
    exec .venv/bin/python app.py --inbrowser "$@"
    ;;
esac
