"""The numbers of a training plan (edugpt.run.plan, `--dry_run`): peak memory per GPU, checkpoint disk, time and cost
on common GPUs, and the card classes a run is held to.

The memory model counts what eager PyTorch keeps alive at the peak of a training step of transformers' GPT-2, tensor
by tensor (`block_saved_bytes`): the fp32 weights, their gradients and optimizer state, the bf16 copies autocast
makes of the matmul weights, every tensor a block saves for backward (or, with activation checkpointing, only the
block inputs plus one block recomputed), and the cross-entropy over the vocabulary at the start of backward. A test
(tests/integration/test_plan_end_to_end.py) checks it against the peak RSS of real Trainer steps on the CPU in
fp32. torch_compile fuses the element-wise chains (GELU, casts) and usually saves less: for a compiled run the
figure is an upper bound.

Pure functions over numbers and a GPT2Config: no torch at import.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
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
# A recipe is sized to leave at least this share of its card class free (tests/unit/test_plan.py holds the recipes to it).
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
        raise EduGPTError(f"{path} is not a JSON file of measured MFU ({err}); fix it (see edugpt/run/estimate.py) or "
                          "delete it to plan with the assumed MFU.") from None
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
