#!/usr/bin/env bash
# `make bench`: every CPU benchmark, one after another (each prints its own side-by-side ratio).
# GPU figures: python bench/bench_gpu.py (with 2+ GPUs it also runs bench_eval_sharding.py --gpu) and
# python bench/bench_hellaswag.py --gpu on a CUDA machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python bench/bench_prepare.py
python bench/bench_prepare_parallel.py
python bench/bench_train_cpu.py
python bench/bench_train_memory.py
python bench/bench_hellaswag.py
python bench/bench_eval_sharding.py
echo "Record the printed figures, with the machine and date, in bench/RESULTS.md."
