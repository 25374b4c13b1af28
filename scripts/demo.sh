#!/usr/bin/env bash
# The whole pipeline on the embedded offline corpus, sized for 2 CPU cores. Called by `make demo`.
# Each run writes a fresh folder under runs/ so nothing from an earlier demo is overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-runs/demo-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RUN_DIR"
echo "== demo: writing everything under $RUN_DIR"

echo "== 1/1 prepare the embedded corpus"
python prepare_data.py --dataset embedded --output_dir "$RUN_DIR/data" --seq_len 128

echo
echo "== demo finished. Results are in $RUN_DIR:"
echo "   data manifest: $RUN_DIR/data/manifest.json"
