"""GPT-2 configuration from arguments, parameter count, training FLOPs per token, and GPU peak FLOP/s for MFU."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.model.tokenizer import GPT2_EOS_ID

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
    ("RTX 4090", 165.2e12),  # dense bf16 with fp32 accumulation (NVIDIA Ada whitepaper)
    ("RTX 3090", 71e12),
    ("A6000", 154.8e12),  # RTX A6000
)
# The keys that must agree between a checkpoint and the model a run builds, or the weights cannot be loaded.
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")
# transformers' name for the causal-LM loss (labels shifted inside the model: position i predicts token i+1).
CAUSAL_LM_LOSS = "ForCausalLM"
# pipeline("text-generation")'s default number of new tokens (transformers 5.24-5.25).
PIPELINE_MAX_NEW_TOKENS = 256


def gpt2_config(model_args):
    """The `GPT2Config` of the run: a from-scratch GPT-2 of the shape in `model_args` (an
    `edugpt.config.arguments.ModelArguments`),
    or, with `model_args.model_name_or_path`, the config of the model to continue (`base_model_config`)."""
    from transformers import GPT2Config

    if model_args.model_name_or_path:
        return base_model_config(model_args)
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


def base_model_config(model_args):
    """The config of the GPT-2 to continue pretraining (`model_args.model_name_or_path` at `model_revision`): a local
    folder checked whole first (edugpt.model.saved.require_saved_model), or a Hub model (the HF cache when the Hub is
    offline).
    The recipe's shape keys must agree with it; those left unset take its values, written into `model_args` so that
    run_config.json records the shape trained. The recipe's dropout and attention implementation apply."""
    from transformers import AutoConfig

    from edugpt.io.net import hub_available, looks_like_hub_id, missing_local_path
    from edugpt.model.saved import require_saved_model

    name, revision = model_args.model_name_or_path, model_args.model_revision
    fix = "pass a run folder of train_hf.py, one of its checkpoint-N folders or a Hub model id."
    overrides = {"resid_pdrop": model_args.dropout, "embd_pdrop": model_args.dropout, "attn_pdrop": model_args.dropout,
                 "attn_implementation": model_args.attn_implementation}
    if Path(name).is_dir():
        if revision not in (None, "main"):
            raise EduGPTError(f"--model_revision {revision} selects a branch of a Hub model, but --model_name_or_path "
                              f"{name!r} is a local folder; drop --model_revision or pass the Hub id.")
        with _quiet_transformers():
            require_saved_model(Path(name), name, fix)
            config = AutoConfig.from_pretrained(name, **overrides)
    elif Path(name).exists() or not looks_like_hub_id(name):
        what = "is a file" if Path(name).exists() else "does not exist"
        raise EduGPTError(f"--model_name_or_path {name!r} {what}; {fix}")
    else:
        online = hub_available()
        try:
            with _quiet_transformers():
                config = AutoConfig.from_pretrained(name, revision=revision, local_files_only=not online, **overrides)
        except OSError as err:  # no such repo or revision, gated, not in the cache offline
            if not online:
                raise EduGPTError(f"{missing_local_path(name, '--model_name_or_path')}, and the HF cache holds no "
                                  f"revision {revision!r} of it; {fix}") from None
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")
            raise EduGPTError(f"--model_name_or_path {name!r} at revision {revision!r} could not be loaded from the "
                              f"Hub ({reason}); check the id and the revision (a published run's are step-N), or "
                              f"{fix}") from None
    if config.model_type != "gpt2":
        raise EduGPTError(f"--model_name_or_path {name!r} is a {config.model_type!r} model; train_hf.py continues "
                          f"GPT-2 models only (model_type gpt2); {fix}")
    differences = []
    for key in SHAPE_KEYS:
        if getattr(model_args, key) is None:
            setattr(model_args, key, getattr(config, key))
        elif getattr(model_args, key) != getattr(config, key):
            differences.append(f"{key} {getattr(model_args, key)} in the recipe, {getattr(config, key)} in the model")
    if differences:
        raise EduGPTError(
            f"the recipe's model shape disagrees with --model_name_or_path {name!r} ({'; '.join(differences)}); the "
            "shape is the model's: drop these keys from the recipe and command line, or set them to the model's values."
        )
    return config


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' INFO lines off for a while: the config is read here to be checked, and the model's own load
    prints it once more (a run would otherwise show it three times, and a refusal would bury its one line)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity(max(level, hf_logging.WARNING))
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def require_data_fits(manifest: dict, config, name: str) -> None:
    """Raise unless the prepared data (its manifest) fits the model to continue: every token id has an embedding row
    and every block fits the position embedding."""
    vocab = (manifest.get("tokenizer") or {}).get("vocab_size")
    seq_len = manifest.get("seq_len")
    if not isinstance(vocab, int) or vocab > config.vocab_size:
        raise EduGPTError(f"the data was tokenized with a {vocab}-token vocabulary but --model_name_or_path {name!r} "
                          f"has {config.vocab_size} embedding rows; prepare the data with that model's tokenizer.")
    if not isinstance(seq_len, int) or seq_len > config.n_positions:
        raise EduGPTError(f"the data's blocks are {seq_len} tokens but --model_name_or_path {name!r} covers "
                          f"{config.n_positions} positions; re-prepare with --seq_len {config.n_positions} or less.")


def load_gpt2(model_args, config):
    """The GPT-2 a run starts from: `model_args.model_name_or_path`'s weights (in fp32, as a from-scratch model:
    mixed precision keeps fp32 master weights) with `config`, else a from-scratch one (`new_gpt2`)."""
    if not model_args.model_name_or_path:
        return new_gpt2(config)
    import torch
    from transformers import GPT2LMHeadModel

    from edugpt.io.net import hub_available

    name = model_args.model_name_or_path
    hub = {} if Path(name).is_dir() else {"revision": model_args.model_revision, "local_files_only": not hub_available()}
    model = GPT2LMHeadModel.from_pretrained(name, config=config, dtype=torch.float32, **hub)
    return fit_generation_to_context(name_causal_lm_loss(model))


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
