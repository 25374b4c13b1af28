"""The plan of a training run before it is launched: `--dry_run` of train_hf.py, finetune/sft.py and finetune/dpo.py.

    python train_hf.py --config configs/gpt2_270m.yaml --dry_run        # the plan; nothing written, no GPU used
    accelerate launch --config_file configs/accelerate/ddp_8gpu.yaml train_hf.py --config ... --dry_run   # on 8 GPUs
    python finetune/sft.py --config configs/sft.yaml --model_name_or_path runs/gpt2-270m --dry_run

It prints: parameters and training FLOPs per token (edugpt.model.gpt2's counts); the global batch and how it splits
for this launch (edugpt.train.pretrain's tokens_per_step rule); steps, tokens and epochs of the prepared data (its
manifest, or the recipe's max_steps when it is not prepared yet); peak memory per GPU with and without activation
checkpointing and whether that fits the common card sizes; time and cost on common GPUs at an MFU that is assumed
until a measured one is written to bench/mfu.json; disk for the checkpoints kept.

The numbers (memory model, disk, time and cost) are edugpt.run.estimate's; here the plan is assembled from a run's
arguments and printed. No torch at import. The `show_*` functions are the entry points' part.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.run.estimate import (
    CHECKPOINT_EXTRAS,
    MEMORY_CLASSES,
    GiB,
    Memory,
    checkpoint_bytes,
    checkpoints_kept,
    evaluation_memory,
    fit_verdict,
    gpu_rows,
    optimizer_bytes_per_parameter,
    read_measured_mfu,
    training_memory,
)


@dataclass
class Plan:
    """Everything `format_plan` prints; built by `pretraining_plan` / `finetune_plan`."""

    command: str
    model: str
    n_params: int
    flops_per_token: float
    seq_len: int
    batch: str
    processes: int
    data: list[str]
    steps: int | None
    tokens: int | None
    precision: str
    checkpointing: bool
    training: dict  # {False: Memory, True: Memory}: without and with activation checkpointing
    evaluation: Memory | None
    eval_batch: int | None
    checkpoint: float
    kept: int | None
    final_model: float
    gpus: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _gib(size: float) -> str:
    return f"{size / GiB:.1f} GiB"


def _count(n: float) -> str:
    """3 significant digits: 10B, 230K, 72.6K."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def format_plan(plan: Plan) -> str:
    """The plan as the console shows it."""
    off, on = ("off", "on (this run)") if plan.checkpointing else ("off (this run)", "on")
    lines = [
        f"Plan of {plan.command} (--dry_run: nothing was written, no model was built, no GPU was used)",
        "",
        f"model        {plan.model}: {plan.n_params:,} parameters",
        f"             {plan.flops_per_token / 1e9:.2f} GFLOP per token of training "
        f"(6N + 12·L·d·T at {plan.seq_len} tokens)",
        f"batch        {plan.batch}",
        *[("data         " if i == 0 else "             ") + line for i, line in enumerate(plan.data)],
        "",
        f"memory per GPU: {plan.precision}",
        f"  {'activation checkpointing':38} {off:>18} {on:>18}",
    ]
    without, with_ = plan.training[False], plan.training[True]
    labels = [label for label, _ in without.parts]
    labels += [label for label, _ in with_.parts if label not in labels]
    for label in labels:
        a, b = dict(without.parts).get(label), dict(with_.parts).get(label)
        lines.append(f"  {label:38} {_gib(a) if a is not None else '-':>18} {_gib(b) if b is not None else '-':>18}")
    lines.append(f"  {'training peak':38} {_gib(without.total):>18} {_gib(with_.total):>18}")
    needed = {False: without.needed, True: with_.needed}
    if plan.evaluation is not None:
        lines.append(f"  {f'evaluation peak (batch {plan.eval_batch})':38} {_gib(plan.evaluation.total):>18}")
        needed = {key: max(value, plan.evaluation.needed) for key, value in needed.items()}
    lines.append(f"  {'needed on the GPU (+10%, +1 GiB CUDA)':38} {_gib(needed[False]):>18} {_gib(needed[True]):>18}")
    for name, cards, capacity in MEMORY_CLASSES:
        lines.append(f"  {name + ' (' + cards + ')':38} {fit_verdict(needed[False], capacity):>18} "
                     f"{fit_verdict(needed[True], capacity):>18}")
    lines.append("")
    if plan.tokens is None:
        lines.append("time         unknown without a number of steps: set max_steps (pretraining: or prepare the data)")
    else:
        lines.append(f"time and cost of {_count(plan.tokens)} tokens on {plan.processes} GPU(s) "
                     f"({'with' if plan.checkpointing else 'without'} activation checkpointing):")
        for row in plan.gpus:
            cost = "" if row["cost"] is None else f"${row['cost']:,.{0 if row['cost'] >= 10 else 2}f}"
            cost += f" at ${row['price']:.2f}/GPU-hour" if cost else ""
            lines.append(f"  {row['gpu']:10} {row['peak'] / 1e12:6.0f} TFLOP/s bf16 x {row['mfu']:.0%} MFU "
                         f"({row['source']}): {_count(row['tokens_per_second'] * plan.processes)} tokens/s, "
                         f"{_hours(row['hours'])}, {cost}".rstrip(", "))
    lines.append("")
    if plan.kept is None:
        lines.append(f"disk         {_gib(plan.checkpoint)} per checkpoint (no save_total_limit: one per save) + "
                     f"the final model {_gib(plan.final_model)}")
    elif plan.kept == 0:
        lines.append(f"disk         no checkpoints (save_strategy no); the final model {_gib(plan.final_model)}")
    else:
        total = plan.kept * plan.checkpoint + plan.final_model
        lines += [f"disk         {plan.kept} checkpoint(s) kept x {_gib(plan.checkpoint)} (weights and optimizer "
                  f"state) + the final model {_gib(plan.final_model)} = {_gib(total)}",
                  f"             {_gib((plan.kept + 1) * plan.checkpoint + plan.final_model)} at most: a new checkpoint "
                  "is written before the oldest is deleted"]
    lines += [f"note         {note}" for note in plan.notes]
    return "\n".join(lines)


