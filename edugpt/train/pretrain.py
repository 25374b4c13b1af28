"""Pretraining from scratch: load and check the prepared dataset, collate its blocks, bound the eval set, build the
GPT-2 and its Trainer with the project's callbacks, and run it through the shared lifecycle (edugpt.run.lifecycle).

`pretrain(...)` is train_hf.py's whole job; `start_pretraining(...)` is everything before `train()`, for benchmarks that time
the same Trainer train_hf.py builds (bench/bench_train_cpu.py, bench/bench_gpu.py).

The data directory is `prepare_data.py`'s output (see the data contract): a `DatasetDict` saved with
`save_to_disk` whose rows are packed `uint16` blocks, plus `manifest.json`. Arrow files are memory-mapped, so the
training set's size does not show up in RAM.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edugpt.config.arguments import global_batch_blocks
from edugpt.corpus.layout import block_features, load_splits
from edugpt.corpus.manifest import load_manifest
from edugpt.corpus.split import SPLITS
from edugpt.errors import EduGPTError
from edugpt.hub.datasets import local_dataset_dir
from edugpt.io.net import looks_like_hub_id
from edugpt.io.safefs import atomic_write_json
from edugpt.model.tokenizer import GPT2_EOS_ID
from edugpt.run.lifecycle import TrainingRun
from edugpt.run.rundir import DATA_MANIFEST, METRICS, SAMPLES, MetricsLog
from edugpt.run.settings import training_settings

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    train: object  # datasets.Dataset with one column `input_ids` (uint16 blocks of seq_len)
    validation: object
    manifest: dict
    seq_len: int


def read_manifest(dataset_dir: str | Path) -> dict:
    """The manifest of `dataset_dir` (train_hf.py's `--dataset_dir`), with errors that name that option."""
    if not dataset_dir:
        raise EduGPTError("dataset_dir is not set; pass --dataset_dir DIR, a directory written by prepare_data.py.")
    root = Path(dataset_dir)
    if not root.is_dir():
        raise EduGPTError(
            f"dataset_dir {str(root)!r} does not exist; create it with "
            f"`python prepare_data.py --output_dir {root}` or point --dataset_dir at one that does"
            + (f" (a dataset on the Hub is --dataset_dir hf://datasets/{dataset_dir})."
               if looks_like_hub_id(str(dataset_dir)) else ".")
        )
    return load_manifest(root)


def load_prepared(dataset_dir: str | Path, model_config, seq_len: int | None = None) -> PreparedData:
    """Load and validate a prepared directory for a model with `model_config` (a GPT2Config).

    Checks: made by prepare_data.py, same tokenizer family and vocabulary as the model, block length equal to
    `seq_len` (when given) and within the model's `n_positions`, and splits whose rows match the manifest.
    """
    manifest = read_manifest(dataset_dir)
    root = Path(dataset_dir)
    tokenizer = manifest.get("tokenizer") or {}
    data_vocab, data_eos = tokenizer.get("vocab_size"), tokenizer.get("eos_token_id")
    if data_vocab is None or data_vocab > model_config.vocab_size:
        raise EduGPTError(
            f"the data was tokenized with a {data_vocab}-token vocabulary ({tokenizer.get('name')!r}) but the model has "
            f"vocab_size {model_config.vocab_size}; set vocab_size >= {data_vocab} or re-prepare with the GPT-2 tokenizer."
        )
    if data_eos != GPT2_EOS_ID:
        raise EduGPTError(
            f"the data's end-of-text id is {data_eos}, not GPT-2's {GPT2_EOS_ID}; re-prepare it with the GPT-2 tokenizer."
        )
    data_seq_len = manifest.get("seq_len")
    if seq_len is not None and seq_len != data_seq_len:
        raise EduGPTError(
            f"seq_len {seq_len} does not match the data's blocks of {data_seq_len} tokens ({root}/manifest.json); "
            f"drop seq_len, set it to {data_seq_len}, or re-prepare with --seq_len {seq_len}."
        )
    if not isinstance(data_seq_len, int) or data_seq_len > model_config.n_positions:
        raise EduGPTError(
            f"the data's blocks are {data_seq_len} tokens but the model's n_positions is {model_config.n_positions}; "
            f"set n_positions >= {data_seq_len} or re-prepare with a shorter --seq_len."
        )
    splits = load_splits(root)  # its JSON files checked first, a damaged Arrow file named: one line either way
    for name in SPLITS:
        if name not in splits:
            raise EduGPTError(f"{root} has no {name!r} split; re-create it with prepare_data.py.")
        split = splits[name]
        if split.features != block_features(data_seq_len):
            raise EduGPTError(
                f"{root}/{name} does not hold uint16 blocks of {data_seq_len} tokens in `input_ids` "
                f"({split.features}); re-create it with prepare_data.py."
            )
        expected = (manifest.get("splits") or {}).get(name, {}).get("blocks")
        if expected != len(split):
            raise EduGPTError(
                f"{root}/{name} has {len(split)} blocks but the manifest says {expected}; the directory is incomplete "
                "or was changed after preparing: re-create it with prepare_data.py."
            )
    if len(splits["train"]) == 0:
        raise EduGPTError(f"{root} has an empty train split; prepare more documents (raise --max_docs).")
    # numpy rows (datasets' numpy formatter widens the stored uint16 to int64 per row): the collator stacks a whole
    # batch at once, with no per-token Python objects.
    return PreparedData(
        train=splits["train"].with_format("numpy"),
        validation=splits["validation"].with_format("numpy"),
        manifest=manifest,
        seq_len=data_seq_len,
    )


def collate_blocks(examples: list[dict]) -> dict:
    """Stack packed blocks (stored as uint16) into int64 `input_ids` and `labels` (the model shifts labels itself).

    Every token, `<|endoftext|>` included, is a target: the eos between documents is what teaches the model where
    a document ends (DataCollatorForLanguageModeling with pad = eos would mask it out of the loss).
    """
    import torch

    input_ids = torch.from_numpy(np.stack([np.asarray(example["input_ids"]) for example in examples]).astype(np.int64))
    return {"input_ids": input_ids, "labels": input_ids}


def bound_eval_split(validation, max_batches: int | None, per_device_batch_size: int):
    """The first rows of `validation` that make whole eval batches, at most `max_batches` of them (None: all).

    The same rows on any number of processes, so the validation loss is the same number on any layout: Trainer
    shards them across processes and gathers the losses. Whole batches keep it exact there: accelerate completes a
    process's last, partial batch with repeated rows, and Trainer averages batch means, so a partial batch would
    count those repeats (a whole batch of repeats on a process with no rows left is dropped by `gather_for_metrics`).
    A split smaller than one batch is used whole. A contiguous `select(range(n))` stays a zero-copy slice of the
    memory-mapped Arrow table.
    """
    rows = len(validation) if max_batches is None else min(len(validation), max_batches * per_device_batch_size)
    if rows >= per_device_batch_size:
        rows -= rows % per_device_batch_size
    return validation if rows == len(validation) else validation.select(range(rows))


class CompactRandomSampler:
    """A fresh random order of `range(n)` every epoch, seeded by (seed, epoch), held as one int32 numpy array; each
    epoch yields whole global batches of `batch` blocks (the last n % batch of that epoch's order are left out).

    torch's `RandomSampler` turns its permutation into a Python list: ~36 bytes per block, 350 MB of RAM for
    FineWeb-Edu sample-10BT's ~9.7M blocks of 1024, growing with the dataset. This keeps 4 bytes per block. The
    order depends only on (seed, epoch), never on the global RNG, so a resumed run replays it exactly. Whole global
    batches make the blocks of every optimizer step the same on any layout with the same global batch: step s of an
    epoch trains on blocks order[s*batch:(s+1)*batch], whether one process accumulates them or eight share them
    (accelerate deals process p the micro-batches p, p+P, ...), and no process ever gets a partial batch padded with
    repeated blocks, so epochs end at the same step too.
    """

    def __init__(self, n: int, seed: int, batch: int = 1):
        self.n, self.seed, self.batch, self.epoch = n, seed, batch, 0

    def set_epoch(self, epoch: int) -> None:  # called by Trainer / accelerate at each epoch start
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n - self.n % self.batch

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)[:len(self)]
        order = order.astype(np.int64 if self.n >= 2**31 else np.int32)
        for start in range(0, len(order), 65536):
            yield from order[start:start + 65536].tolist()


