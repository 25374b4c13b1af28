"""The plan of a training run before it is launched: `--dry_run` of train_hf.py, finetune/sft.py and finetune/dpo.py.

    python train_hf.py --config configs/gpt2_270m.yaml --dry_run        # the plan; nothing written, no GPU used
    accelerate launch --config_file configs/accelerate/ddp_8gpu.yaml train_hf.py --config ... --dry_run   # on 8 GPUs
    python finetune/sft.py --config configs/sft.yaml --model_name_or_path runs/gpt2-270m --dry_run

It prints: parameters and training FLOPs per token (edugpt.model.gpt2's counts); the global batch and how it splits
for this launch (edugpt.train.pretrain's tokens_per_step rule); steps, tokens and epochs of the prepared data (its
manifest, or the recipe's max_steps when it is not prepared yet); peak memory per GPU with and without activation
checkpointing and whether that fits the common card sizes; time and cost on common GPUs at an MFU that is assumed
until a measured one is written to bench/mfu.json; disk for the checkpoints kept.

The memory model counts what eager PyTorch keeps alive at the peak of a training step of transformers' GPT-2, tensor
by tensor (`block_saved_bytes`): the fp32 weights, their gradients and optimizer state, the bf16 copies autocast
makes of the matmul weights, every tensor a block saves for backward (or, with activation checkpointing, only the
block inputs plus one block recomputed), and the cross-entropy over the vocabulary at the start of backward. A test
(tests/test_plan.py) checks it against the peak RSS of real Trainer steps on the CPU in fp32. torch_compile fuses
the element-wise chains (GELU, casts) and usually saves less: for a compiled run the figure is an upper bound.

Pure functions over numbers and a GPT2Config: no torch at import. The `show_*` functions are the entry points' part.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from edugpt.errors import EduGPTError

GiB = 2**30
MiB = 2**20
# Card memory classes, each at its smallest card's total as nvidia-smi reports it (MiB): an L4 has 23,034 MiB, an RTX
# 4090 24,564; an L40S 46,068, an A6000 49,140; an H100 SXM 81,559; an H100 NVL 95,830, a GH200 ~97,000.
MEMORY_CLASSES = (
    ("24 GB", "RTX 3090/4090, L4", 23034 * MiB),
    ("40 GB", "A100-40G", 40960 * MiB),
    ("48 GB", "L40S, A6000", 46068 * MiB),
    ("80 GB", "H100, A100-80G", 81559 * MiB),
    ("96 GB", "GH200, H100 NVL", 95830 * MiB),
)
# Outside what the model's tensors take: the CUDA context and cuBLAS/NCCL workspaces (not in torch's allocator), and
# the caching allocator's slack (it reserves more than it hands out; 5-15% on training loops).
CUDA_OVERHEAD = 1 * GiB
ALLOCATOR_SLACK = 0.10
# A recipe is sized to leave at least this share of its card class free (tests/test_plan.py holds the recipes to it).
HEADROOM = 0.20

# GPUs the time table names: (name as edugpt.model.gpt2.peak_flops matches it, label, assumed on-demand $ per GPU-hour in
# 2025 on GPU clouds such as Lambda and RunPod: yours will differ, the hours are the figure to trust).
PRICED_GPUS = (
    ("H100", "H100 SXM", 2.50),
    ("GH200", "GH200", 1.50),
    ("A100", "A100", 1.30),
    ("L40S", "L40S", 0.90),
    ("RTX 4090", "RTX 4090", 0.40),
)
# No GPU has run bench/bench_gpu.py yet (bench/RESULTS.md): nanoGPT-style GPT-2 training with torch.compile and flash
# attention reports 40-50% on A100/H100. A measured figure in MEASURED_MFU replaces it for that GPU.
ASSUMED_MFU = 0.40
MEASURED_MFU = Path(__file__).resolve().parents[2] / "bench" / "mfu.json"
# Recomputing each block's forward in backward costs a third more compute at the same model FLOPs (PaLM's MFU counts
# no recomputation), so activation checkpointing runs at about 3/4 of the MFU.
CHECKPOINTING_SPEED = 0.75

# Optimizer state per parameter, in units of the parameter's own bytes: AdamW keeps two moments of the parameter's
# dtype; the 8-bit variants one byte each; SGD without momentum (Trainer's default) and Adafactor next to nothing.
OPTIMIZER_STATE = {"adamw_torch": 2, "adamw_torch_fused": 2, "adamw_torch_xla": 2, "adamw_apex_fused": 2,
                   "adamw_hf": 2, "lion_32bit": 1, "paged_lion_32bit": 1, "adafactor": 0, "sgd": 0}
OPTIMIZER_STATE_BYTES_8BIT = 2  # adamw_8bit, adamw_bnb_8bit, paged_adamw_8bit: two 1-byte moments
# Tokenizer files, config, scheduler, RNG and trainer state saved with every checkpoint (GPT-2's BPE files are ~3.6 MB).
CHECKPOINT_EXTRAS = 5 * 2**20


@dataclass(frozen=True)
class Memory:
    """Named parts of a peak, in bytes; `needed` adds what the GPU holds besides the model's tensors."""

    parts: tuple[tuple[str, float], ...]

    @property
    def total(self) -> float:
        return sum(size for _, size in self.parts)

    @property
    def needed(self) -> float:
        return self.total * (1 + ALLOCATOR_SLACK) + CUDA_OVERHEAD


