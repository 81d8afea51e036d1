#!/usr/bin/env bash
# Install lstmsearch (first run only), build the bundled demo index if missing, and serve it.
#   bash scripts/demo.sh [lstmsearch demo options, e.g. --port 5007]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lstmsearch demo "$@"
