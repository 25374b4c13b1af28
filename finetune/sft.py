"""Supervised finetuning: turn a pretrained edugpt GPT-2 into a chat model with TRL's SFTTrainer.

Real run (270M model, smol-smoltalk; one GPU, or several with accelerate):
    accelerate launch finetune/sft.py --config configs/sft.yaml --model_name_or_path runs/pretrain --output_dir runs/sft
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
into place after the final save, so a failed run leaves nothing half-written at `output_dir`.
"""

from __future__ import annotations

import logging

from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer

from edugpt.chat import add_chat_template, resolve_model_dir
from edugpt.cli import parse_config, run
from edugpt.errors import EduGPTError
from edugpt.finetune_data import load_finetune_dataset, publish_output_dir, staged_output_dir

logger = logging.getLogger("edugpt.sft")


def main(argv: list[str] | None = None) -> None:
    script_args, training_args, model_args = parse_config([ScriptArguments, SFTConfig, ModelConfig], argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=training_args.get_process_log_level())
    logging.getLogger("edugpt").setLevel(logging.INFO if training_args.process_index == 0 else logging.WARNING)
    if model_args.use_peft or model_args.load_in_4bit or model_args.load_in_8bit:
        raise EduGPTError("sft.py trains all weights of the model (a 270M model fits one GPU); drop use_peft/load_in_*.")
    if not training_args.assistant_only_loss:
        logger.warning("assistant_only_loss is off: the loss also covers user and system tokens.")
    model_path = resolve_model_dir(model_args.model_name_or_path)
    final_dir = training_args.output_dir
    resume = bool(training_args.resume_from_checkpoint)
    staging = staged_output_dir(final_dir, resume, training_args.process_index == 0)

    def load(split):
        return load_finetune_dataset(
            script_args.dataset_name, "sft", script_args.dataset_config, split, training_args.dataset_num_proc
        )

    with training_args.main_process_first(desc="loading the dataset"):  # rank 0 downloads and caches, then the rest
        train_dataset = load(script_args.dataset_train_split)
        eval_dataset = load(script_args.dataset_test_split) if training_args.eval_strategy != "no" else None

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=model_args.model_revision)
    model = AutoModelForCausalLM.from_pretrained(
        model_path,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
    )
    add_chat_template(tokenizer, model)
    context = getattr(model.config, "n_positions", None)
    if context is not None and (training_args.max_length is None or training_args.max_length > context):
        raise EduGPTError(
            f"max_length {training_args.max_length} exceeds the model's context of {context} tokens (n_positions); "
            f"pass --max_length {context} or less."
        )

    training_args.output_dir = staging  # checkpoints and the final save go to the staging folder
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )
    checkpoint = None
    if resume:
        from transformers.trainer_utils import get_last_checkpoint

        checkpoint = get_last_checkpoint(staging) if training_args.resume_from_checkpoint in ("true", "True") else training_args.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(staging)  # model, generation config and tokenizer (with its chat template)
    if trainer.accelerator.is_main_process:
        trainer.state.save_to_json(f"{staging}/trainer_state.json")  # the loss curve, even with save_strategy "no"
        trainer.create_model_card(model_name=final_dir.rstrip("/").split("/")[-1], dataset_name=script_args.dataset_name)
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        publish_output_dir(staging, final_dir)
        logger.info("SFT model saved to %s", final_dir)


if __name__ == "__main__":
    run(main)
