#!/usr/bin/env bash
# The whole pipeline on the embedded offline corpus, sized for 2 CPU cores. Called by `make demo`.
# prepare -> pretrain -> evaluate -> samples -> SFT -> DPO -> chat side by side -> report -> publish dry run.
# Each run writes a fresh folder under runs/ so nothing from an earlier demo is overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-runs/demo-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RUN_DIR"
START=$SECONDS
step() { echo; echo "== [$((SECONDS - START))s] $*"; }
echo "== demo: writing everything under $RUN_DIR"

step "1/8 prepare the embedded corpus (Python docs in FineWeb-Edu's schema), split by document ID"
python prepare_data.py --dataset embedded --output_dir "$RUN_DIR/data" --seq_len 128 --val_fraction 0.05
python prepare_data.py --verify "$RUN_DIR/data"

step "2/8 pretrain the smoke GPT-2 with Trainer (configs/smoke.yaml)"
python train_hf.py --config configs/smoke.yaml --dataset_dir "$RUN_DIR/data" --output_dir "$RUN_DIR/pretrain"

step "3/8 samples by step (\"Once upon a time\")"
cat "$RUN_DIR/pretrain/samples.md"

step "4/8 evaluate the final model with lm-eval on the HellaSwag-format smoke file (built from Python docs, not HellaSwag)"
python eval_harness.py --model "$RUN_DIR/pretrain" --tasks hellaswag --limit 100 \
  --hellaswag_file edugpt/assets/eval/python_docs_hellaswag_format_smoke.jsonl --output_dir "$RUN_DIR/eval"

step "5/8 supervised finetuning with TRL (configs/sft_smoke.yaml)"
python finetune/sft.py --config configs/sft_smoke.yaml --model_name_or_path "$RUN_DIR/pretrain" --output_dir "$RUN_DIR/sft"

step "6/8 preference optimisation with TRL DPO (configs/dpo_smoke.yaml)"
python finetune/dpo.py --config configs/dpo_smoke.yaml --model_name_or_path "$RUN_DIR/sft" --output_dir "$RUN_DIR/dpo"

step "7/8 one chat reply from the base, SFT and DPO models"
python -m edugpt.model.chat --compare "$RUN_DIR/pretrain" "$RUN_DIR/sft" "$RUN_DIR/dpo" --message "What is the capital of France?"

step "8/8 model card and a publishing dry run (the Hub is not contacted)"
python -m edugpt.report.card "$RUN_DIR/pretrain"
python publish.py "$RUN_DIR/pretrain" --hub_model_id you/edugpt-demo --branches --dry_run "$RUN_DIR/publish-dry-run"

echo
echo "== demo finished in $((SECONDS - START))s. Results are in $RUN_DIR:"
echo "   report (model card):  $RUN_DIR/pretrain/README.md"
echo "   loss curve:           $RUN_DIR/pretrain/images/train-loss.png"
echo "   HellaSwag-format curve: $RUN_DIR/pretrain/images/hellaswag.png"
echo "   samples by step:      $RUN_DIR/pretrain/samples.md"
echo "   metrics:              $RUN_DIR/pretrain/metrics.jsonl"
echo "   lm-eval results:      $RUN_DIR/eval"
echo "   SFT / DPO models:     $RUN_DIR/sft  $RUN_DIR/dpo  (cards: README.md in each)"
echo "   publish dry run:      $RUN_DIR/publish-dry-run"
echo
echo "   Open the page on these runs (curves, samples, chat side by side; needs pip install -e \".[app]\"):"
echo "     python -m edugpt.app.page $RUN_DIR/pretrain $RUN_DIR/sft $RUN_DIR/dpo"
