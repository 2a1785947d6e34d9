#!/usr/bin/env bash
# Sets up a virtual environment with every extra, runs ruff and mypy, then the test suite.
# Usage: bash scripts/test.sh [pytest args...]     e.g. bash scripts/test.sh -m "not slow" (the fast subset)
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
# The browser test drives Debian's Chromium (no browser download); install it when we can.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "note: could not install chromium; the browser test will skip"
fi
# Static checks first (configured in pyproject.toml): lint of every Python file, types of the packages.
.venv/bin/ruff check seg_service seg_training seg_client seg_bench tests scripts
# Formatting: `ruff format` (line length 110, pyproject.toml); CI fails on any file it would change.
.venv/bin/ruff format --check seg_service seg_training seg_client seg_bench tests scripts
.venv/bin/mypy
# The import layers (pyproject.toml [tool.importlinter]): format <- kernels <- runtime <- api; training and
# seg_bench use only the runtime's public API; the client stands alone.
.venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest "$@"
