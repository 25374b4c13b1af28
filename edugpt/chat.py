"""Chat bootstrap for a from-scratch GPT-2: the chat template, the pad token, and one chat reply from a model folder.

A pretrained edugpt model has no chat template and a single special token, `<|endoftext|>`. `finetune/sft.py` calls
`add_chat_template` so the SFT output's tokenizer carries `EDUGPT_CHAT_TEMPLATE`; after that,
`tokenizer.apply_chat_template(messages)` and `pipeline("text-generation")` on a list of messages work unchanged.

Compare one reply from the base, SFT and DPO models (the base model gets the same template SFT would give it):
    python -m edugpt.chat --compare RUN/pretrain RUN/sft RUN/dpo --message "What is the capital of France?"
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from edugpt.errors import EduGPTError

logger = logging.getLogger(__name__)

# How turns end: we REUSE `<|endoftext|>` instead of adding <|im_start|>/<|im_end|> tokens and resizing embeddings.
# - Pretraining already taught the model that `<|endoftext|>` closes a document (prepare_data.py appends it to every
#   one), and generation stops on it with no config change. A freshly added token starts as an untrained embedding
#   row that the few hundred SFT steps of a small run barely train, so the model would not learn to stop.
# - The vocabulary stays 50257: the tokenizer still passes `require_gpt2_compatible`, the tiktoken fast path and
#   eval_harness.py (lm-eval) see the same ids, and no `resize_token_embeddings` touches the tied LM head.
# - TRL's check that the end-of-turn token is trained (`is_chat_template_stop_token_trained`) passes because
#   `<|endoftext|>` is an added token and sits inside `{% generation %}`.
# The cost: roles are plain text ("User:", "Assistant:"), so a message that itself contains "\n\nAssistant:" can fake
# a turn boundary. Acceptable for an educational model; a production model would add dedicated role tokens.
#
# Layout, chosen so the prompt is always a token-level prefix of prompt + reply (TRL's DPO and prompt-completion SFT
# split sequences at that prefix):
#   System: {system}\n\nUser: {question}\n\nAssistant: {reply}<|endoftext|>User: {next question}\n\nAssistant:
# Only " {reply}<|endoftext|>" is inside {% generation %}: with `assistant_only_loss=True` SFT trains on the replies
# and their end-of-turn token, never on the prompt. "Assistant:" then " {reply}" splits into the tokens ":" and " word"
# exactly as GPT-2's BPE splits running text, so generation after "Assistant:" continues on a token boundary.
EDUGPT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ 'System: ' + message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ 'User: ' + message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'Assistant:' }}{% generation %}{{ ' ' + message['content'] + eos_token }}{% endgeneration %}"
    "{%- else -%}"
    "{{ raise_exception('edugpt chat template: unsupported role ' + message['role'] + '; use system/user/assistant') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)
# Long enough for a full answer from `pipeline("text-generation")` without arguments (its default is 20 tokens total).
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
    """Check that a model path names a saved HF model folder (or, when online, a Hub id); return it unchanged."""
    if not model_name_or_path:
        raise EduGPTError(f"no model given; pass {flag} with the folder a previous stage wrote (e.g. runs/pretrain).")
    path = Path(model_name_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EduGPTError(
                f"{model_name_or_path!r} is a folder but holds no config.json, so it is not a saved model; pass the "
                "output_dir of train_hf.py or finetune/sft.py (the folder with config.json and model.safetensors)."
            )
        return model_name_or_path
    from edugpt.net import hub_available, looks_like_hub_id, missing_local_path

    if path.exists():
        raise EduGPTError(f"{model_name_or_path!r} is a file; pass {flag} with a saved model's folder.")
    if looks_like_hub_id(model_name_or_path) and hub_available():
        return model_name_or_path
    raise EduGPTError(
        f"{missing_local_path(model_name_or_path, 'model path')}; pass {flag} with the folder a previous stage wrote "
        "(train_hf.py's output_dir for SFT, sft.py's output_dir for DPO)."
    )


def require_fits_context(model, max_length: int | None) -> None:
    """Raise unless training rows of `max_length` tokens fit the model's position embeddings."""
    context = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if context is not None and (max_length is None or max_length > context):
        raise EduGPTError(
            f"max_length {max_length} exceeds the model's context of {context} tokens; pass --max_length {context} "
            "or less."
        )


def load_chat_model(model_dir: str):
    """Load a model folder for chatting: (model in eval mode, tokenizer with a chat template, had_template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolve_model_dir(model_dir, flag="the model folder")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    had_template = bool(tokenizer.chat_template)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    add_chat_template(tokenizer, model)
    return model, tokenizer, had_template


def generate_reply(model, tokenizer, messages: list[dict], max_new_tokens: int = 48, raw: bool = False) -> str:
    """Greedy-decode one assistant reply to `messages` (deterministic, so side-by-side comparisons are repeatable).

    `raw=True` keeps what a clean reply hides: the `<|endoftext|>` that ends the turn and surrounding whitespace.
    """
    import torch

    from edugpt.tokenizer import encode_chat

    # A special-token string inside a message ("<|endoftext|>") is ordinary text: a message cannot end its own turn.
    input_ids = torch.tensor([encode_chat(tokenizer, messages, add_generation_prompt=True)])
    n_positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print one chat reply per model folder, side by side.")
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
    from edugpt.cli import run

    run(main)