def apply_tokens_per_step(tokens_per_step: int | None, training_args, seq_len: int) -> None:
    """Derive `gradient_accumulation_steps` from a global batch in tokens (DataArguments.tokens_per_step) and this
    launch's process count, and log the global batch in effect. Before the Trainer is built: it reads the value once.

    Without it, moving a recipe from 1 to 8 GPUs silently trains 8x the tokens per step unless someone divides the
    accumulation by hand. TrainingArguments' default accumulation (1) cannot be told from an explicit 1, so only a
    different explicit value is a conflict.
    """
    args = training_args
    per_micro_step = args.world_size * args.per_device_train_batch_size * seq_len
    if tokens_per_step is not None:
        steps, rest = divmod(tokens_per_step, per_micro_step)
        if rest or steps == 0:
            lower = max(steps, 1) * per_micro_step  # two different multiples, the nearest ones
            higher = lower + per_micro_step
            raise EduGPTError(
                f"tokens_per_step {tokens_per_step:,} cannot be split into micro-batches of {args.world_size} "
                f"process(es) x {args.per_device_train_batch_size} blocks x {seq_len} tokens = {per_micro_step:,} tokens; "
                f"set tokens_per_step to a multiple of {per_micro_step} (e.g. {lower} or {higher}) or change "
                "per_device_train_batch_size."
            )
        if args.gradient_accumulation_steps not in (1, steps):
            raise EduGPTError(
                f"gradient_accumulation_steps {args.gradient_accumulation_steps} contradicts tokens_per_step "
                f"{tokens_per_step:,}, which gives {steps} on {args.world_size} process(es); drop "
                "gradient_accumulation_steps (tokens_per_step derives it) or set tokens_per_step to null."
            )
        args.gradient_accumulation_steps = steps
    logger.info(
        "global batch: %s tokens per optimizer step = %d process(es) x %d blocks x %d accumulation steps x %d tokens",
        f"{global_batch_blocks(args) * seq_len:,}", args.world_size, args.per_device_train_batch_size,
        args.gradient_accumulation_steps, seq_len,
    )


