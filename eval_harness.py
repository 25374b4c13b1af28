"""Evaluate a checkpoint with lm-eval-harness exactly as `lm_eval --model hf` does, through its Python API.

    python eval_harness.py --model runs/gpt2-270m --tasks hellaswag --batch_size auto --output_dir runs/gpt2-270m/eval
    python eval_harness.py --model you/edugpt-270m --revision step-5000 --tasks hellaswag,arc_easy --num_fewshot 0
    python eval_harness.py --model runs/sft --tasks hellaswag --apply_chat_template --model_args dtype=bfloat16
    python eval_harness.py --model runs/demo/pretrain --tasks hellaswag --limit 100 --output_dir runs/demo/eval \\
        --hellaswag_file edugpt/assets/eval/python_docs_hellaswag_format_smoke.jsonl   # CPU, offline

`--model` is a checkpoint directory written by train_hf.py or finetune/*.py (output_dir or output_dir/checkpoint-N)
or a Hub id (`--revision` picks a branch such as step-5000). Every other option is lm_eval's own: the parser is
`lm-eval run`'s (edugpt.eval.options.eval_parser), so `--model_args`, `--num_fewshot`, `--apply_chat_template`,
`--include_path`, `--gen_kwargs`, `--seed`, `--metadata`, `--system_instruction`, `--wandb_args`, `--trackio_args`,
`--hf_hub_log_args`, `--config` (a YAML of option: value lines) ... mean what they mean to lm_eval, and lm-eval's own
EvaluatorConfig checks them. `--tasks` takes any lm-eval task names. With `--hellaswag_file` (a jsonl in HellaSwag's
schema), `hellaswag` means lm-eval's hellaswag task definition over that file (`hellaswag_local`, edugpt/eval/tasks/), so
it runs offline. The shipped smoke file is generated from Python's documentation and is NOT HellaSwag: its numbers
only show that the pipeline works.

Output is lm-eval's standard layout, written by its EvaluationTracker as `lm_eval --output_path` writes it
(`--output_dir` is the same option): OUTPUT_DIR/<model name>/results_<timestamp>.json, and with --log_samples
samples_<task>_<timestamp>.jsonl (every item's prompt, log-likelihoods and scores). The table printed at the end is
lm-eval's own (`make_table`). The same numbers come from lm-eval's CLI:
    lm_eval --model hf --model_args pretrained=runs/demo/pretrain --include_path edugpt/eval/tasks --tasks hellaswag_local
"""

from __future__ import annotations

import json
import os

from edugpt.config.cli import run, setup_logging


def main(argv=None) -> None:
    from edugpt.eval.harness import evaluate_checkpoint
    from edugpt.eval.options import evaluator_config, parse_eval_args, simple_evaluate_options
    from edugpt.eval.results import check_output_path, log_to_loggers, result_loggers, results_tables, save_results

    args = parse_eval_args(argv)
    setup_logging()
    config = evaluator_config(args)  # lm-eval's own checks of its options
    check_output_path(config.output_path, args.model)
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.utils import handle_non_serializable

    loggers = result_loggers(config)
    token = {"token": os.environ["HF_TOKEN"]} if os.environ.get("HF_TOKEN") else {}
    tracker = EvaluationTracker(**{**config.hf_hub_log_args, **token, "output_path": config.output_path})
    results = evaluate_checkpoint(
        args.model, config.tasks, limit=config.limit, batch_size=config.batch_size, hellaswag_file=args.hellaswag_file,
        device=config.device, log_samples=config.log_samples, model_args=config.model_args, revision=args.revision,
        num_fewshot=config.num_fewshot, apply_chat_template=config.apply_chat_template, evaluation_tracker=tracker,
        include_path=config.include_path, metadata=config.metadata, **simple_evaluate_options(config),
    )
    if results is None:  # not the main process of a multi-process evaluation
        return
    if config.show_config:
        print(json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False))
    log_to_loggers(loggers, {k: v for k, v in results.items() if k != "samples"}, results.get("samples"))
    path = save_results(results, tracker)
    if tracker.push_results_to_hub or tracker.push_samples_to_hub:
        tracker.recreate_metadata_card()
    if path is not None:
        print(f"lm-eval results written to {path}")
    # lm_eval's own summary line and table(s)
    batch_sizes = ",".join(map(str, results["config"]["batch_sizes"]))
    print(f"\nhf ({results['config']['model_args']}), gen_kwargs: ({config.gen_kwargs}), limit: {config.limit}, "
          f"num_fewshot: {config.num_fewshot}, batch_size: {config.batch_size}"
          + (f" ({batch_sizes})" if batch_sizes else "")
          + (f", hellaswag_file: {args.hellaswag_file}" if args.hellaswag_file else ""))
    print(results_tables(results))


if __name__ == "__main__":
    run(main)
