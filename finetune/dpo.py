"""Direct Preference Optimization: align an SFT'd edugpt chat model on preference pairs with TRL's DPOTrainer.

Real run (270M SFT model, UltraFeedback pairs; one GPU, or several with accelerate):
    accelerate launch finetune/dpo.py --config configs/dpo.yaml --model_name_or_path runs/sft --output_dir runs/dpo
CPU-sized (offline, bundled pairs, about a minute on 2 cores with a tiny model):
    python finetune/dpo.py --config configs/dpo_smoke.yaml --model_name_or_path RUN/sft --output_dir RUN/dpo

The order is pretrain -> finetune/sft.py -> finetune/dpo.py: the model must already carry a chat template (a
pretrained checkpoint is refused with that explanation). The reference policy is the same SFT model, loaded a second
time and frozen. It is passed explicitly: with `ref_model=None` TRL reloads the reference from
`config._name_or_path`, which is wrong or empty for a model object. With `precompute_ref_log_probs: true` TRL scores
the pairs with it once up front instead. TRL logs rewards/chosen, rewards/rejected, rewards/accuracies and
rewards/margins (beta * policy-vs-reference log-ratio) every `logging_steps`; trainer_state.json in the output keeps
them.

Output: a standard HF model folder (same layout as SFT's, same tokenizer and template) with run_config.json,
metrics.jsonl (the rewards/* above included) and edugpt's model card, written to `output_dir.partial` and renamed into
place after the final save (SIGTERM, resume and `--push_to_hub --hub_model_id NAME` as in sft.py).
"""

from __future__ import annotations

import logging

from trl import DPOConfig, DPOTrainer, ModelConfig, ScriptArguments

from edugpt.chat import add_chat_template, require_chat_template, require_fits_context
from edugpt.cli import parse_config, run
from edugpt.finetune_data import (
    begin_finetune, finetune_run_config, load_causal_lm, load_stage_splits, staged_output_dir, train_and_publish,
)

logger = logging.getLogger("edugpt.dpo")


def main(argv: list[str] | None = None) -> None:
    script_args, training_args, model_args = parse_config([ScriptArguments, DPOConfig, ModelConfig], argv)
    model_path = begin_finetune("dpo.py", training_args, model_args)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=model_args.model_revision)
    require_chat_template(tokenizer, model_path)  # before any data or weights are loaded
    final_dir = training_args.output_dir
    staging = staged_output_dir(final_dir, bool(training_args.resume_from_checkpoint), training_args.process_index == 0)

    train_dataset, eval_dataset = load_stage_splits(script_args, training_args, "dpo")

    model, ref_model = load_causal_lm(model_path, model_args), load_causal_lm(model_path, model_args)
    add_chat_template(tokenizer, model)  # keeps the SFT template; sets pad = eos as SFT did
    require_fits_context(model, training_args.max_length)

    # metrics.jsonl's "tokens" = num_input_tokens_seen; pairs are padded, their attention_mask marks the real tokens.
    if training_args.include_num_input_tokens_seen == "no":
        training_args.include_num_input_tokens_seen = "non_padding"
    run_config = finetune_run_config("dpo", script_args, model_args, training_args)  # with the real output_dir
    training_args.output_dir = staging  # checkpoints and the final save go to the staging folder
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )
    train_and_publish(trainer, staging, final_dir, training_args.resume_from_checkpoint, run_config)


if __name__ == "__main__":
    run(main)