def _hours(hours: float | None) -> str:
    if hours is None:
        return "?"
    if hours < 1:
        return f"{hours * 60:.0f} min"
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


# --- entry points -------------------------------------------------------------------------------------------------


def dry_run_argv(argv: list[str] | None) -> list[str] | None:
    """The command line to parse: with --dry_run, TrainingArguments is told to pick the CPU (`--use_cpu true`, and
    `--tf32 false`, a CUDA-only mode), so parsing selects no GPU and a GPU recipe plans on a laptop too. The plan reads
    neither value; bf16 stays the recipe's."""
    args = list(sys.argv[1:] if argv is None else argv)
    wanted = False
    for i, arg in enumerate(args):
        if arg == "--dry_run":
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else "true"
            wanted = value.lower() in ("true", "1", "yes")
        elif arg.startswith("--dry_run="):
            wanted = arg.partition("=")[2].lower() in ("true", "1", "yes")
    if not wanted:
        return argv
    import transformers

    # What TrainingArguments then says about the CPU it was told to pick (torch_compile's speedups ...) is not this
    # run's; the plan is the output.
    transformers.utils.logging.set_verbosity_error()
    return [*args, "--use_cpu", "true", "--tf32", "false"]


def _launch(training_args) -> tuple[int, bool]:
    """Processes of this launch and whether FSDP shards the model (accelerate launch's environment or `fsdp`)."""
    import os

    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" or bool(training_args.fsdp)
    return training_args.world_size, fsdp


def _memory_pair(config, n_params, training_args, *, seq_len, sequences, param_bytes, attn, reference=False):
    """Training memory without and with checkpointing, evaluation memory, the optimizer note, precision words."""
    processes, fsdp = _launch(training_args)
    mixed = bool(training_args.bf16 or training_args.fp16)
    optimizer_bytes, note = optimizer_bytes_per_parameter(training_args.optim, param_bytes)
    common = dict(seq_len=seq_len, mixed_precision=mixed, optimizer_bytes=optimizer_bytes, param_bytes=param_bytes,
                  attn_implementation=attn, world_size=processes, fsdp=fsdp)
    training = {ckpt: training_memory(config, n_params, sequences=sequences, checkpointing=ckpt,
                                      reference_model=reference, **common) for ckpt in (False, True)}
    evaluation = None
    if str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy)) != "no":
        evaluation = evaluation_memory(config, n_params, sequences=training_args.per_device_eval_batch_size, **common)
    dtype = {4: "fp32", 2: "bf16"}[param_bytes]
    precision = (f"{'bf16' if training_args.bf16 else 'fp16' if training_args.fp16 else 'fp32'} "
                 f"{'autocast over ' + dtype + ' weights' if mixed else 'weights and activations'}, "
                 f"{getattr(training_args.optim, 'value', training_args.optim)}, "
                 f"micro-batch {training_args.per_device_train_batch_size} x {seq_len} tokens, "
                 f"{attn} attention" + (f", FSDP over {processes} processes" if fsdp else ""))
    notes = [note] if note else []
    if training_args.torch_compile:
        notes.append("torch_compile fuses GELU and the casts and saves fewer tensors: the activations are an upper bound")
    return training, evaluation, precision, notes, optimizer_bytes, fsdp


