#!/usr/bin/env bash
# Set up the time-series extra and run the default job: LoRA on the frozen MiniLM, GunPoint.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh timeseries
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/verticals run timeseries/gunpoint_lora "$@"
