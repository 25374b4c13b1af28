"""Chat bootstrap for a from-scratch GPT-2: the chat template, the pad token, and one chat reply from a model folder.

A pretrained edugpt model has no chat template and a single special token, `<|endoftext|>`. The template is the file
`edugpt/templates/chat_template.jinja` (`CHAT_TEMPLATE_PATH`; the SFT recipes pass it to TRL as `chat_template_path`,
and `add_chat_template` gives it to a tokenizer that has none), so the SFT output's tokenizer carries it; after that,
`tokenizer.apply_chat_template(messages)` and `pipeline("text-generation")` on a list of messages work unchanged.

Compare one reply from the base, SFT and DPO models (the base model gets the same template SFT would give it):
    python -m edugpt.model.chat --compare RUN/pretrain RUN/sft RUN/dpo --message "What is the capital of France?"
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.model.saved import require_saved_model

logger = logging.getLogger(__name__)

# The template ships as a file: TRL's recipes name it with `chat_template_path` (configs/sft*.yaml), and its comment
# explains the design (why <|endoftext|> is reused to end turns, and why message text can never end one).
CHAT_TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "templates" / "chat_template.jinja"
EDUGPT_CHAT_TEMPLATE = CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")
# `model.generate(ids)` without arguments would stop at 20 tokens in all; 256 new tokens is also what
# `pipeline("text-generation")` defaults to, so both answer fully.
DEFAULT_MAX_NEW_TOKENS = 256


def add_chat_template(tokenizer, model=None):
    """Give a GPT-2 tokenizer (and optionally its model) what chat needs; returns the tokenizer.

    Sets `EDUGPT_CHAT_TEMPLATE` when the tokenizer has no template (an existing one, e.g. from an earlier SFT run, is
    kept) and pad = `<|endoftext|>` (TRL builds attention and loss masks from sequence lengths, not from pad ids, so
    sharing the id with eos masks nothing). The model's generation config learns the same pad/eos ids and a
    `max_new_tokens` so that a saved model answers fully in `pipeline("text-generation")`.
    """
    if not tokenizer.chat_template:
        tokenizer.chat_template = EDUGPT_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        if model.generation_config.max_new_tokens is None:
            model.generation_config.max_new_tokens = DEFAULT_MAX_NEW_TOKENS
    return tokenizer


def require_chat_template(tokenizer, model_path: str) -> None:
    """Raise unless the tokenizer of `model_path` carries a chat template, i.e. the model went through SFT."""
    if not tokenizer.chat_template:
        raise EduGPTError(
            f"the tokenizer in {model_path!r} has no chat template, so this is not a chat model yet; the order is "
            "pretrain -> finetune/sft.py -> finetune/dpo.py: run SFT on it first and pass SFT's output_dir here."
        )


def resolve_model_dir(model_name_or_path: str | None, flag: str = "--model_name_or_path") -> str:
    """Check that a model path names a whole saved HF model folder (`require_saved_model`) or, when online, a Hub id;
    return it unchanged."""
    if not model_name_or_path:
        raise EduGPTError(f"no model given; pass {flag} with the folder a previous stage wrote (e.g. runs/pretrain).")
    path = Path(model_name_or_path)
    if path.is_dir():
        require_saved_model(path, model_name_or_path, "pass the output_dir of train_hf.py or finetune/sft.py (the "
                            "folder with config.json, model.safetensors and the tokenizer files).")
        return model_name_or_path
    from edugpt.io.net import hub_available, looks_like_hub_id, missing_local_path

    if path.exists():
        raise EduGPTError(f"{model_name_or_path!r} is a file; pass {flag} with a saved model's folder.")
    if looks_like_hub_id(model_name_or_path) and hub_available():
        return model_name_or_path
    raise EduGPTError(
        f"{missing_local_path(model_name_or_path, 'model path')}; pass {flag} with the folder a previous stage wrote "
        "(train_hf.py's output_dir for SFT, sft.py's output_dir for DPO)."
    )


def context_length(config) -> int | None:
    """The longest sequence a model config's position embeddings cover (GPT-2's n_positions), or None if unknown."""
    config = getattr(config, "config", config)  # a model or its config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def require_fits_context(context: int | None, max_length: int | None) -> None:
    """Raise unless training rows of `max_length` tokens fit a model of `context` positions."""
    if context is not None and (max_length is None or max_length > context):
        what = "max_length is not set" if max_length is None else f"max_length {max_length} exceeds the model's context"
        raise EduGPTError(f"{what} ({context} tokens), so rows could not fit the model; pass --max_length {context} "
                          "or less.")


def load_model_tokenizer(model_name_or_path: str, revision: str | None = None):
    """The tokenizer saved with a model, or one EduGPTError naming the folder: transformers raises whatever its
    parsers raise for a damaged tokenizer file (a valid JSON file can still be no tokenizer)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_name_or_path, revision=revision)
    except Exception as err:
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise EduGPTError(f"the tokenizer saved in {model_name_or_path!r} could not be loaded ({type(err).__name__}: "
                          f"{reason}); save the tokenizer with the model again (train_hf.py and finetune/sft.py "
                          "do).") from None