def compact_train_sampler(trainer, dataset) -> CompactRandomSampler | None:
    """The pretraining Trainer's train sampler: a CompactRandomSampler for a random order of a sized dataset, None
    (Trainer's own sampler) for any other `train_sampling_strategy`."""
    if trainer.args.train_sampling_strategy != "random" or not hasattr(dataset, "__len__"):
        return None
    seed = trainer.args.data_seed if trainer.args.data_seed is not None else trainer.args.seed
    return CompactRandomSampler(len(dataset), seed, batch=global_batch_blocks(trainer.args))


def _pretraining_trainer_class():
    from transformers import Trainer

    from edugpt.train.trainer_hooks import trainer_with_train_sampler

    class PretrainingTrainer(trainer_with_train_sampler(Trainer, compact_train_sampler)):
        """Trainer with a constant-memory shuffle. Subclassed because the train sampler is chosen inside Trainer
        (`_get_train_sampler`, replaced through edugpt.train.trainer_hooks) and no argument or callback can replace
        RandomSampler's O(dataset) index list."""

    return PretrainingTrainer


@dataclass
class Pretraining:
    """A ready-to-train Trainer and what the run reads after `train()`."""

    trainer: object
    config: object  # GPT2Config
    data: PreparedData
    metrics: MetricsLog