def pretraining_plan(model_args, data_args, training_args, command: str) -> Plan:
    """The plan of `train_hf.py` with these arguments: reads the prepared data's manifest (and checks the data as the
    run would) when dataset_dir exists; builds no model and writes nothing."""
    from edugpt.config.arguments import global_batch_blocks
    from edugpt.model.gpt2 import flops_per_token, gpt2_config, parameter_count
    from edugpt.train.pretrain import apply_tokens_per_step, load_prepared

    config = gpt2_config(model_args)
    n_params = parameter_count(config)
    data_lines, train_blocks = [], None
    if data_args.dataset_dir and Path(data_args.dataset_dir).is_dir():
        data = load_prepared(data_args.dataset_dir, config, data_args.seq_len)
        seq_len, train_blocks = data.seq_len, len(data.train)
        source = (data.manifest.get("source") or {}).get("dataset")
        data_lines.append(f"{data_args.dataset_dir}: {train_blocks:,} training blocks of {seq_len} tokens "
                          f"({_count(train_blocks * seq_len)} tokens{', from ' + source if source else ''})")
    else:
        seq_len = data_args.seq_len or config.n_positions
        where = data_args.dataset_dir or "no dataset_dir"
        state = ("fetched when the run starts, not by --dry_run" if str(where).startswith("hf://")
                 else "not prepared yet (prepare_data.py writes it)")
        data_lines.append(f"{where}: {state}; blocks of {seq_len} tokens assumed")
    apply_tokens_per_step(data_args.tokens_per_step, training_args, seq_len)  # the run's rule: may refuse the split
    blocks = global_batch_blocks(training_args)
    processes, _ = _launch(training_args)
    batch = (f"{blocks * seq_len:,} tokens per optimizer step = {processes} process(es) x "
             f"{training_args.per_device_train_batch_size} blocks x {training_args.gradient_accumulation_steps} "
             f"accumulation steps x {seq_len} tokens")
    steps = training_args.max_steps if training_args.max_steps > 0 else None
    if steps is None and train_blocks is not None:
        steps = math.ceil(training_args.num_train_epochs * (train_blocks // blocks))
    tokens = None if steps is None else steps * blocks * seq_len
    if steps is not None:
        epochs = f", {steps * blocks / train_blocks:.2f} epochs of the training split" if train_blocks else ""
        data_lines.append(f"{steps:,} steps x {blocks * seq_len:,} tokens = {_count(tokens)} tokens{epochs}")
    training, evaluation, precision, notes, optimizer_bytes, fsdp = _memory_pair(
        config, n_params, training_args, seq_len=seq_len, sequences=training_args.per_device_train_batch_size,
        param_bytes=4, attn=model_args.attn_implementation)
    checkpointing = bool(training_args.activation_checkpointing)
    return Plan(
        command=command, model=(f"GPT-2, {config.n_layer} layers x {config.n_head} heads x {config.n_embd} wide, "
                                f"context {config.n_positions}, vocabulary {config.vocab_size}"),
        n_params=n_params, flops_per_token=flops_per_token(config, seq_len), seq_len=seq_len, batch=batch,
        processes=processes, data=data_lines, steps=steps, tokens=tokens, precision=precision,
        checkpointing=checkpointing, training=training, evaluation=evaluation,
        eval_batch=training_args.per_device_eval_batch_size,
        checkpoint=checkpoint_bytes(n_params, 4, optimizer_bytes, fsdp),
        kept=checkpoints_kept(steps, training_args.save_strategy, training_args.save_steps,
                              training_args.save_total_limit),
        final_model=4 * n_params + CHECKPOINT_EXTRAS,
        gpus=gpu_rows(flops_per_token(config, seq_len), tokens, processes, checkpointing, read_measured_mfu()),
        notes=notes,
    )


def finetune_plan(stage: str, script_args, training_args, model_args, command: str) -> Plan:
    """The plan of finetune/sft.py or finetune/dpo.py: the base model's config.json is read (a Hub id's is fetched,
    that file only); the data is not loaded, so the number of steps is known only from max_steps."""
    from transformers import AutoConfig, GPT2Config

    from edugpt.config.arguments import global_batch_blocks
    from edugpt.model.chat import resolve_model_dir
    from edugpt.model.gpt2 import flops_per_token, parameter_count

    model_path = resolve_model_dir(model_args.model_name_or_path)
    config = AutoConfig.from_pretrained(model_path, revision=model_args.model_revision)
    if not isinstance(config, GPT2Config):
        raise EduGPTError(f"--dry_run plans GPT-2 models (edugpt's); {model_path} is a {config.model_type!r} model.")
    n_params = parameter_count(config)
    seq_len = training_args.max_length or config.n_positions
    dtype = str(getattr(config, "dtype", None) or "float32") if model_args.dtype == "auto" else str(model_args.dtype)
    param_bytes = 2 if dtype.removeprefix("torch.") in ("bfloat16", "float16") else 4
    sequences = training_args.per_device_train_batch_size * (2 if stage == "dpo" else 1)  # chosen + rejected
    rows = global_batch_blocks(training_args)
    processes, _ = _launch(training_args)
    what = "pairs" if stage == "dpo" else "rows"
    batch = (f"{rows:,} {what} per optimizer step = {processes} process(es) x {training_args.per_device_train_batch_size}"
             f" {what} x {training_args.gradient_accumulation_steps} accumulation steps, each of up to {seq_len} tokens"
             + (" (packed)" if getattr(training_args, "packing", False) else ""))
    steps = training_args.max_steps if training_args.max_steps > 0 else None
    tokens = None if steps is None else steps * rows * (2 if stage == "dpo" else 1) * seq_len
    dataset = script_args.dataset_name or "the recipe's datasets"
    data = [f"{dataset}: not loaded by --dry_run" + ("" if steps else
            f"; {training_args.num_train_epochs:g} epochs, steps from its rows")]
    if steps is not None:
        data.append(f"{steps:,} steps, at most {_count(tokens)} tokens")
    reference = stage == "dpo" and not training_args.precompute_ref_log_probs
    training, evaluation, precision, notes, optimizer_bytes, fsdp = _memory_pair(
        config, n_params, training_args, seq_len=seq_len, sequences=sequences, param_bytes=param_bytes,
        attn=model_args.attn_implementation or "sdpa", reference=reference)
    notes.append(f"{stage.upper()}: TRL's loss code, not transformers' (an estimate from the pretraining model); rows "
                 "shorter than max_length need less")
    per_token = flops_per_token(config, seq_len) + (2 * n_params if reference else 0)  # + the reference's forward
    checkpointing = bool(training_args.activation_checkpointing)
    return Plan(
        command=command, model=f"{model_path} (GPT-2, {config.n_layer} layers x {config.n_embd} wide)",
        n_params=n_params, flops_per_token=per_token, seq_len=seq_len, batch=batch, processes=processes, data=data,
        steps=steps, tokens=tokens, precision=precision, checkpointing=checkpointing, training=training,
        evaluation=evaluation, eval_batch=training_args.per_device_eval_batch_size,
        checkpoint=checkpoint_bytes(n_params, param_bytes, optimizer_bytes, fsdp),
        kept=checkpoints_kept(steps, training_args.save_strategy, training_args.save_steps,
                              training_args.save_total_limit),
        final_model=param_bytes * n_params + CHECKPOINT_EXTRAS,
        gpus=gpu_rows(per_token, tokens, processes, checkpointing, read_measured_mfu()), notes=notes,
    )


def _command(script: str, argv: list[str] | None) -> str:
    """`script --config RECIPE` as the plan's title."""
    args = list(sys.argv[1:] if argv is None else argv)
    recipe = args[args.index("--config") + 1] if "--config" in args[:-1] else None
    return f"{script} --config {recipe}" if recipe else script


def show_pretraining_plan(model_args, data_args, run_args, training_args, argv: list[str] | None = None) -> None:
    """train_hf.py --dry_run: refuse what the run would refuse before it writes (output_dir, data, batch split), then
    print the plan on the main process."""
    from edugpt.run.lifecycle import TrainingRun

    TrainingRun("pretrain", training_args, run_args).check_output_dir()
    plan = pretraining_plan(model_args, data_args, training_args, _command("train_hf.py", argv))
    if training_args.process_index == 0:
        print(format_plan(plan), flush=True)


def show_finetune_plan(stage: str, script_args, training_args, model_args, run_args,
                       argv: list[str] | None = None) -> None:
    """finetune/sft.py and finetune/dpo.py --dry_run."""
    from edugpt.run.lifecycle import TrainingRun

    TrainingRun(stage, training_args, run_args).check_output_dir()
    plan = finetune_plan(stage, script_args, training_args, model_args, _command(f"finetune/{stage}.py", argv))
    if training_args.process_index == 0:
        print(format_plan(plan), flush=True)