def load_chat_model(model_dir: str):
    """Load a model folder for chatting: (model in eval mode, tokenizer with a chat template, had_template)."""
    from transformers import AutoModelForCausalLM

    resolve_model_dir(model_dir, flag="the model folder")
    tokenizer = load_model_tokenizer(model_dir)
    had_template = bool(tokenizer.chat_template)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    add_chat_template(tokenizer, model)
    return model, tokenizer, had_template


def generate_reply(model, tokenizer, messages: list[dict], max_new_tokens: int = 48, raw: bool = False) -> str:
    """Greedy-decode one assistant reply to `messages` (deterministic, so side-by-side comparisons are repeatable).

    `raw=True` keeps what a clean reply hides: the `<|endoftext|>` that ends the turn and surrounding whitespace.
    """
    import torch

    input_ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )["input_ids"]
    n_positions = context_length(model)
    if n_positions is not None:
        if input_ids.shape[1] >= n_positions:
            raise EduGPTError(
                f"the conversation is {input_ids.shape[1]} tokens but the model's context is {n_positions}; "
                "send a shorter message."
            )
        max_new_tokens = min(max_new_tokens, n_positions - input_ids.shape[1])
    with torch.no_grad():
        output = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    reply = tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=not raw)
    return reply if raw else reply.strip()


def compare_replies(model_dirs: list[str], message: str, max_new_tokens: int = 48, raw: bool = False):
    """One greedy reply per model folder to the same user message: [(model_dir, reply, had_template), ...]."""
    messages = [{"role": "user", "content": message}]
    results = []
    for model_dir in model_dirs:
        model, tokenizer, had_template = load_chat_model(model_dir)
        results.append((model_dir, generate_reply(model, tokenizer, messages, max_new_tokens, raw), had_template))
    return results


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the usage too and exit
        raise EduGPTError(f"{message}; see --help.")


def main(argv: list[str] | None = None) -> None:
    # No prefix matching (`--comp` is a typo, not --compare), and a usage mistake is one `error:` line, as in every
    # entry point (edugpt.config.cli).
    parser = _Parser(description="Print one chat reply per model folder, side by side.", allow_abbrev=False)
    parser.add_argument("--compare", nargs="+", required=True, metavar="MODEL_DIR", help="model folders to ask")
    parser.add_argument("--message", default="What is the capital of France?", help="the user message")
    parser.add_argument("--max_new_tokens", type=int, default=48)
    args = parser.parse_args(argv)
    for model_dir in args.compare:  # fail on a bad path before loading anything
        resolve_model_dir(model_dir, flag="--compare")
    print(f"User: {args.message}")
    # Raw replies, newlines escaped: a tiny model's reply is often just "\n\n..." or an immediate <|endoftext|>,
    # which a cleaned-up reply would show as nothing at all.
    for model_dir, reply, had_template in compare_replies(args.compare, args.message, args.max_new_tokens, raw=True):
        note = "" if had_template else "  (base model: no chat template, given the one SFT adds)"
        shown = reply.replace("\n", "\\n")
        print(f"\n[{model_dir}]{note}\nAssistant:{shown}")


if __name__ == "__main__":
    from edugpt.config.cli import run

    run(main)