def activation_bytes(mixed_precision: bool, param_bytes: int = 4) -> int:
    """Bytes per element of the activations matmuls save: bf16/fp16 under autocast or with 16-bit weights, else fp32."""
    return 2 if mixed_precision or param_bytes == 2 else 4


def block_saved_bytes(config, seq_len: int, act: int, attn_implementation: str = "sdpa") -> float:
    """Bytes one transformers GPT2Block saves for backward per sequence of `seq_len` tokens, counted tensor by tensor
    in eager PyTorch (`act`: bytes of a matmul activation, 2 under bf16 autocast, 4 in fp32).

    The residual stream stays fp32 (the weights are), so both LayerNorm inputs are 4 bytes; what a matmul saves is its
    input cast to the autocast dtype. GPT-2's "gelu_new" is five tensor ops in Python, and CUDA autocast runs `pow` in
    fp32: its fp32 input, tanh, 1 + tanh, 0.5 * x and the output are all kept (18 bytes per hidden unit under bf16
    autocast, 20 in fp32: more than the rest of the block). Dropout at p=0 keeps no mask. 86 bytes per token per
    unit of width under bf16 autocast, 116 in fp32 (Korthikanti et al.'s fused-kernel count is 34 at 16 bits).
    """
    h = config.n_embd
    inner = getattr(config, "n_inner", None) or 4 * h
    per_token = (
        h * 4 * 2  # the inputs of ln_1 and ln_2: the fp32 residual stream
        + h * act * 2  # the LayerNorm outputs, as c_attn's and c_fc's inputs
        + h * act * 3  # q, k, v: c_attn's output, saved by attention
        + h * act * 2  # the attention output and its heads-merged copy (c_proj's input)
    )
    if getattr(config, "activation_function", "gelu_new") == "gelu_new":
        per_token += inner * (4 * 3 + act * 2)  # pow's fp32 input, tanh, 1 + tanh; 0.5 * x and c_proj's input
    else:  # a fused activation (F.gelu ...) saves its input; c_proj saves the output
        per_token += inner * act * 2
    per_sequence = seq_len * per_token
    if attn_implementation == "eager":  # the attention probabilities: softmax's fp32 output, and its autocast copy
        per_sequence += config.n_head * seq_len**2 * (4 + (act if act != 4 else 0))
    return per_sequence


def loss_bytes_per_token(vocab_size: int) -> int:
    """Bytes per token of the cross-entropy at the start of backward: transformers' causal-LM loss upcasts the logits
    to fp32 and keeps log_softmax's output; backward then holds that, the loss's gradient and log_softmax's gradient,
    three fp32 vectors over the vocabulary (12 bytes per vocabulary entry, in fp32 and under autocast alike)."""
    return 12 * vocab_size


