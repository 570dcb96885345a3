#!/usr/bin/env bash
# The test suite, against the real PostgreSQL, RabbitMQ and an S3 server (moto) on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q "$@"
