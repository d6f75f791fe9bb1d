#!/usr/bin/env bash
# Set up, ingest the shipped demo (once), and start the chat on http://127.0.0.1:7860
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False \
       ANONYMIZED_TELEMETRY=False TOKENIZERS_PARALLELISM=false OMP_WAIT_POLICY=PASSIVE
if ! .venv/bin/readnext users --limit 1 >/dev/null 2>&1; then
  .venv/bin/readnext ingest
fi
exec .venv/bin/readnext chat "$@"