def dataset_settings(manifest: dict) -> dict:
    """What identifies the prepared data for a resume check: its source, tokenizer, split rule and sizes (not when
    it was made: re-preparing the same data is the same data)."""
    source, rule = manifest.get("source") or {}, manifest.get("split_rule") or {}
    return {
        "source": {key: source.get(key) for key in ("dataset", "subset", "max_docs")},
        "tokenizer": (manifest.get("tokenizer") or {}).get("name"),
        "val_fraction": rule.get("val_fraction"),
        "splits": {name: split.get("blocks") for name, split in (manifest.get("splits") or {}).items()},
    }


def data_digest(manifest: dict) -> dict:
    """The prepared blocks' content digest per split (the manifest's `content`, which every manifest of this format
    holds: edugpt.corpus.manifest.check_manifest). A resume compares it: data re-prepared under the same dataset_dir
    with the same counts is other data."""
    return {name: (manifest["content"].get(name) or {}).get("sha256") for name in SPLITS}


def base_model_settings(model_args) -> dict:
    """The base model of a continued pretraining run, for its settings: a local folder resolved (the lifecycle
    refuses an --overwrite_output_dir that would delete it), a Hub id with its revision; {} from scratch."""
    name = model_args.model_name_or_path
    if not name:
        return {}
    if Path(name).is_dir():
        return {"base_model": str(Path(name).resolve())}
    return {"base_model": name, "base_model_revision": model_args.model_revision}


def check_pretrain_inputs(pretrain_args, vocab_size: int) -> None:
    """The --tokenizer and the HellaSwag source, checked before the run begins: found only when the Trainer is built,
    a bad one would leave run_config.json, data_manifest.json and the lock in an output_dir that held nothing."""
    from edugpt.io.net import hub_available
    from edugpt.model.tokenizer import load_tokenizer, require_gpt2_compatible

    require_gpt2_compatible(load_tokenizer(pretrain_args.tokenizer), vocab_size)
    if pretrain_args.hellaswag_steps == 0:
        return
    if pretrain_args.hellaswag_file is not None:
        from edugpt.eval.tasks.hellaswag_local import read_hellaswag_jsonl

        read_hellaswag_jsonl(pretrain_args.hellaswag_file, max_items=pretrain_args.hellaswag_limit)
    elif not hub_available():
        raise EduGPTError(
            "hellaswag_steps needs HellaSwag from the Hugging Face Hub, which is offline or unreachable; set "
            "hellaswag_file to a local HellaSwag-format jsonl (e.g. "
            "edugpt/assets/eval/python_docs_hellaswag_format_smoke.jsonl) or hellaswag_steps 0."
        )


def fsdp_launch_problem(environ) -> str | None:
    """What this process can tell of an FSDP launch config that `accelerate launch` accepted but does not apply.

    The launcher checks its config file itself (broken YAML, an unknown top-level key, a bad value: a traceback from
    accelerate before this code runs) and passes on only the values it read, as ACCELERATE_* / FSDP_* environment
    variables, not the file's path. One mistake gets through: it copies `fsdp_config` keys it does not know onto its
    arguments and never reads them, so a misspelled `fsdp_auto_wrap_policy` leaves FSDP_AUTO_WRAP_POLICY unset and
    accelerate falls back to no wrapping."""
    if environ.get("ACCELERATE_USE_FSDP", "").lower() != "true" or "FSDP_AUTO_WRAP_POLICY" in environ:
        return None
    return ("the accelerate config asks for FSDP but sets no fsdp_auto_wrap_policy (missing, or misspelled: accelerate "
            "launch ignores fsdp_config keys it does not know), so the whole model is one FSDP unit and every process "
            "gathers all of its parameters at once; set fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP (see "
            "configs/accelerate/fsdp_8gpu.yaml), or NO_WRAP to mean it")


