"""Tokenize a corpus once with GPT-2's tokenizer, split it by document ID, pack uint16 blocks for training.

Offline, seconds (the embedded corpus: ~630K tokens of Python's own documentation):
    python prepare_data.py --dataset embedded --output_dir runs/data --seq_len 128

FineWeb-Edu from the Hub (sample-10BT is downloaded into the datasets cache, then tokenized on all cores; sample-100BT
and full are streamed so the raw set is never held whole):
    python prepare_data.py --dataset HuggingFaceFW/fineweb-edu --subset sample-10BT --output_dir data/prepared/edu10B
    python prepare_data.py --subset sample-100BT --output_dir data/prepared/edu100B --num_proc 16
    python prepare_data.py --max_docs 20000 --output_dir data/prepared/edu-slice    # a quick streamed slice

Local parquet/jsonl in FineWeb-Edu's schema (`text`, optional `id`), a file or a directory:
    python prepare_data.py --dataset path/to/shards/ --output_dir data/prepared/mine --val_fraction 0.005

Re-check a prepared dataset (disjoint splits, split rule, counts) and exit non-zero if anything is off:
    python prepare_data.py --verify runs/data

Arguments may also come from a YAML recipe: `--config recipe.yaml` (CLI flags override it).
Output layout and manifest keys: see `edugpt/data.py` and the data contract.
"""

from __future__ import annotations

import logging

from edugpt.cli import parse_config, run
from edugpt.data import PrepareDataArguments, prepare, verify


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (args,) = parse_config([PrepareDataArguments], argv)
    if args.verify is not None:
        manifest = verify(args.verify)
        splits = manifest["splits"]
        print(f"ok: {args.verify} verified — " + ", ".join(
            f"{name}: {s['documents']:,} documents, {s['blocks']:,} blocks of {manifest['seq_len']}"
            for name, s in splits.items()))
        return
    prepare(args)


if __name__ == "__main__":
    run(main)
