#!/usr/bin/env bash
# Sets up a virtual environment with the serving extra only (no torch) and starts the server
# on the shipped default model. Usage: bash scripts/serve.sh [seg-service args...]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-serve
.venv-serve/bin/python -m pip install -q --upgrade pip
.venv-serve/bin/python -m pip install -q -e ".[serve]"
exec .venv-serve/bin/seg-service "$@"
