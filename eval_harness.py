"""Evaluate a checkpoint with lm-eval-harness (its Python API on an HFLM): lm-eval's results JSON + a Markdown table.

    python eval_harness.py --model runs/gpt2-124M/pretrain --tasks hellaswag --batch_size auto \\
        --output_dir runs/gpt2-124M/eval
    python eval_harness.py --model runs/demo/pretrain --tasks hellaswag --limit 100 --output_dir runs/demo/eval \\
        --hellaswag_file edugpt/assets/eval/python_docs_hellaswag_format_smoke.jsonl   # CPU, offline

`--model` is a checkpoint directory written by train_hf.py (output_dir or output_dir/checkpoint-N) or a Hub id.
`--tasks` takes any lm-eval task names, comma-separated. With `--hellaswag_file` (a jsonl in HellaSwag's schema),
`hellaswag` means lm-eval's hellaswag task definition over that file (`hellaswag_local`, edugpt/tasks/), so it runs
offline. The shipped smoke file is generated from Python's documentation and is NOT HellaSwag: its numbers only show
that the pipeline works. `--limit N` scores the first N items of each task.

Writes OUTPUT_DIR/results.json (lm-eval's results dict), OUTPUT_DIR/results.md (the table printed at the end) and,
with --log_samples, OUTPUT_DIR/samples_<task>.jsonl (every item's prompt, log-likelihoods and scores). The same
numbers come from lm-eval's own CLI:
    lm_eval --model hf --model_args pretrained=runs/demo/pretrain --include_path edugpt/tasks --tasks hellaswag_local
"""

from __future__ import annotations

from edugpt.args import EvalArguments
from edugpt.cli import parse_config, run, setup_logging


def main(argv=None) -> None:
    (args,) = parse_config([EvalArguments], argv)
    setup_logging()
    from edugpt.evaluation import evaluate_checkpoint, require_free_output_dir, results_table, write_results

    if args.output_dir:
        require_free_output_dir(args.output_dir)  # before the evaluation, not after minutes of it
    batch_size = int(args.batch_size) if args.batch_size.isdigit() else args.batch_size
    results = evaluate_checkpoint(
        args.model, args.task_list, limit=args.limit, batch_size=batch_size, hellaswag_file=args.hellaswag_file,
        device=args.device, log_samples=args.log_samples,
    )
    if args.output_dir:
        write_results(results, args.output_dir)
        print(f"lm-eval results written to {args.output_dir}/results.json and results.md")
    print(f"\n{args.model}" + (f" on {args.hellaswag_file}" if args.hellaswag_file else "") + "\n")
    print(results_table(results))


if __name__ == "__main__":
    run(main)
