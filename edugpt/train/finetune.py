"""SFT and DPO runs (finetune/sft.py, finetune/dpo.py) through the shared lifecycle (edugpt.run.lifecycle): the checks
before anything loads, the data, the model and its tokenizer, the run's settings and run_config.json.

    finetune("sft", SFTTrainer, script_args, training_args, model_args, run_args, dataset_args)   # sft.py's whole job

    # checks, data, resume decision:
    job = prepare_finetune("sft", script_args, training_args, model_args, run_args, dataset_args)
    job.run.execute(lambda: SFTTrainer(model=load_base_model(job, model_args), args=training_args, ...))

A finetune is a run like pretraining: trained in place in output_dir, resumed by running the same command again
(from the newest valid checkpoint), finished runs left alone, SIGTERM saving a checkpoint, a NaN stopping it.
Everything that can refuse a run (the base model, the chat template, the data, rows that do not fit max_length) is
checked before the lifecycle writes anything into output_dir.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.run.lifecycle import TrainingRun
from edugpt.run.settings import training_settings

logger = logging.getLogger(__name__)

# trl.ModelConfig fields the scripts refuse (LoRA and quantization: both scripts train all weights), left out of
# run_config.json so the card's recipe table lists only settings that shaped the run.
UNUSED_MODEL_FIELDS = ("lora_", "use_rslora", "use_dora", "bnb_", "use_bnb_")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class FinetuneJob:
    """What an SFT/DPO script needs after `prepare_finetune`: the run, the base model's path and tokenizer, the data."""

    run: TrainingRun
    model_path: str
    tokenizer: object
    train_dataset: object
    eval_dataset: object


def prepare_finetune(stage: str, script_args, training_args, model_args, run_args, dataset_args=None) -> FinetuneJob:
    """Everything before the model loads, in the order that fails fastest: arguments, output_dir, the Hub (with
    --push_to_hub), the base model's folder and tokenizer (DPO: it must carry a chat template), the data and whether
    its rows fit max_length; then the lifecycle's decision (resume / already finished / start) and run_config.json."""
    from transformers import AutoConfig

    from edugpt.hub.publish import require_push_ready
    from edugpt.model.chat import (
        add_chat_template,
        context_length,
        load_model_tokenizer,
        require_chat_template,
        require_fits_context,
        resolve_model_dir,
    )
    from edugpt.model.tokenizer import ready_to_save
    from edugpt.train.chat_data import check_lengths, load_stage_splits

    if model_args.use_peft or model_args.load_in_4bit or model_args.load_in_8bit:
        raise EduGPTError(f"{stage} trains all weights (a 270M model fits one GPU); drop use_peft/load_in_4bit/8bit.")
    run = TrainingRun(stage, training_args, run_args)
    run.check_output_dir()
    if training_args.push_to_hub:  # offline or without a login this fails in a second instead of after training
        training_args.hub_model_id = require_push_ready(training_args.hub_model_id)
    model_path = resolve_model_dir(model_args.model_name_or_path)
    tokenizer = load_model_tokenizer(model_path, revision=model_args.model_revision)
    context = context_length(AutoConfig.from_pretrained(model_path, revision=model_args.model_revision))
    require_fits_context(context, training_args.max_length)
    if stage == "dpo":
        require_chat_template(tokenizer, model_path)  # before any data or weights are loaded
    else:
        _use_recipe_template(training_args, tokenizer)
        if not training_args.assistant_only_loss:
            logger.warning("assistant_only_loss is off: the loss also covers user and system tokens.")
    add_chat_template(tokenizer)  # the recipe's or the model's own template is kept; edugpt's when there is none
    ready_to_save(tokenizer, context)
    train_dataset, eval_dataset = load_stage_splits(script_args, training_args, stage, dataset_args)
    for split, dataset in (("train", train_dataset), ("eval", eval_dataset)):
        if dataset is not None:
            check_lengths(stage, dataset, tokenizer, training_args, split=split)

    # metrics.jsonl's "tokens" = num_input_tokens_seen. SFT packs rows without padding; DPO pads pairs, and their
    # attention_mask marks the real tokens.
    if training_args.include_num_input_tokens_seen == "no":
        training_args.include_num_input_tokens_seen = "all" if stage == "sft" else "non_padding"
    mixture = [asdict(d) for d in dataset_args.datasets] if dataset_args is not None and dataset_args.datasets else None
    data = {"dataset_name": script_args.dataset_name, "dataset_config": script_args.dataset_config,
            "dataset_train_split": script_args.dataset_train_split, "rows": len(train_dataset)}
    if mixture:
        data["datasets"] = mixture
    settings = training_settings(training_args, max_length=training_args.max_length, base_model=model_path, data=data)
    model = {k: v for k, v in asdict(model_args).items() if not k.startswith(UNUSED_MODEL_FIELDS)}
    run_config = {"script": stage, "model": model}
    if mixture:  # what the card names as the training data (a mixture has no dataset_name)
        first = mixture[0]
        run_config["dataset"] = {"dataset_name": ", ".join(d["path"] for d in mixture),
                                 "dataset_train_split": first["split"]}
    run_config.update({"data": {**asdict(script_args), **({"datasets": mixture} if mixture else {})},
                       "run": asdict(run_args), "training": training_args.to_dict()})
    run.begin(settings, run_config)
    return FinetuneJob(run, model_path, tokenizer, train_dataset, eval_dataset)


