"""SFT and DPO runs (finetune/sft.py, finetune/dpo.py) through the shared lifecycle (edugpt.lifecycle): the checks
before anything loads, the data, the model and its tokenizer, the run's settings and run_config.json.

    finetune("sft", SFTTrainer, script_args, training_args, model_args, run_args)   # sft.py's whole job

    job = prepare("sft", script_args, training_args, model_args, run_args)   # checks, data, resume decision
    job.run.execute(lambda: SFTTrainer(model=load_model(job, model_args), args=training_args, ...))

A finetune is a run like pretraining: trained in place in output_dir, resumed by running the same command again
(from the newest valid checkpoint), finished runs left alone, SIGTERM saving a checkpoint, a NaN stopping it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from edugpt.errors import EduGPTError
from edugpt.lifecycle import TrainingRun, training_settings

logger = logging.getLogger(__name__)

# trl.ModelConfig fields the scripts refuse (LoRA and quantization: both scripts train all weights), left out of
# run_config.json so the card's recipe table lists only settings that shaped the run.
UNUSED_MODEL_FIELDS = ("lora_", "use_rslora", "use_dora", "bnb_", "use_bnb_")


@dataclass
class FinetuneJob:
    """What an SFT/DPO script needs after `prepare`: the run, the base model's path and tokenizer, the data."""

    run: TrainingRun
    model_path: str
    tokenizer: object
    train_dataset: object
    eval_dataset: object


def prepare(stage: str, script_args, training_args, model_args, run_args) -> FinetuneJob:
    """Everything before the model loads, in the order that fails fastest: arguments, output_dir, the Hub (with
    --push_to_hub), the base model's folder and tokenizer (DPO: it must carry a chat template), the data; then the
    lifecycle's decision (resume / already finished / start) and run_config.json."""
    from transformers import AutoTokenizer

    from edugpt.chat import require_chat_template, resolve_model_dir
    from edugpt.finetune_data import load_stage_splits
    from edugpt.hub import require_push_ready

    if model_args.use_peft or model_args.load_in_4bit or model_args.load_in_8bit:
        raise EduGPTError(f"{stage} trains all weights (a 270M model fits one GPU); drop use_peft/load_in_4bit/8bit.")
    run = TrainingRun(stage, training_args, run_args)
    run.check_output_dir()
    if training_args.push_to_hub:  # offline or without a login this fails in a second instead of after training
        training_args.hub_model_id = require_push_ready(training_args.hub_model_id)
    model_path = resolve_model_dir(model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=model_args.model_revision)
    if stage == "dpo":
        require_chat_template(tokenizer, model_path)  # before any data or weights are loaded
    elif not training_args.assistant_only_loss:
        logger.warning("assistant_only_loss is off: the loss also covers user and system tokens.")
    train_dataset, eval_dataset = load_stage_splits(script_args, training_args, stage)

    # metrics.jsonl's "tokens" = num_input_tokens_seen. SFT packs rows without padding; DPO pads pairs, and their
    # attention_mask marks the real tokens.
    if training_args.include_num_input_tokens_seen == "no":
        training_args.include_num_input_tokens_seen = "all" if stage == "sft" else "non_padding"
    data = {"dataset_name": script_args.dataset_name, "dataset_config": script_args.dataset_config,
            "dataset_train_split": script_args.dataset_train_split, "rows": len(train_dataset)}
    settings = training_settings(training_args, max_length=training_args.max_length, base_model=model_path, data=data)
    model = {k: v for k, v in asdict(model_args).items() if not k.startswith(UNUSED_MODEL_FIELDS)}
    run_config = {"script": stage, "model": model, "data": asdict(script_args), "run": asdict(run_args),
                  "training": training_args.to_dict()}
    run.begin(settings, run_config)
    return FinetuneJob(run, model_path, tokenizer, train_dataset, eval_dataset)


def load_model(job: FinetuneJob, model_args):
    """The base model with the dtype, attention and revision of TRL's ModelConfig, ready to chat-finetune: the chat
    template on the tokenizer (an SFT model's own is kept), pad = eos, and rows that fit its context."""
    from transformers import AutoModelForCausalLM

    from edugpt.chat import add_chat_template, require_fits_context

    model = AutoModelForCausalLM.from_pretrained(
        job.model_path,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
    )
    add_chat_template(job.tokenizer, model)
    require_fits_context(model, job.run.args.max_length)
    return model


def finetune(stage: str, trainer_class, script_args, training_args, model_args, run_args) -> None:
    """A whole SFT or DPO run with TRL's `trainer_class` (SFTTrainer / DPOTrainer). DPO's reference policy is the same
    SFT model loaded a second time and frozen, passed explicitly: with `ref_model=None` TRL would reload it from
    `config._name_or_path`, which is wrong or empty for a model object."""
    from edugpt.cli import setup_logging

    setup_logging(training_args.process_index)
    job = prepare(stage, script_args, training_args, model_args, run_args)

    def build_trainer():
        reference = {"ref_model": load_model(job, model_args)} if stage == "dpo" else {}
        return trainer_class(model=load_model(job, model_args), args=training_args, train_dataset=job.train_dataset,
                             eval_dataset=job.eval_dataset, processing_class=job.tokenizer, **reference)

    job.run.execute(build_trainer)

