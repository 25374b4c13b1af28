"""Every entry point's own arguments, one dataclass per concern, each validated in `__post_init__`.

The rule: options a library already names stay in the library's dataclass as they are (`transformers.TrainingArguments`,
TRL's `SFTConfig` / `DPOConfig` / `ModelConfig` / `ScriptArguments`); what they have no name for lives here, and every
entry point parses its dataclasses with `edugpt.config.cli.parse_config` (YAML recipe + command-line overrides, loud on
typos).

- train_hf.py: ModelArguments, DataArguments, PretrainArguments, RunArguments + TrainingArguments
- finetune/sft.py, finetune/dpo.py: RunArguments + TRL's ScriptArguments, SFTConfig/DPOConfig, ModelConfig
- prepare_data.py: PrepareDataArguments + ExecutorArguments
- eval_harness.py: lm-eval's own parser (edugpt.eval.options)
- publish.py: PublishArguments; python -m edugpt.report.card: CardArguments
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from edugpt.corpus.sources import EMBEDDED, FINEWEB_EDU
from edugpt.errors import EduGPTError
from edugpt.model.tokenizer import GPT2_VOCAB_SIZE

# The license of the project's own code (pyproject.toml), the default for model cards; --license changes it.
DEFAULT_LICENSE = "mit"


# The from-scratch shape when neither the recipe nor the command line sets one: configs/gpt2_270m.yaml's.
DEFAULT_SHAPE = {"n_layer": 16, "n_head": 16, "n_embd": 1024, "n_positions": 1024, "vocab_size": GPT2_VOCAB_SIZE}


@dataclass
class ModelArguments:
    """Shape of a GPT-2 (`GPT2LMHeadModel`) trained from scratch, or the model to continue pretraining
    (`model_name_or_path`, the name run_clm.py and TRL use). Names are `GPT2Config`'s."""

    n_layer: int | None = field(default=None, metadata={"help": "Number of transformer blocks (default 16)."})
    n_head: int | None = field(
        default=None, metadata={"help": "Attention heads per block; must divide n_embd (default 16)."}
    )
    n_embd: int | None = field(default=None, metadata={"help": "Width of the residual stream (default 1024)."})
    n_positions: int | None = field(
        default=None, metadata={"help": "Longest sequence the position embedding covers (default 1024)."}
    )
    vocab_size: int | None = field(
        default=None, metadata={"help": "Embedding rows; GPT-2's tokenizer has 50257 (the default)."}
    )
    dropout: float = field(default=0.0, metadata={"help": "Residual, embedding and attention dropout (0 for pretraining)."})
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "'sdpa' (fused scaled_dot_product_attention) or 'eager'."}
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Continue pretraining this model instead of a new one: a run folder, one of its checkpoint-N "
                          "folders, or a Hub id (openai-community/gpt2; you/edugpt-270m with --model_revision step-N). "
                          "The shape comes from the model: shape keys left unset take its values, set ones must agree."},
    )
    model_revision: str = field(
        default="main", metadata={"help": "Branch, tag or commit of a Hub model_name_or_path, e.g. step-5000."}
    )

    def __post_init__(self):
        for name, default in DEFAULT_SHAPE.items():
            if getattr(self, name) is None and not self.model_name_or_path:  # with a model: its value (gpt2_config)
                setattr(self, name, default)
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):  # a YAML list or dict gets here too
                raise EduGPTError(f"{name} must be a positive integer, got {value!r}.")
        if self.n_embd is not None and self.n_head is not None and self.n_embd % self.n_head:
            raise EduGPTError(
                f"n_embd ({self.n_embd}) is not divisible by n_head ({self.n_head}); pick an n_head that divides "
                f"n_embd (e.g. {self.n_embd // 64 or 1} heads of 64)."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise EduGPTError(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.model_revision not in (None, "main") and not self.model_name_or_path:
            raise EduGPTError(f"model_revision {self.model_revision!r} picks a branch of the Hub model to continue; "
                              "pass --model_name_or_path too, or drop model_revision to train from scratch.")


@dataclass
class DataArguments:
    """Where the prepared (tokenized, packed) dataset lives, how many of its tokens make one optimizer step, and how much
    of its validation split to evaluate."""

    dataset_dir: str | None = field(
        default=None, metadata={"help": "Directory written by prepare_data.py (manifest.json + train/ + validation/)."}
    )
    seq_len: int | None = field(
        default=None,
        metadata={"help": "Expected block length; must match the manifest (leave unset to take the manifest's)."},
    )
    eval_max_batches: int | None = field(
        default=None,
        metadata={"help": "Evaluate on the first N x per_device_eval_batch_size blocks of the validation split, shared "
                          "by all processes, so the number is the same on any layout (None: all whole batches)."},
    )
    tokens_per_step: int | None = field(
        default=None,
        metadata={"help": "Global batch in tokens per optimizer step (e.g. 524288): gradient_accumulation_steps is "
                          "derived as tokens_per_step / (processes x per_device_train_batch_size x seq_len), so any "
                          "number of GPUs trains the same recipe. None: gradient_accumulation_steps as given."},
    )

    def __post_init__(self):
        if self.eval_max_batches is not None and self.eval_max_batches < 1:
            raise EduGPTError(f"eval_max_batches must be >= 1 or unset, got {self.eval_max_batches}.")
        if self.tokens_per_step is not None and self.tokens_per_step < 1:
            raise EduGPTError(f"tokens_per_step must be a positive number of tokens or unset, got {self.tokens_per_step}.")


@dataclass
class PretrainArguments:
    """What `train_hf.py` adds around Trainer: samples, in-loop HellaSwag, MFU, the non-finite loss policy. (Not TRL's
    `ScriptArguments`, which names the dataset of an SFT/DPO run.)"""

    tokenizer: str = field(default="gpt2", metadata={"help": "Tokenizer saved with every checkpoint (GPT-2's BPE)."})
    sample_steps: int = field(
        default=1000, metadata={"help": "Generate samples every N optimizer steps (also at step 0 and the end; 0: off)."}
    )
    sample_prompts: list[str] = field(
        default_factory=lambda: ["Once upon a time"], metadata={"help": "Prompts continued in samples.md."}
    )
    sample_max_new_tokens: int = field(default=48, metadata={"help": "Tokens generated per sample."})
    sample_top_k: int = field(default=50, metadata={"help": "Top-k sampling (0: greedy decoding)."})
    sample_seed: int = field(default=42, metadata={"help": "Seed of the sampler; samples never touch the training RNG."})
    hellaswag_steps: int = field(
        default=0, metadata={"help": "Score HellaSwag (edugpt.eval.hellaswag.HellaSwagCallback) every N steps (0: off)."}
    )
    hellaswag_limit: int | None = field(default=None, metadata={"help": "Score only the first N HellaSwag items."})
    hellaswag_file: str | None = field(
        default=None, metadata={"help": "Local HellaSwag validation JSONL (default: the Hub dataset via lm-eval)."}
    )
    hellaswag_batch_size: int | None = field(
        default=None, metadata={"help": "Batch size of the in-loop HellaSwag scorer (default: per_device_eval_batch_size)."}
    )
    mfu_peak_flops: float | None = field(
        default=None,
        metadata={"help": "Peak FLOP/s of one device for MFU (default: looked up from the GPU's name; none on CPU)."},
    )
    nonfinite_loss: str = field(
        default="stop",
        metadata={"help": "On a NaN/inf loss or gradient: 'stop' (exit with an error, keeping the last good "
                          "checkpoint) or 'skip' (drop that optimizer step's update and train on)."},
    )
    max_skipped_steps: int = field(
        default=10,
        metadata={"help": "With nonfinite_loss 'skip': stop, as 'stop' does, when more than N steps in a row are skipped."},
    )

    def __post_init__(self):
        if isinstance(self.sample_prompts, str):  # one prompt, not one per character
            self.sample_prompts = [self.sample_prompts]
        if not all(isinstance(prompt, str) and prompt for prompt in self.sample_prompts):
            raise EduGPTError(f"sample_prompts must be non-empty strings, got {self.sample_prompts!r}.")
        for name in ("sample_steps", "hellaswag_steps", "sample_max_new_tokens", "sample_top_k", "max_skipped_steps"):
            if getattr(self, name) < 0:
                raise EduGPTError(f"{name} must be >= 0, got {getattr(self, name)}.")
        for name in ("hellaswag_limit", "hellaswag_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise EduGPTError(f"{name} must be a positive number or null, got {getattr(self, name)}.")
        if self.nonfinite_loss not in ("stop", "skip"):
            raise EduGPTError(f"nonfinite_loss must be 'stop' or 'skip', got {self.nonfinite_loss!r}.")
        if self.mfu_peak_flops is not None and self.mfu_peak_flops <= 0:
            raise EduGPTError(
                f"mfu_peak_flops must be positive FLOP/s (e.g. 989e12 for an H100), got {self.mfu_peak_flops}."
            )


@dataclass
class RunArguments:
    """How a training run treats an output_dir that already holds a run (edugpt.run.lifecycle), and what it pushes to the
    Hub while it trains (edugpt.hub.publish); every training entry point."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start over in an output_dir that holds a run (its checkpoints, final model, logs and plots "
                          "are removed first). Without it, running the same command again resumes the run."},
    )
    resume_with_changes: bool = field(
        default=False,
        metadata={"help": "Resume although the learning rate, schedule, optimizer, batch size, sequence length or "
                          "data differ from the checkpoint's; the new values take effect and run_config.json records "
                          "the change. Without it such a resume is refused with the list of differences."},
    )
    hub_step_branches: bool = field(
        default=False,
        metadata={"help": "With --push_to_hub: push every checkpoint to branch step-N of hub_model_id as soon as it is "
                          "saved, in the background (a failed push is retried at the next save and reported at the "
                          "end), so save_total_limit cannot delete a step before it is on the Hub. Load one with "
                          "from_pretrained(NAME, revision='step-N')."},
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "Print the plan and exit: parameters, FLOPs per token, the global batch of this launch, "
                          "steps/tokens/epochs, peak memory per GPU (with and without activation checkpointing) and "
                          "the cards it fits, time and cost on common GPUs, checkpoint disk (edugpt.run.plan). Writes "
                          "nothing, builds no model, uses no GPU."},
    )


@dataclass
class PublishArguments:
    """publish.py: a finished run directory to a model repo, or a prepared dataset to a dataset repo (or a dry-run
    folder)."""

    run_dir: str | None = field(
        default=None, metadata={"help": "Run directory (train_hf.py / finetune output_dir), or with --hub_dataset_id a "
                                        "prepared dataset (prepare_data.py output_dir); may come first, unflagged."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Model repo id, 'name' or 'owner/name'."})
    hub_dataset_id: str | None = field(
        default=None, metadata={"help": "Publish a prepared dataset to this dataset repo instead ('name' or "
                                        "'owner/name'); train on it with --dataset_dir hf://datasets/OWNER/NAME."})
    branches: bool = field(default=False, metadata={"help": "Also push each checkpoint-N to branch step-N."})
    space: str | None = field(
        default=None, metadata={"help": "Also put the run's web page (edugpt/app/page.py) up as this gradio Space, reading "
                                        "the model repo (edugpt/app/space.py); a --dry_run writes it as DRY/space/."})
    dry_run: str | None = field(
        default=None, metadata={"help": "Write the upload folder(s) and plan.json here instead of pushing."}
    )
    include_optimizer: bool = field(
        default=False, metadata={"help": "Also upload optimizer/scheduler/RNG/trainer state (for resuming elsewhere)."}
    )
    private: bool = field(default=False, metadata={"help": "Create the repo as private (if it does not exist yet)."})
    eval_dir: str | None = field(default=None, metadata={"help": "lm-eval results folder for the card."})
    license: str | None = field(
        default=None, metadata={"help": f"License id for the card's metadata (a run: {DEFAULT_LICENSE}, the project's; "
                                         "a dataset: its source's, e.g. odc-by for FineWeb-Edu)."})

    def __post_init__(self):
        if self.run_dir is None:
            raise EduGPTError("pass the folder to publish first: `python publish.py RUN_DIR --hub_model_id you/name` "
                              "or `python publish.py DATASET_DIR --hub_dataset_id you/name`.")
        if (self.hub_model_id is None) == (self.hub_dataset_id is None):
            raise EduGPTError("pass one of --hub_model_id (a run directory, to a model repo) and --hub_dataset_id (a "
                              "prepared dataset, to a dataset repo).")
        if self.hub_dataset_id is not None:
            run_only = [f"--{name}" for name in ("branches", "include_optimizer", "eval_dir", "space")
                        if getattr(self, name, None)]
            if run_only:
                raise EduGPTError(f"{', '.join(run_only)} describe a training run; a dataset repo has none: drop "
                                  f"{'it' if len(run_only) == 1 else 'them'} with --hub_dataset_id.")
        elif self.license is None:
            self.license = DEFAULT_LICENSE
        if self.dry_run is not None:  # before the plan is made: a folder that can never be written is the user's typo
            require_folder_path(self.dry_run, "--dry_run")


def require_folder_path(path: str, flag: str) -> None:
    """Refuse a folder path that cannot be created because it is a file or lies under one (checked without creating
    anything)."""
    target = Path(path)
    if target.is_symlink() or target.exists():
        if not target.is_dir():
            raise EduGPTError(f"{flag} {path!r} exists and is not a folder; pass the path of a new folder.")
        return
    for parent in target.parents:
        if parent.is_symlink() or parent.exists():
            if not parent.is_dir():
                raise EduGPTError(f"{flag} {path!r} lies under {str(parent)!r}, which is a file, not a folder; pass "
                                  "a folder path.")
            return


@dataclass
class CardArguments:
    """python -m edugpt.report.card: (re)write a run directory's model card."""

    run_dir: str = field(metadata={"help": "Run directory (train_hf.py / finetune output_dir) to describe."})
    eval_dir: str | None = field(
        default=None, metadata={"help": "Folder or file with lm-eval results*.json; default: searched under run_dir."}
    )
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id used in the how-to-load snippets."})
    base_model: str | None = field(default=None, metadata={"help": "Base model of a finetune (default: run_config)."})
    license: str = field(default=DEFAULT_LICENSE, metadata={"help": "License id for the card's metadata."})


def global_batch_blocks(training_args) -> int:
    """Rows per optimizer step over all processes (blocks when pretraining, examples or pairs when finetuning):
    per-device batch x gradient accumulation x processes. The one definition of the global batch."""
    return training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size


# TrainingArguments accepts these values and Trainer fails on them only inside train() (torch's optimizer: "Invalid
# learning rate"), after output_dir holds run_config.json; or it accepts them and quietly does nothing (save_steps 0).
NON_NEGATIVE = ("learning_rate", "weight_decay", "adam_epsilon", "seed", "dataloader_num_workers")
AT_LEAST_ONE = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")
INTERVALS = (("save_steps", "save_strategy"), ("eval_steps", "eval_strategy"), ("logging_steps", "logging_strategy"))


def check_training_arguments(args) -> None:
    """Refuse, at parse time, the `TrainingArguments` (SFTConfig, DPOConfig) values Trainer would only fail on later
    or silently ignore; and a `report_to` backend that is unknown or not installed."""
    for name in NON_NEGATIVE:
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise EduGPTError(f"{name} must be a finite number >= 0, got {value}.")
    for name in AT_LEAST_ONE:
        if getattr(args, name) < 1:
            raise EduGPTError(f"{name} must be >= 1, got {getattr(args, name)}.")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(args, name) < 1.0:
            raise EduGPTError(f"{name} must be in [0, 1), got {getattr(args, name)} (AdamW's usual: 0.9 and 0.95-0.999).")
    # Trainer clips only when max_grad_norm > 0: NaN (every comparison False) and inf would silently turn it off.
    if args.max_grad_norm is not None and not (math.isfinite(args.max_grad_norm) and args.max_grad_norm >= 0):
        raise EduGPTError(f"max_grad_norm must be a finite number >= 0 (0: no clipping; GPT-2's: 1.0), got "
                          f"{args.max_grad_norm}.")
    for name, strategy in INTERVALS:
        value = getattr(args, name)
        mode = getattr(args, strategy)
        if getattr(mode, "value", mode) == "steps" and value is not None and value <= 0:
            raise EduGPTError(f"{name} must be positive with {strategy} 'steps', got {value}; set {strategy}: 'no' "
                              "to turn it off.")
    _check_report_to(args.report_to)


def _check_report_to(report_to) -> None:
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    names = [name for name in names if name not in ("none", "all")]
    available = get_available_reporting_integrations()
    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            import difflib

            close = difflib.get_close_matches(name, list(INTEGRATION_TO_CALLBACK), n=1)
            raise EduGPTError(f"report_to {name!r} is not a Trainer integration"
                              + (f" (did you mean {close[0]}?)" if close else "")
                              + f"; choose from {', '.join(INTEGRATION_TO_CALLBACK)} or none.")
        # Only the backends transformers can tell are installed; the others fail in Trainer as before.
        if name not in available and name in _DETECTABLE_INTEGRATIONS:
            raise EduGPTError(f"report_to {name!r}: {name} is not installed; `pip install {name}`, "
                              "or drop it from report_to (e.g. report_to: none).")


_DETECTABLE_INTEGRATIONS = ("comet_ml", "dagshub", "dvclive", "mlflow", "neptune", "tensorboard", "wandb", "codecarbon",
                            "clearml", "swanlab", "trackio")


@dataclass
class PrepareDataArguments:
    """Arguments of `prepare_data.py` (also usable from Python:
    `edugpt.corpus.local.prepare_dataset(PrepareDataArguments(...))`)."""

    dataset: str = field(default=FINEWEB_EDU, metadata={
        "help": f"Hub dataset id, a local parquet/jsonl file or directory, or '{EMBEDDED}' (offline Python docs)."})
    output_dir: str | None = field(default=None, metadata={"help": "Where the prepared dataset is written."})
    subset: str | None = field(default=None, metadata={
        "help": "Hub config: sample-10BT (default for fineweb-edu), sample-100BT, sample-350BT or full."})
    val_fraction: float = field(default=0.01, metadata={"help": "Share of documents (by ID hash) for validation."})
    seq_len: int = field(default=1024, metadata={"help": "Tokens per packed block."})
    num_proc: int = field(default_factory=lambda: os.cpu_count() or 1, metadata={
        "help": "Processes for tokenizing with the default executor (datasets.map); default: all cores."})
    max_docs: int | None = field(default=None, metadata={
        "help": "Only the first N documents (quick slices; default executor)."})
    tokenizer: str = field(default="gpt2", metadata={
        "help": "gpt2 (tiktoken with GPT-2's ids) or a GPT-2-compatible HF tokenizer id/path."})
    overwrite: bool = field(default=False, metadata={
        "help": "Replace an output_dir that holds a dataset prepared by prepare_data.py (nothing else is replaced)."})
    verify: str | None = field(default=None, metadata={"help": "Only re-check an already prepared dataset dir."})
    cache_dir: str | None = field(default=None, metadata={
        "help": "datasets cache dir of the default executor (default: HF_DATASETS_CACHE); tasks use no cache."})

    def __post_init__(self):
        self._check_types()
        if self.verify is not None:
            return
        if not self.output_dir:
            raise EduGPTError("--output_dir is required; pass where the prepared dataset should go, e.g. "
                              "--output_dir runs/data.")
        if not 0.0 < self.val_fraction < 1.0:
            raise EduGPTError(f"--val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}; "
                              "try 0.01.")
        if self.seq_len < 2:
            raise EduGPTError(f"--seq_len must be at least 2, got {self.seq_len}; GPT-2 uses 1024.")
        if self.num_proc < 1:
            raise EduGPTError(f"--num_proc must be at least 1, got {self.num_proc}.")
        if self.max_docs is not None and self.max_docs < 1:
            raise EduGPTError(f"--max_docs must be a positive number of documents, got {self.max_docs}.")

    def _check_types(self) -> None:
        """A recipe's value arrives as YAML typed it (argparse converts only command-line strings): `seq_len: 6.5` or
        `max_docs: [1, 2]` is one line here, not a TypeError deep in packing."""
        for name, example in (("seq_len", 1024), ("num_proc", 4), ("max_docs", 20000)):
            value = getattr(self, name)
            if not (type(value) is int or (value is None and name == "max_docs")):
                raise EduGPTError(f"{name} takes a whole number, got {value!r:.80}; write e.g. `{name}: {example}`.")
        if type(self.val_fraction) not in (int, float):
            raise EduGPTError(f"val_fraction takes a number between 0 and 1, got {self.val_fraction!r:.80}; write "
                              "`val_fraction: 0.01`.")
        if type(self.overwrite) is not bool:
            raise EduGPTError(f"overwrite takes true or false, got {self.overwrite!r:.80}.")
        for name in ("dataset", "output_dir", "subset", "tokenizer", "verify", "cache_dir"):
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):  # `subset: 10` means "10"
                setattr(self, name, str(value))
            elif value is not None and not isinstance(value, str):
                raise EduGPTError(f"{name} takes one text value, got a {type(value).__name__} ({value!r:.80}); write "
                                  f"`{name}: VALUE`.")


# How prepare_data.py can run: edugpt.corpus.local ("datasets"), or datatrove tasks (edugpt.corpus.datatrove).
EXECUTORS = ("datasets", "local", "slurm", "ray")


@dataclass
class ExecutorArguments:
    """How `prepare_data.py` runs: the single-machine `datasets.map` path, or datatrove tasks (local, Slurm, Ray)."""

    executor: str = field(default="datasets", metadata={
        "help": "datasets (default: one machine, datasets.map over --num_proc processes), or datatrove tasks: "
                "local (this machine, --workers at a time), slurm (sbatch job arrays) or ray (a Ray cluster). "
                "Tasks are resumable: re-run the same command after a crash to do only what is left."})
    tasks: int | None = field(default=None, metadata={
        "help": "Tasks (equal shares of the input's rows, in order); default: one per input file, at least "
                "--workers. A re-run resumes only with the same number."})
    workers: int | None = field(default=None, metadata={
        "help": "Tasks running at once (local: default all cores; slurm/ray: default no limit)."})
    cpus_per_task: int = field(default=1, metadata={
        "help": "CPUs per task (slurm/ray reserve them; tokenizing uses that many threads)."})
    mem_per_cpu_gb: float = field(default=2.0, metadata={"help": "Memory per CPU in GB (slurm/ray reservation)."})
    slurm_partition: str | None = field(default=None, metadata={"help": "Slurm partition (required for slurm)."})
    slurm_time: str = field(default="24:00:00", metadata={"help": "Slurm time limit per job array task."})
    slurm_qos: str | None = field(default=None, metadata={"help": "Slurm QOS (default: the cluster's)."})
    slurm_env_command: str | None = field(default=None, metadata={
        "help": "Shell line each Slurm job runs to set up Python (default: source this venv's bin/activate)."})
    ray_address: str | None = field(default=None, metadata={
        "help": "Ray cluster to join (default: $RAY_ADDRESS, else a new single-node Ray on this machine)."})

    def __post_init__(self):
        if self.executor not in EXECUTORS:
            raise EduGPTError(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}.")
        for name in ("tasks", "workers", "cpus_per_task"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise EduGPTError(f"--{name} must be at least 1, got {value}.")
        if self.mem_per_cpu_gb <= 0:
            raise EduGPTError(f"--mem_per_cpu_gb must be positive, got {self.mem_per_cpu_gb}.")
        if self.executor == "datasets" and (self.tasks is not None or self.workers is not None):
            raise EduGPTError("--tasks and --workers apply to datatrove tasks; add --executor local (or slurm, ray), "
                              "or use --num_proc with the default executor.")
        if self.executor == "slurm" and not self.slurm_partition:
            raise EduGPTError("--executor slurm needs --slurm_partition (see `sinfo` for the cluster's partitions).")