def optimizer_bytes_per_parameter(optim: str, param_bytes: int) -> tuple[float, str]:
    """Optimizer state per parameter, and a note when the optimizer is not one this table knows."""
    name = str(getattr(optim, "value", optim))
    if name in OPTIMIZER_STATE:
        return OPTIMIZER_STATE[name] * param_bytes, ""
    if "8bit" in name:
        return OPTIMIZER_STATE_BYTES_8BIT, ""
    return 2 * param_bytes, f"optimizer {name}: its state is counted as AdamW's two moments"


def training_memory(config, n_params: int, *, seq_len: int, sequences: int, mixed_precision: bool,
                    checkpointing: bool, optimizer_bytes: float, param_bytes: int = 4,
                    attn_implementation: str = "sdpa", world_size: int = 1, fsdp: bool = False,
                    reference_model: bool = False) -> Memory:
    """Peak memory per GPU of one training micro-batch of `sequences` rows of `seq_len` tokens.

    Gradients count as alive throughout: with gradient accumulation the previous micro-batch's are (every shipped
    recipe accumulates); with none the peak is up to one gradient copy lower. Under DDP the gradients are copied into
    its all-reduce buckets (accelerate keeps gradient_as_bucket_view off); under FSDP weights, gradients and optimizer
    state are sharded over the processes, and the embedding plus two blocks are gathered at a time.
    """
    act = activation_bytes(mixed_precision, param_bytes)
    h, vocab, layers = config.n_embd, config.vocab_size, config.n_layer
    shard = world_size if fsdp else 1
    matmul_params = n_params - config.n_positions * h  # as edugpt.model.gpt2.flops_per_token counts them
    tokens = sequences * seq_len
    parts = [("weights", param_bytes * n_params / shard)]
    if mixed_precision and param_bytes == 4:  # autocast keeps its cast of each matmul weight until backward used it
        parts.append(("bf16 weight copies (autocast)", 2 * matmul_params / shard))
    parts += [("gradients", param_bytes * n_params / shard), ("optimizer state", optimizer_bytes * n_params / shard)]
    if world_size > 1 and not fsdp:
        parts.append(("DDP gradient buckets", param_bytes * n_params))
    if fsdp and world_size > 1:
        block = (n_params - (vocab + config.n_positions) * h) / layers
        parts.append(("FSDP gathered units", 2 * param_bytes * ((vocab + config.n_positions) * h + 2 * block)))
    if reference_model:
        parts.append(("reference model (DPO)", param_bytes * n_params / shard))
    block = sequences * block_saved_bytes(config, seq_len, act, attn_implementation)
    # With checkpointing each block keeps only its input (the fp32 residual stream) and is recomputed in backward.
    parts.append(("activations saved for backward", layers * (tokens * h * 4 if checkpointing else block)))
    parts.append(("final LayerNorm and LM head inputs", tokens * h * (4 + act)))
    loss = tokens * loss_bytes_per_token(vocab)
    # The loss's tensors are gone before the first block is recomputed: the peak holds the larger of the two.
    parts.append(("one block recomputed", block) if checkpointing and block > loss else
                 (f"logits and loss (x {vocab:,} vocabulary)", loss))
    return Memory(tuple(parts))


def evaluation_memory(config, n_params: int, *, seq_len: int, sequences: int, mixed_precision: bool,
                      optimizer_bytes: float, param_bytes: int = 4, attn_implementation: str = "sdpa",
                      world_size: int = 1, fsdp: bool = False) -> Memory:
    """Peak memory per GPU of one evaluation batch during training: the optimizer state stays resident (the
    gradients are freed after each step); the logits, their fp32 copy and log_softmax's output (10 bytes per
    vocabulary entry under autocast, 8 in fp32); at most one block's tensors at a time."""
    act = activation_bytes(mixed_precision, param_bytes)
    shard = world_size if fsdp else 1
    tokens = sequences * seq_len
    parts = [("weights", param_bytes * n_params / shard)]
    if mixed_precision and param_bytes == 4:
        parts.append(("bf16 weight copies (autocast)", 2 * (n_params - config.n_positions * config.n_embd) / shard))
    parts += [
        ("optimizer state", optimizer_bytes * n_params / shard),
        ("one block", sequences * block_saved_bytes(config, seq_len, act, attn_implementation)),
        ("logits and loss", tokens * config.vocab_size * (act + (4 if act != 4 else 0) + 4)),
    ]
    return Memory(tuple(parts))


