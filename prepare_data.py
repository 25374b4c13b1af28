"""Tokenize a corpus once with GPT-2's tokenizer, split it by document ID, pack uint16 blocks for training.

Offline, seconds (the embedded corpus: ~630K tokens of Python's own documentation):
    python prepare_data.py --dataset embedded --output_dir runs/data --seq_len 128

FineWeb-Edu from the Hub on one machine (the default executor: sample-10BT is downloaded into the datasets cache, then
tokenized with datasets.map on all cores; sample-100BT and full are streamed through one process):
    python prepare_data.py --dataset HuggingFaceFW/fineweb-edu --subset sample-10BT --output_dir data/prepared/edu10B
    python prepare_data.py --max_docs 20000 --output_dir data/prepared/edu-slice    # a quick streamed slice

At full scale, datatrove tasks (each streams its share of the parquet files straight from the Hub or a folder):
resumable (re-run the same command after a crash: only unfinished tasks run again) and the same dataset on any
executor. See edugpt/corpus/datatrove.py for how it works and README.md for the Slurm and Ray routes.
    python prepare_data.py --subset sample-100BT --output_dir data/prepared/edu100B --executor local --tasks 512 --workers 64
    python prepare_data.py --subset full --output_dir /shared/edu-full --executor slurm --tasks 4096 --slurm_partition cpu
    RAY_ADDRESS=head:6379 python prepare_data.py --subset sample-350BT --output_dir /shared/edu350B \\
        --executor ray --tasks 2048

Local parquet/jsonl in FineWeb-Edu's schema (`text`, optional `id`), a file or a directory (datatrove tasks: parquet):
    python prepare_data.py --dataset path/to/shards/ --output_dir data/prepared/mine --val_fraction 0.005

Re-check a prepared dataset (disjoint splits, split rule, counts, the blocks' content digests, the record of its files)
and exit non-zero if anything is off:
    python prepare_data.py --verify runs/data

Arguments may also come from a YAML recipe: `--config recipe.yaml` (CLI flags override it).
Output layout and manifest keys: see `edugpt/corpus/layout.py` and `edugpt/corpus/manifest.py`.
"""

from __future__ import annotations

from edugpt.config.arguments import ExecutorArguments, PrepareDataArguments
from edugpt.config.cli import parse_config, run, setup_logging
from edugpt.corpus.datatrove import prepare_parallel
from edugpt.corpus.local import prepare_dataset
from edugpt.corpus.verify import verify


def main(argv=None) -> None:
    setup_logging()
    args, executor = parse_config([PrepareDataArguments, ExecutorArguments], argv)
    if args.verify is not None:
        manifest = verify(args.verify)
        splits = manifest["splits"]
        print(f"ok: {args.verify} verified — " + ", ".join(
            f"{name}: {s['documents']:,} documents, {s['blocks']:,} blocks of {manifest['seq_len']}"
            for name, s in splits.items()))
        return
    if executor.executor == "datasets":
        prepare_dataset(args)
    else:
        prepare_parallel(args, executor)


if __name__ == "__main__":
    run(main)
