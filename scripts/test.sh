#!/usr/bin/env bash
# Set up, build the native tests and benchmarks (CUDA kernels too, when nvcc is present),
# then run ctest and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

PY=${PYTHON:-python3}
BUILD=build/cpp
echo "==> cmake build ($BUILD)"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DQAT_BUILD_TESTS=ON \
  -DQAT_BUILD_BENCHMARKS=ON -DPython_EXECUTABLE="$(command -v "$PY")" >/dev/null
cmake --build "$BUILD"

echo "==> ctest"
(cd "$BUILD" && ctest --output-on-failure)

echo "==> pytest"
QAT_CPP_BUILD_DIR="$PWD/$BUILD" "$PY" -m pytest -q tests/python "$@"
