"""prepare_data.py vs the original project's fineweb.py (after karpathy's build-nanogpt) on the same ≥50 MB of text.

    python bench/bench_prepare.py                    # ~60 MB parquet corpus, all cores, 2 alternating rounds
    python bench/bench_prepare.py --min_mb 200 --rounds 3

The input is the embedded corpus (Python docs) repeated with varied paragraph order and distinct ids, written once to
bench/out/ as parquet (FineWeb-Edu's format). Both sides run as fresh subprocesses with an empty datasets cache, on
the same number of processes, and are timed wall-clock from launch to exit:
  * baseline: load_dataset -> multiprocessing.Pool(nprocs).imap(tokenize, docs, chunksize=16), tiktoken
    encode_ordinary per document, <|endoftext|> + tokens as numpy uint16, written as .npy shards; no split.
    (fineweb.py uses os.cpu_count()//2 processes; here it gets the same count as prepare_data.py.)
  * ours: `python prepare_data.py --dataset <the parquet> --num_proc N`: ID split, datasets.map, per-split packing,
    Arrow save_to_disk, manifest, doc_ids.parquet.
Printed: tokens, seconds and tokens/s per run, and the ratio ours / baseline (target >= 1.0x).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def corpus_rows(min_mb: float) -> tuple[list[dict], int]:
    """The embedded corpus repeated until it holds `min_mb` MB of text; each copy shuffles paragraphs, new ids.
    The one corpus maker of the prepare benches (bench_prepare_parallel.py writes the same rows as several files)."""
    import random

    import pyarrow.parquet as pq

    from edugpt.corpus.sources import EMBEDDED_CORPUS

    base = pq.read_table(EMBEDDED_CORPUS).to_pylist()
    rows, size, copy = [], 0, 0
    while size < min_mb * 1e6:
        rng = random.Random(copy)
        for row in base:
            paragraphs = row["text"].split("\n\n")
            rng.shuffle(paragraphs)
            text = "\n\n".join(paragraphs)
            rows.append({**row, "text": text, "id": f"<urn:bench:{copy}:{row['id']}>"})
            size += len(text.encode())
        copy += 1
    return rows, size


def make_corpus(path: Path, min_mb: float) -> tuple[int, int]:
    """`corpus_rows` as one parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, size = corpus_rows(min_mb)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return len(rows), size


# ------------------------------------------------------------------------------------ the baseline, as fineweb.py

def baseline(corpus: str, out_dir: str, nprocs: int, cache_dir: str) -> None:
    """fineweb.py's structure, minus the Hub download: tiktoken + Pool.imap + uint16 .npy shards of 1e8 tokens."""
    import multiprocessing as mp

    import numpy as np
    from datasets import load_dataset
    from tqdm import tqdm

    from edugpt.model.tokenizer import gpt2_tiktoken

    started = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    shard_size = int(1e8)
    fw = load_dataset("parquet", data_files=corpus, split="train", cache_dir=cache_dir)
    global _enc, _eot
    _enc = gpt2_tiktoken()  # tiktoken.get_encoding("gpt2") needs the network; these are the same ranks
    _eot = _enc._special_tokens["<|endoftext|>"]
    total = 0
    with mp.Pool(nprocs) as pool:
        shard_index = 0
        all_tokens_np = np.empty((shard_size,), dtype=np.uint16)
        token_count = 0
        progress_bar = None
        for tokens in pool.imap(_tokenize, fw, chunksize=16):
            total += len(tokens)
            if token_count + len(tokens) < shard_size:
                all_tokens_np[token_count:token_count + len(tokens)] = tokens
                token_count += len(tokens)
                if progress_bar is None:
                    progress_bar = tqdm(total=shard_size, unit="tokens", desc=f"Shard {shard_index}")
                progress_bar.update(len(tokens))
            else:
                split = "val" if shard_index == 0 else "train"
                remainder = shard_size - token_count
                progress_bar.update(remainder)
                all_tokens_np[token_count:token_count + remainder] = tokens[:remainder]
                np.save(os.path.join(out_dir, f"edufineweb_{split}_{shard_index:06d}"), all_tokens_np)
                shard_index += 1
                progress_bar = None
                all_tokens_np[0:len(tokens) - remainder] = tokens[remainder:]
                token_count = len(tokens) - remainder
        if token_count != 0:
            split = "val" if shard_index == 0 else "train"
            np.save(os.path.join(out_dir, f"edufineweb_{split}_{shard_index:06d}"), all_tokens_np[:token_count])
    elapsed = time.perf_counter() - started
    print(f"baseline: {total:,} tokens in {elapsed:.1f} s ({total / elapsed:,.0f} tokens/s)")