def build_trainer(run: TrainingRun, model_args, data_args, pretrain_args, training_args, data: PreparedData) -> Pretraining:
    """Build a from-scratch GPT-2 and a Trainer with the lifecycle's callbacks (run.attach) plus pretraining's own:
    throughput/MFU, plots, samples and (when asked) in-loop HellaSwag."""
    from transformers import set_seed

    from edugpt.model.gpt2 import current_peak_flops, flops_per_token, gpt2_config, load_gpt2, parameter_count
    from edugpt.model.tokenizer import load_tokenizer, packed_rows_have_no_padding, ready_to_save, require_gpt2_compatible
    from edugpt.train import callbacks as cb
    from edugpt.train.samples import SamplesCallback

    # Trainer settings the callbacks rely on, whatever the recipe says: tokens seen feed throughput, MFU and
    # metrics.jsonl; only the eval loss is kept (a batch of 50257-wide logits at seq 1024 would be ~200 MB a row).
    training_args.include_num_input_tokens_seen = "all"
    training_args.prediction_loss_only = True

    config = gpt2_config(model_args)
    tokenizer = load_tokenizer(pretrain_args.tokenizer)
    require_gpt2_compatible(tokenizer, config.vocab_size)
    ready_to_save(tokenizer, config.n_positions)  # saved with every checkpoint: context length, pad token

    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = bound_eval_split(data.validation, data_args.eval_max_batches,
                                        training_args.per_device_eval_batch_size)
        if len(eval_dataset) == 0:
            raise EduGPTError(
                f"the validation split of {data_args.dataset_dir} is empty; re-prepare with a larger --val_fraction "
                "or set eval_strategy: 'no'."
            )

    set_seed(training_args.seed)  # the from-scratch initialisation is part of what a seed reproduces
    model = load_gpt2(model_args, config)  # new, or model_name_or_path's weights (a resumed checkpoint's replace them)
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id  # what Trainer would align (with a warning) from the tokenizer
    packed_rows_have_no_padding()
    logger.info(
        "GPT-2 %d layers x %d heads x %d wide: %.1fM parameters, %.3g training FLOPs/token at seq_len %d",
        config.n_layer, config.n_head, config.n_embd, parameter_count(config) / 1e6,
        flops_per_token(config, data.seq_len), data.seq_len,
    )
    trainer = _pretraining_trainer_class()(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=eval_dataset,
        data_collator=collate_blocks,
        processing_class=tokenizer,  # saved into every checkpoint, so each one loads on its own
    )

    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not trainer.is_fsdp_enabled:
        # accelerate only shards on accelerators: `distributed_type: FSDP` with `use_cpu` silently runs as DDP.
        logger.warning("the accelerate config asks for FSDP, but accelerate runs FSDP on GPUs only: this run is plain "
                       "data parallel (%s), every process holds the whole model", trainer.accelerator.distributed_type)
    elif trainer.is_fsdp_enabled and (problem := fsdp_launch_problem(os.environ)):
        logger.warning(problem)
    output_dir = Path(training_args.output_dir)
    metrics = MetricsLog(output_dir / METRICS, enabled=run.is_main)
    extras = [
        cb.ThroughputCallback(flops_per_token(config, data.seq_len), current_peak_flops(pretrain_args.mfu_peak_flops),
                              training_args.world_size),
        cb.PlotCallback(output_dir, metrics, hellaswag_file=pretrain_args.hellaswag_file),
    ]
    if pretrain_args.sample_steps > 0:
        extras.append(SamplesCallback(
            tokenizer, pretrain_args.sample_prompts, pretrain_args.sample_steps, pretrain_args.sample_max_new_tokens,
            pretrain_args.sample_top_k, pretrain_args.sample_seed, output_dir / SAMPLES, metrics,
        ))
    if pretrain_args.hellaswag_steps > 0:
        from edugpt.eval.hellaswag import HellaSwagCallback  # imported only when used: it pulls in lm-eval

        extras.append(HellaSwagCallback(
            trainer, every_steps=pretrain_args.hellaswag_steps, limit=pretrain_args.hellaswag_limit,
            hellaswag_file=pretrain_args.hellaswag_file, batch_size=pretrain_args.hellaswag_batch_size,
        ))
    run.attach(trainer, *extras, nonfinite_loss=pretrain_args.nonfinite_loss,
               max_skipped_steps=pretrain_args.max_skipped_steps, metrics=metrics)
    return Pretraining(trainer=trainer, config=config, data=data, metrics=metrics)