def _use_recipe_template(training_args, tokenizer) -> None:
    """SFT's `chat_template_path` (TRL's option, set by configs/sft*.yaml): a .jinja file, found also relative to the
    repository (so the recipes run from any directory). SFTTrainer reads it again; this copy is for the row checks."""
    path = training_args.chat_template_path
    if not path:
        return
    for candidate in (Path(path).expanduser(), PACKAGE_ROOT / path):
        if candidate.is_file():
            try:
                template = candidate.read_text(encoding="utf-8")
            except UnicodeDecodeError as err:
                raise EduGPTError(f"chat_template_path {path!r} is not UTF-8 text ({err.reason} at byte {err.start}); "
                                  "pass a .jinja file such as edugpt/templates/chat_template.jinja.") from None
            training_args.chat_template_path = str(candidate)
            tokenizer.chat_template = template
            return
        if candidate.is_dir() and candidate.suffix in (".jinja", ".j2"):  # a folder may be a tokenizer's, for TRL
            raise EduGPTError(f"chat_template_path {path!r} is a folder; pass a .jinja file such as "
                              "edugpt/templates/chat_template.jinja.")
    if Path(path).suffix in (".jinja", ".j2"):
        raise EduGPTError(f"chat_template_path {path!r} does not exist; pass a .jinja file such as "
                          "edugpt/templates/chat_template.jinja, or leave it out to keep the model's own template.")


def load_base_model(job: FinetuneJob, model_args):
    """The base model with the dtype, attention and revision of TRL's ModelConfig, ready to chat-finetune: pad = eos,
    the generation settings of a chat model (edugpt.model.chat.add_chat_template) and its loss named so that Trainer counts
    the predicted tokens right (edugpt.model.gpt2.name_causal_lm_loss)."""
    from transformers import AutoModelForCausalLM

    from edugpt.model.chat import add_chat_template
    from edugpt.model.gpt2 import fit_generation_to_context, name_causal_lm_loss

    model = AutoModelForCausalLM.from_pretrained(
        job.model_path,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
    )
    add_chat_template(job.tokenizer, model)  # then the answer length is cut to fit the context:
    return fit_generation_to_context(name_causal_lm_loss(model))


def finetune(stage: str, trainer_class, script_args, training_args, model_args, run_args, dataset_args=None) -> None:
    """A whole SFT or DPO run with TRL's `trainer_class` (SFTTrainer / DPOTrainer). DPO's reference policy is the same
    SFT model loaded a second time and frozen, passed explicitly: with `ref_model=None` TRL would reload it from
    `config._name_or_path`, which is wrong or empty for a model object."""
    from edugpt.config.cli import setup_logging
    from edugpt.model.tokenizer import packed_rows_have_no_padding
    from edugpt.train.callbacks import ThroughputCallback

    setup_logging(training_args.process_index)
    packed_rows_have_no_padding()  # SFT rows are packed without padding; DPO passes attention masks
    job = prepare_finetune(stage, script_args, training_args, model_args, run_args, dataset_args)

    def build_trainer():
        reference = {"ref_model": load_base_model(job, model_args)} if stage == "dpo" else {}
        trainer = trainer_class(model=load_base_model(job, model_args), args=training_args, train_dataset=job.train_dataset,
                                eval_dataset=job.eval_dataset, processing_class=job.tokenizer, **reference)
        # tokens_per_second in every training record, as in pretraining (no MFU: DPO's reference forward and the two
        # sequences per pair make pretraining's FLOPs-per-token formula wrong here).
        job.run.attach(trainer, ThroughputCallback(flops_per_token=0.0, peak_flops=None,
                                                   world_size=training_args.world_size))
        return trainer

    job.run.execute(build_trainer)
