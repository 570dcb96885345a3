#!/usr/bin/env bash
# Create .venv and install Cartridge with its test dependencies.
# torch is pinned to 2.13.0 (CPU) in pyproject.toml: an unpinned torch pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
echo "installed into .venv: run 'source .venv/bin/activate' to use the cartridge command"
