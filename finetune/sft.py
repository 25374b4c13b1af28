"""Supervised finetuning: turn a pretrained edugpt GPT-2 into a chat model with TRL's SFTTrainer.

Real run (270M model, smol-smoltalk; one GPU, or several with accelerate):
    accelerate launch finetune/sft.py --config configs/sft.yaml \
        --model_name_or_path runs/gpt2-270m --output_dir runs/sft
CPU-sized (offline, bundled data, about a minute on 2 cores with a tiny model):
    python finetune/sft.py --config configs/sft_smoke.yaml --model_name_or_path RUN/pretrain --output_dir RUN/sft

The base model gets the edugpt chat template (edugpt/chat.py: plain-text roles, every assistant turn ends with
`<|endoftext|>`), conversations are packed into `max_length` rows without padding (TRL's BFD packing: GPT-2 sees
position_ids that restart per conversation and attends within each one only), and only assistant tokens carry loss
(`assistant_only_loss`). Arguments are TRL's own ScriptArguments / SFTConfig / ModelConfig: a YAML recipe plus
command-line overrides, and an unknown key is an error.

Output: `output_dir` is a standard HF model folder (config.json, model.safetensors, generation_config.json, tokenizer
files with chat_template.jinja), so `AutoTokenizer.apply_chat_template`, `pipeline("text-generation")` on a list of
messages, eval_harness.py and finetune/dpo.py take it as is. Training happens in `output_dir.partial` and is renamed
into place after the final save, so a failed run leaves nothing half-written at `output_dir`. SIGTERM saves a
checkpoint there and exits 0; the same command plus `--resume_from_checkpoint true` continues the run. As pretraining
does, the folder also holds run_config.json (every argument used), metrics.jsonl (every log record with its step and
tokens seen) and README.md, edugpt's model card (`python -m edugpt.report DIR` rewrites it).

`--push_to_hub --hub_model_id NAME` checks the token and the Hub before anything is loaded, then at the end uploads
the folder with Trainer's own push (`hub_strategy` honoured) and replaces Trainer's card with edugpt's.
"""

from __future__ import annotations

import logging

from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer

from edugpt.chat import add_chat_template, require_fits_context
from edugpt.cli import parse_config, run
from edugpt.finetune_data import (
    begin_finetune, finetune_run_config, load_causal_lm, load_stage_splits, staged_output_dir, train_and_publish,
)

logger = logging.getLogger("edugpt.sft")


def main(argv: list[str] | None = None) -> None:
    script_args, training_args, model_args = parse_config([ScriptArguments, SFTConfig, ModelConfig], argv)
    model_path = begin_finetune("sft.py", training_args, model_args)
    if not training_args.assistant_only_loss:
        logger.warning("assistant_only_loss is off: the loss also covers user and system tokens.")
    final_dir = training_args.output_dir
    staging = staged_output_dir(final_dir, bool(training_args.resume_from_checkpoint), training_args.process_index == 0)

    train_dataset, eval_dataset = load_stage_splits(script_args, training_args, "sft")

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=model_args.model_revision)
    model = load_causal_lm(model_path, model_args)
    add_chat_template(tokenizer, model)
    require_fits_context(model, training_args.max_length)

    # metrics.jsonl's "tokens" = num_input_tokens_seen; packed padding-free rows hold no padding to leave out.
    if training_args.include_num_input_tokens_seen == "no":
        training_args.include_num_input_tokens_seen = "all"
    run_config = finetune_run_config("sft", script_args, model_args, training_args)  # with the real output_dir
    training_args.output_dir = staging  # checkpoints and the final save go to the staging folder
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )
    train_and_publish(trainer, staging, final_dir, training_args.resume_from_checkpoint, run_config)


if __name__ == "__main__":
    run(main)