def start_pretraining(model_args, data_args, pretrain_args, run_args,
                      training_args) -> tuple[TrainingRun, Pretraining | None]:
    """Everything before `train()`: check the arguments, output_dir and data, decide resume/restart, build the Trainer
    (None when the run has no training left). Use the run as a context manager: it holds output_dir's lock."""
    from edugpt.hub.publish import require_push_ready
    from edugpt.model.gpt2 import gpt2_config, require_compatible_checkpoint, require_data_fits

    run = TrainingRun("pretrain", training_args, run_args)
    run.check_output_dir()
    if training_args.push_to_hub:  # before any data or model: offline or without a login this fails in a second
        training_args.hub_model_id = require_push_ready(training_args.hub_model_id)
    if pretrain_args.nonfinite_loss == "skip" and not training_args.logging_nan_inf_filter:
        raise EduGPTError(
            "nonfinite_loss 'skip' needs logging_nan_inf_filter true: without it Trainer logs every loss after a "
            "skipped step as NaN; drop logging_nan_inf_filter: false or use nonfinite_loss 'stop'."
        )
    config = gpt2_config(model_args)  # with model_name_or_path: that model's, checked whole and against the recipe
    if model_args.model_name_or_path:
        require_data_fits(read_manifest(data_args.dataset_dir), config, model_args.model_name_or_path)
    # hf://datasets/... is fetched into the HF cache and verified first (edugpt.hub.datasets); run_config.json keeps the
    # name as given.
    data = load_prepared(local_dataset_dir(data_args.dataset_dir, training_args), config, data_args.seq_len)
    data_args.seq_len = data.seq_len
    apply_tokens_per_step(data_args.tokens_per_step, training_args, data.seq_len)
    if len(data.train) < global_batch_blocks(training_args):
        raise EduGPTError(
            f"the train split of {data_args.dataset_dir} has {len(data.train)} blocks, fewer than one optimizer step "
            f"({global_batch_blocks(training_args)} blocks); prepare more documents or lower the batch."
        )
    check_pretrain_inputs(pretrain_args, config.vocab_size)
    settings = training_settings(training_args, seq_len=data.seq_len, data=dataset_settings(data.manifest),
                                 data_digest=data_digest(data.manifest), **base_model_settings(model_args))
    run_config = {"model": asdict(model_args), "data": asdict(data_args), "script": asdict(pretrain_args),
                  "run": asdict(run_args), "training": training_args.to_dict()}
    run.begin(settings, run_config)
    try:
        if run.source is not None:
            require_compatible_checkpoint(run.source, config)
        if not run.needs_training:
            return run, None
        if run.is_main:
            atomic_write_json(Path(training_args.output_dir) / DATA_MANIFEST, data.manifest)
        return run, build_trainer(run, model_args, data_args, pretrain_args, training_args, data)
    except BaseException:
        run.abandon()
        raise


def pretrain(model_args, data_args, pretrain_args, run_args, training_args) -> None:
    """train_hf.py's whole job: start (or resume, or find the run finished), train, finish."""
    run, pretraining = start_pretraining(model_args, data_args, pretrain_args, run_args, training_args)
    built = [pretraining.trainer] if pretraining is not None else []

    def trainer():  # start_pretraining()'s; a fresh one if the lifecycle falls back from a checkpoint that did not load
        return built.pop() if built else build_trainer(
            run, model_args, data_args, pretrain_args, training_args, pretraining.data).trainer

    run.execute(trainer)