def fit_verdict(needed: float, capacity: float) -> str:
    """'fits (N% free)' or 'does not fit' for a card of `capacity` bytes."""
    if needed > capacity:
        return "does not fit"
    return f"fits ({100 * (1 - needed / capacity):.0f}% free)"


def fits_with_headroom(needed: float, capacity: float) -> bool:
    return needed <= capacity * (1 - HEADROOM)


def checkpoint_bytes(n_params: int, param_bytes: int, optimizer_bytes: float, fsdp: bool = False) -> float:
    """One checkpoint-N/: model.safetensors (tied weights stored once), optimizer state, tokenizer and trainer files;
    under FSDP also the full state dict it resumes from (pytorch_model_fsdp.bin)."""
    return n_params * (param_bytes * (2 if fsdp else 1) + optimizer_bytes) + CHECKPOINT_EXTRAS


def checkpoints_kept(steps: int | None, save_strategy, save_steps: float, save_total_limit: int | None) -> int | None:
    """How many checkpoint-N/ stay on disk at the end (None: unknown without the number of steps)."""
    strategy = str(getattr(save_strategy, "value", save_strategy))
    if strategy == "no":
        return 0
    if save_total_limit is not None:
        return save_total_limit if steps is None else min(save_total_limit, max(1, _saves(steps, strategy, save_steps)))
    return None if steps is None else max(1, _saves(steps, strategy, save_steps))


def _saves(steps: int, strategy: str, save_steps: float) -> int:
    if strategy != "steps":  # "epoch" / "best": at most one per epoch; count the final one
        return 1
    interval = math.ceil(steps * save_steps) if save_steps < 1 else int(save_steps)  # < 1: a share of all steps
    return max(1, steps // max(1, interval))


def read_measured_mfu(path: Path = MEASURED_MFU) -> dict[str, tuple[float, str]]:
    """Measured MFU per GPU name from `path` (bench/mfu.json: {"H100": {"mfu": 0.43, "measured": "how, when"}}), or {}
    when there is no such file yet."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise EduGPTError(f"{path} is not a JSON file of measured MFU ({err}); fix it (see edugpt/run/plan.py) or delete "
                          "it to plan with the assumed MFU.") from None
    measured = {}
    for name, entry in (data.items() if isinstance(data, dict) else []):
        mfu = entry.get("mfu") if isinstance(entry, dict) else None
        if not isinstance(mfu, (int, float)) or not 0 < mfu <= 1:
            raise EduGPTError(f"{path}: {name!r} needs an 'mfu' between 0 and 1 (0.43 for 43%), got {mfu!r}; fix it "
                              "or delete the entry.")
        measured[name] = (float(mfu), str(entry.get("measured", "measured")))
    return measured


def gpu_rows(flops_per_token: float, tokens: int | None, processes: int, checkpointing: bool,
             measured: dict[str, tuple[float, str]]) -> list[dict]:
    """Throughput, hours and cost of `tokens` on `processes` GPUs of each named kind."""
    from edugpt.model.gpt2 import peak_flops

    rows = []
    for name, label, price in PRICED_GPUS:
        peak = peak_flops(name)
        mfu, source = measured.get(name, (ASSUMED_MFU, "assumed"))
        effective = mfu * (CHECKPOINTING_SPEED if checkpointing else 1.0)
        per_gpu = effective * peak / flops_per_token
        hours = None if tokens is None else tokens / (per_gpu * processes) / 3600
        rows.append({"gpu": label, "peak": peak, "mfu": mfu, "source": source, "tokens_per_second": per_gpu,
                     "hours": hours, "cost": None if hours is None else hours * processes * price, "price": price})
    return rows


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
    from edugpt.model.gpt2 import flops_per_token, gpt2_config, parameter_count
    from edugpt.train.pretrain import apply_tokens_per_step, global_batch_blocks, load_prepared

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

    from edugpt.model.chat import resolve_model_dir
    from edugpt.model.gpt2 import flops_per_token, parameter_count
    from edugpt.train.pretrain import global_batch_blocks

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
