#!/usr/bin/env bash
# Set up (with test tools) and run the whole test suite. Used by `make test` and .ci/run.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test || exit 1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False \
       ANONYMIZED_TELEMETRY=False TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
# One torch thread for the tiny LLM: on 2 shared cores, 2 threads were 3-60x slower (bench_llm).
export READNEXT_LLM_THREADS=${READNEXT_LLM_THREADS:-1}
# Lint and format first (seconds): the style rules live in pyproject.toml [tool.ruff].
.venv/bin/ruff check . && .venv/bin/ruff format --check . || { echo "ruff: fix the lines above (ruff check --fix . && ruff format .)" >&2; exit 1; }
.venv/bin/python -m pytest "$@"
rc=$?
if [[ $rc == 5 ]]; then
  echo "pytest collected no tests: treating as failure (a suite that runs nothing proves nothing)" >&2
  exit 1
fi
exit $rc