def _tokenize(doc):
    import numpy as np

    tokens = [_eot]
    tokens.extend(_enc.encode_ordinary(doc["text"]))
    tokens_np = np.array(tokens)
    assert (0 <= tokens_np).all() and (tokens_np < 2**16).all(), "token dictionary too large for uint16"
    return tokens_np.astype(np.uint16)


# ------------------------------------------------------------------------------------------------------- driver

def timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """Wall seconds and CPU seconds (user + sys of the process and every worker it reaped) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min_mb", type=float, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num_proc", type=int, default=os.cpu_count())
    parser.add_argument("--run_baseline", nargs=2, metavar=("CORPUS", "OUT_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--cache_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_baseline:
        baseline(*args.run_baseline, nprocs=args.num_proc, cache_dir=args.cache_dir)
        return

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    corpus = OUT / f"bench-corpus-{args.min_mb:g}mb.parquet"
    if not corpus.exists():
        docs, size = make_corpus(corpus, args.min_mb)
        print(f"wrote {corpus}: {docs:,} documents, {size / 1e6:.1f} MB of text")
    runs = {"baseline": [], "prepare_data": []}
    tokens = None
    for round_ in range(args.rounds):
        for name in runs:
            cache, out = OUT / f"cache-{name}", OUT / f"out-{name}"
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            if name == "baseline":
                cmd = [sys.executable, __file__, "--run_baseline", str(corpus), str(out), "--num_proc",
                       str(args.num_proc), "--cache_dir", str(cache)]
            else:
                cmd = [sys.executable, "prepare_data.py", "--dataset", str(corpus), "--output_dir", str(out),
                       "--num_proc", str(args.num_proc), "--cache_dir", str(cache)]
            load = os.getloadavg()[0]
            elapsed, cpu, stdout = timed(cmd, env)
            count = int(re.search(r"([\d,]+) tokens", stdout).group(1).replace(",", ""))
            if tokens is not None and count != tokens:
                raise SystemExit(f"{name} produced {count:,} tokens, the other side {tokens:,}")
            tokens = count
            runs[name].append((elapsed, cpu))
            print(f"round {round_ + 1} {name:13s} {count:,} tokens: {elapsed:5.1f} s wall "
                  f"({count / elapsed:,.0f} tokens/s), {cpu:5.1f} CPU-s ({count / cpu:,.0f} tokens/CPU-s), "
                  f"load avg before {load:.1f}")
    wall = {name: min(r[0] for r in rs) for name, rs in runs.items()}
    cpu = {name: min(r[1] for r in rs) for name, rs in runs.items()}
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, num_proc {args.num_proc} on both sides; "
          f"{corpus.stat().st_size / 1e6:.1f} MB parquet ({args.min_mb:g}+ MB of text), {tokens:,} tokens")
    for name in runs:
        print(f"best {name:13s} {wall[name]:5.1f} s wall = {tokens / wall[name]:,.0f} tokens/s; "
              f"{cpu[name]:5.1f} CPU-s = {tokens / cpu[name]:,.0f} tokens/CPU-s")
    print(f"ratio prepare_data / baseline: {wall['baseline'] / wall['prepare_data']:.2f}x wall-clock throughput, "
          f"{cpu['baseline'] / cpu['prepare_data']:.2f}x per CPU-second (target >= 1.0x)")

if __name__ == "__main__":
    main()
