"""Pretrain a GPT-2 from scratch on a prepared dataset with Hugging Face Trainer + accelerate.

One GPU (GH200/H100/H200), the 270M-parameter, 16-layer model on FineWeb-Edu sample-10BT:
    accelerate launch --config_file accelerate_config.yaml train_hf.py --config configs/gpt2_270m.yaml
Several GPUs / nodes, no code change (FSDP, or DDP):
    accelerate launch --config_file configs/accelerate/fsdp_8gpu.yaml train_hf.py --config configs/gpt2_270m.yaml
CPU-sized (2 cores, ~2 minutes; data from `python prepare_data.py --dataset embedded --output_dir runs/data --seq_len 128`):
    python train_hf.py --config configs/smoke.yaml --dataset_dir runs/data --output_dir runs/smoke

Any key of the recipe can be overridden on the command line (`--max_steps 50 --learning_rate 1e-3`); unknown keys
are an error listing the valid ones. Re-running the same command resumes from the newest valid checkpoint in
output_dir (bit-exact); SIGTERM saves a checkpoint at the current step and exits 0. The run directory holds
checkpoint-N/, the final model (loads with `AutoModelForCausalLM.from_pretrained(output_dir)` and
`lm_eval --model hf --model_args pretrained=output_dir`), metrics.jsonl, samples.md, images/train-loss.png,
run_config.json and data_manifest.json.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from transformers import GPT2LMHeadModel, Trainer, TrainingArguments, set_seed

from edugpt import callbacks as cb
from edugpt.args import DataArguments, ModelArguments, ScriptArguments
from edugpt.checkpoints import CompleteCheckpointCallback, find_resume_checkpoint, list_checkpoints
from edugpt.cli import parse_config, run
from edugpt.errors import EduGPTError
from edugpt.modeling import current_peak_flops, flops_per_token, gpt2_config, parameter_count, require_compatible_checkpoint
from edugpt.tokenizer import load_tokenizer, require_gpt2_compatible
from edugpt.training import bound_eval_split, collate_blocks, load_prepared

logger = logging.getLogger("train_hf")


def write_run_files(output_dir: Path, model_args, data_args, script_args, training_args, manifest: dict) -> None:
    """run_config.json (every argument in effect) and data_manifest.json, written atomically by the main process."""
    output_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "run_config.json": {
            "model": asdict(model_args),
            "data": asdict(data_args),
            "script": asdict(script_args),
            "training": training_args.to_dict(),
        },
        "data_manifest.json": manifest,
    }
    for name, content in files.items():
        tmp = output_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(content, indent=2, default=str) + "\n")
        os.replace(tmp, output_dir / name)


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, script_args, training_args = parse_config(
        [ModelArguments, DataArguments, ScriptArguments, TrainingArguments], argv
    )
    logging.basicConfig(
        level=logging.INFO if training_args.process_index == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Trainer settings this script relies on, whatever the recipe says: tokens seen feed throughput, MFU and
    # metrics.jsonl; only the eval loss is kept (a batch of 50257-wide logits at seq 1024 would be ~200 MB a row).
    training_args.include_num_input_tokens_seen = "all"
    training_args.prediction_loss_only = True

    config = gpt2_config(model_args)
    data = load_prepared(data_args.dataset_dir, config, data_args.seq_len)
    data_args.seq_len = data.seq_len
    tokenizer = load_tokenizer(script_args.tokenizer)
    require_gpt2_compatible(tokenizer, config.vocab_size)

    output_dir = Path(training_args.output_dir)
    with training_args.main_process_first(desc="finding the newest valid checkpoint"):
        checkpoint = find_resume_checkpoint(output_dir, quarantine=training_args.process_index == 0)
    if checkpoint is not None:
        require_compatible_checkpoint(checkpoint, config)
        logger.info("resuming from %s", checkpoint)

    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = bound_eval_split(
            data.validation, data_args.eval_max_batches, training_args.per_device_eval_batch_size, training_args.world_size
        )
        if len(eval_dataset) == 0:
            raise EduGPTError(
                f"the validation split of {data_args.dataset_dir} is empty; re-prepare with a larger --val_fraction "
                "or set eval_strategy: 'no'."
            )

    set_seed(training_args.seed)  # the from-scratch initialisation is part of what a seed reproduces
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    logger.info(
        "GPT-2 %d layers x %d heads x %d wide: %.1fM parameters, %.3g training FLOPs/token at seq_len %d",
        config.n_layer, config.n_head, config.n_embd, parameter_count(config) / 1e6,
        flops_per_token(config, data.seq_len), data.seq_len,
    )

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=eval_dataset,
        data_collator=collate_blocks,
        processing_class=tokenizer,  # saved into every checkpoint, so each one loads on its own
    )
    metrics = cb.MetricsLog(output_dir / cb.METRICS_FILE, enabled=training_args.process_index == 0)
    sigterm = cb.SigtermCallback()
    guard = cb.NonFiniteLossCallback()
    cb.install_callbacks(
        trainer,
        cb.ThroughputCallback(
            flops_per_token(config, data.seq_len), current_peak_flops(script_args.mfu_peak_flops), training_args.world_size
        ),
        cb.MetricsJsonlCallback(metrics),
        sigterm,
        guard,
        CompleteCheckpointCallback(),
        cb.PlotCallback(output_dir, metrics),
    )
    if script_args.sample_steps > 0:
        trainer.add_callback(cb.SamplesCallback(
            tokenizer, script_args.sample_prompts, script_args.sample_steps, script_args.sample_max_new_tokens,
            script_args.sample_top_k, script_args.sample_seed, output_dir / cb.SAMPLES_FILE, metrics,
        ))
    if script_args.hellaswag_steps > 0:
        from edugpt.evaluation import HellaSwagCallback  # imported only when used: it pulls in lm-eval

        trainer.add_callback(HellaSwagCallback(
            trainer, every_steps=script_args.hellaswag_steps, limit=script_args.hellaswag_limit,
            hellaswag_file=script_args.hellaswag_file, batch_size=script_args.hellaswag_batch_size,
        ))
    if training_args.process_index == 0:
        write_run_files(output_dir, model_args, data_args, script_args, training_args, data.manifest)

    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    if guard.failure:
        good = list_checkpoints(output_dir)
        raise EduGPTError(
            f"{guard.failure}, so training stopped without saving those weights; the last good checkpoint is "
            f"{good[0] if good else 'none'}: lower learning_rate or raise warmup_steps, then re-run to resume from it."
        )
    if sigterm.received:
        logger.info("stopped by SIGTERM after saving checkpoint-%s; re-run the same command to resume", sigterm.stopped_at)
        return
    state = trainer.state
    evaluated_last_step = any("eval_loss" in r and r["step"] == state.global_step for r in state.log_history)
    if eval_dataset is not None and not evaluated_last_step:
        trainer.evaluate()  # the final validation loss, for the table and the plot
    trainer.save_model()  # model + generation config + tokenizer into output_dir
    logger.info("final model saved to %s", output_dir)


if __name__ == "__main__":
    run(main)
