#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite on 2 processes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
bash scripts/setup_docs_browser.sh || true  # Debian's chromium for the docs browser test (which fails under CI=true without it)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONWARNINGS="ignore::DeprecationWarning"
.venv/bin/ruff check core domains fused_kernels tests benchmarks notebooks
.venv/bin/python -m pytest -n 2 --dist loadfile -q -p no:cacheprovider tests
# The core's tests again with every domain package blocked: the core must work without any domain.
VERTICALS_BLOCK_DOMAINS=1 .venv/bin/python -m pytest -n 2 --dist loadfile -q -p no:cacheprovider tests/core
