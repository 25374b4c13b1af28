"""GPT-2 configuration from arguments, parameter count, training FLOPs per token, and GPU peak FLOP/s for MFU."""

from __future__ import annotations

import json
import math
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.tokenizer import GPT2_EOS_ID

# Dense bf16 tensor-core peak FLOP/s of one device (vendor datasheets, without 2:4 sparsity). Matched in order
# against torch.cuda.get_device_name(), so the more specific names come first.
PEAK_BF16_FLOPS = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM, e.g. "NVIDIA H100 80GB HBM3"
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
)
# The keys that must agree between a checkpoint and the model a run builds, or the weights cannot be loaded.
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")
# transformers' name for the causal-LM loss (labels shifted inside the model: position i predicts token i+1).
CAUSAL_LM_LOSS = "ForCausalLM"
# pipeline("text-generation")'s default number of new tokens (transformers 5.24-5.25).
PIPELINE_MAX_NEW_TOKENS = 256


def gpt2_config(model_args):
    """A `GPT2Config` for a from-scratch GPT-2 of the shape in `model_args` (an `edugpt.args.ModelArguments`)."""
    from transformers import GPT2Config

    return GPT2Config(
        n_layer=model_args.n_layer,
        n_head=model_args.n_head,
        n_embd=model_args.n_embd,
        n_positions=model_args.n_positions,
        vocab_size=model_args.vocab_size,
        resid_pdrop=model_args.dropout,
        embd_pdrop=model_args.dropout,
        attn_pdrop=model_args.dropout,
        bos_token_id=GPT2_EOS_ID,
        eos_token_id=GPT2_EOS_ID,
        attn_implementation=model_args.attn_implementation,
    )


def new_gpt2(config):
    """A from-scratch `GPT2LMHeadModel(config)` whose loss Trainer counts right (see `name_causal_lm_loss`) and whose
    generation defaults fit its context (see `fit_generation_to_context`)."""
    from transformers import GPT2LMHeadModel

    return fit_generation_to_context(name_causal_lm_loss(GPT2LMHeadModel(config)))


def fit_generation_to_context(model):
    """Make the generation defaults saved with `model` (generation_config.json) fit its context; returns `model`.

    `pipeline("text-generation")` adds 256 new tokens unless the model's generation config sets a length, and a
    128-position model then fails in its position embedding on any prompt. So `max_new_tokens` is capped at half the
    context (the pipeline's 256 from 512 positions up, as for Hub GPT-2): a prompt of up to the other half generates
    with the defaults. Not `max_length = n_positions`, which would fit any prompt: transformers (5.25) then warns
    "Both `max_new_tokens` and `max_length` seem to have been set" on every call that passes `max_new_tokens`.
    """
    positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if not positions:
        return model
    budget = min(PIPELINE_MAX_NEW_TOKENS, positions // 2)
    if model.generation_config.max_new_tokens is None or model.generation_config.max_new_tokens > budget:
        model.generation_config.max_new_tokens = budget
    return model


def name_causal_lm_loss(model):
    """Name the loss a causal LM already uses, so that Trainer counts its targets right; returns `model`.

    transformers derives `model.loss_type` from the class name, and "GPT2LMHeadModel" matches none of its loss
    names, so it is None (the model still uses the causal-LM loss by default). Trainer then does not know that the
    loss shifts labels and counts all T labels of a row as targets where there are T-1: every logged training and
    validation loss read (T-1)/T low (0.8% at seq 128, 0.1% at 1024). The same holds for a GPT-2 loaded with
    `from_pretrained` for SFT whenever a row's first label is trained (assistant_only_loss off). Naming the loss
    fixes the count; the loss function itself is the same one.
    """
    if getattr(model, "loss_type", None) is None:
        model.loss_type = CAUSAL_LM_LOSS
    return model


def parameter_count(config) -> int:
    """Parameters of `GPT2LMHeadModel(config)`, counted on the meta device (no memory is allocated). The LM head is
    tied to the token embedding, as in GPT-2, so `parameters()` yields it once."""
    import torch
    from transformers import GPT2LMHeadModel

    with torch.device("meta"):
        model = GPT2LMHeadModel(config)
    return sum(p.numel() for p in model.parameters())


def saved_parameter_counts(model_dir: str | Path) -> dict | None:
    """Total and non-embedding parameters of a saved model, from its safetensors headers (no weights are read);
    None if a file is missing or unreadable. Tied weights are stored once, so the total equals `num_parameters()`.
    Kaplan et al.'s "non-embedding" count leaves out the token and position embeddings."""
    from safetensors import SafetensorError, safe_open

    model_dir = Path(model_dir)
    try:
        index = json.loads((model_dir / "model.safetensors.index.json").read_text())
        names = sorted(set(index["weight_map"].values()))
    except FileNotFoundError:
        names = ["model.safetensors"]
    except (ValueError, KeyError, TypeError):
        return None
    total = embedding = 0
    try:
        for name in names:
            with safe_open(str(model_dir / name), framework="np") as f:
                for key in f.keys():
                    numel = math.prod(f.get_slice(key).get_shape())
                    total += numel
                    embedding += numel if key.endswith(("wte.weight", "wpe.weight")) else 0
    except (SafetensorError, OSError):
        return None
    return {"total": total, "non_embedding": total - embedding}


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token: 6*N + 12*L*d*T, as in the PaLM paper's appendix B / nanoGPT.

    N excludes the position embedding (a lookup, no matmul) but includes the token embedding because GPT-2 ties it to
    the LM head, whose 50257-wide matmul is real work. 12*L*d*T counts the attention score and value matmuls.
    """
    matmul_params = parameter_count(config) - config.n_positions * config.n_embd
    return 6 * matmul_params + 12 * config.n_layer * config.n_embd * seq_len


def peak_flops(device_name: str | None) -> float | None:
    """Dense bf16 peak FLOP/s of the named GPU, or None when the name is unknown (or there is no GPU)."""
    if not device_name:
        return None
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    return None


def current_peak_flops(override: float | None = None) -> float | None:
    """Peak FLOP/s of this process's device: `override` if given, else looked up for the current CUDA GPU."""
    if override:
        return float(override)
    import torch

    if not torch.cuda.is_available():
        return None
    return peak_flops(torch.cuda.get_device_name())


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float, devices: int = 1) -> float:
    """Model FLOPs utilisation: the share of the devices' peak FLOP/s that the model's training FLOPs used (PaLM's
    definition: FLOPs of the model itself, so activation recomputation does not count as useful work)."""
    return tokens_per_second * flops_per_token / (peak_flops * devices)


def require_compatible_checkpoint(checkpoint_dir: str | Path, config) -> None:
    """Raise unless the model saved in `checkpoint_dir` has the shape `config` asks for."""
    path = Path(checkpoint_dir) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        raise EduGPTError(f"{path} is missing or unreadable; delete {checkpoint_dir} or use a fresh output_dir.") from None
    differences = [
        f"{key} {saved.get(key)} vs {getattr(config, key)}" for key in SHAPE_KEYS if saved.get(key) != getattr(config, key)
    ]
    if differences:
        raise EduGPTError(
            f"cannot resume from {checkpoint_dir}: its model has a different shape ({'; '.join(differences)} "
            "in checkpoint vs config); use the checkpoint's model settings or a new output_dir."
        )
