"""Evaluate a checkpoint with lm-eval-harness exactly as `lm_eval --model hf` does, through its Python API.

    python eval_harness.py --model runs/gpt2-270m --tasks hellaswag --batch_size auto --output_dir runs/gpt2-270m/eval
    python eval_harness.py --model you/edugpt-270m --revision step-5000 --tasks hellaswag,arc_easy --num_fewshot 0
    python eval_harness.py --model runs/sft --tasks hellaswag --apply_chat_template --model_args dtype=bfloat16
    python eval_harness.py --model runs/demo/pretrain --tasks hellaswag --limit 100 --output_dir runs/demo/eval \\
        --hellaswag_file edugpt/assets/eval/python_docs_hellaswag_format_smoke.jsonl   # CPU, offline

`--model` is a checkpoint directory written by train_hf.py or finetune/*.py (output_dir or output_dir/checkpoint-N)
or a Hub id (`--revision` picks a branch such as step-5000). `--model_args`, `--num_fewshot` and
`--apply_chat_template` are lm_eval's own options, passed through unchanged. `--tasks` takes any lm-eval task names,
comma-separated. With `--hellaswag_file` (a jsonl in HellaSwag's schema), `hellaswag` means lm-eval's hellaswag task
definition over that file (`hellaswag_local`, edugpt/tasks/), so it runs offline. The shipped smoke file is generated
from Python's documentation and is NOT HellaSwag: its numbers only show that the pipeline works.

Output is lm-eval's standard layout, written by its EvaluationTracker as `lm_eval --output_path` writes it:
OUTPUT_DIR/<model name>/results_<timestamp>.json, and with --log_samples samples_<task>_<timestamp>.jsonl (every
item's prompt, log-likelihoods and scores). The table printed at the end is lm-eval's own (`make_table`). The same
numbers come from lm-eval's CLI:
    lm_eval --model hf --model_args pretrained=runs/demo/pretrain --include_path edugpt/tasks --tasks hellaswag_local
"""

from __future__ import annotations

from edugpt.args import EvalArguments
from edugpt.cli import parse_config, run, setup_logging


def main(argv=None) -> None:
    (args,) = parse_config([EvalArguments], argv)
    setup_logging()
    from lm_eval.loggers import EvaluationTracker

    from edugpt.evaluation import check_output_path, evaluate_checkpoint, results_tables, save_results

    check_output_path(args.output_dir, args.model)
    tracker = EvaluationTracker(output_path=args.output_dir)
    batch_size = int(args.batch_size) if args.batch_size.isdigit() else args.batch_size
    results = evaluate_checkpoint(
        args.model, args.task_list, limit=args.limit, batch_size=batch_size, hellaswag_file=args.hellaswag_file,
        device=args.device, log_samples=args.log_samples, model_args=args.model_args, revision=args.revision,
        num_fewshot=args.num_fewshot, apply_chat_template=args.apply_chat_template, evaluation_tracker=tracker,
    )
    path = save_results(results, tracker)
    if path is not None:
        print(f"lm-eval results written to {path}")
    # lm_eval's own summary line and table(s)
    print(f"\nhf ({results['config']['model_args']}), limit: {args.limit}, num_fewshot: {args.num_fewshot}, "
          f"batch_size: {args.batch_size}" + (f", hellaswag_file: {args.hellaswag_file}" if args.hellaswag_file else ""))
    print(results_tables(results))


if __name__ == "__main__":
    run(main)
