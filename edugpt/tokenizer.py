"""The GPT-2 tokenizer: the Hub's when it is reachable, the bundled copy of the same BPE files when it is not.

Either way the ids are exactly GPT-2's ("Once upon a time" -> [7454, 2402, 257, 640], `<|endoftext|>` = 50256).
`gpt2_tiktoken()` builds tiktoken's encoder from the same bundled files: identical ids, ~5x faster on a CPU core,
which is what `prepare_data.py` uses for the bulk of the tokenizing.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.net import hub_available

logger = logging.getLogger(__name__)

GPT2_VOCAB_SIZE = 50257
GPT2_EOS_ID = 50256
GPT2_EOS_TOKEN = "<|endoftext|>"
BUNDLED_GPT2_DIR = Path(__file__).parent / "assets" / "gpt2"
# Names that mean "OpenAI's GPT-2 BPE", which the bundled files reproduce exactly.
GPT2_NAMES = ("gpt2", "openai-community/gpt2")
# A probe with known ids: a tokenizer that does not reproduce it is not GPT-2's.
PROBE_TEXT = "Once upon a time"
PROBE_IDS = [7454, 2402, 257, 640]


def load_tokenizer(name: str = "gpt2"):
    """Load a fast tokenizer by Hub id or local path; GPT-2 falls back to the bundled files when the Hub is unreachable."""
    from transformers import AutoTokenizer, GPT2TokenizerFast

    if name in GPT2_NAMES:
        if hub_available():
            try:
                return AutoTokenizer.from_pretrained(name)
            except Exception as err:  # Hub down, proxy errors: all mean "use the local copy"
                logger.warning("Hub tokenizer %r unavailable (%s); using the bundled GPT-2 files.", name, type(err).__name__)
        return GPT2TokenizerFast.from_pretrained(str(BUNDLED_GPT2_DIR))
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as err:
        raise EduGPTError(
            f"could not load tokenizer {name!r} ({type(err).__name__}); pass 'gpt2' or a local folder holding a "
            "saved tokenizer."
        ) from None


def require_gpt2_compatible(tokenizer, vocab_size: int = GPT2_VOCAB_SIZE) -> None:
    """Raise unless `tokenizer` produces GPT-2 ids that fit a model with `vocab_size` embeddings."""
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if len(tokenizer) > vocab_size:
        raise EduGPTError(
            f"tokenizer {name!r} has {len(tokenizer)} tokens but the model's vocabulary is {vocab_size}; "
            "use the GPT-2 tokenizer (--tokenizer gpt2) or raise vocab_size."
        )
    if tokenizer.eos_token_id != GPT2_EOS_ID or tokenizer.encode(PROBE_TEXT) != PROBE_IDS:
        raise EduGPTError(
            f"tokenizer {name!r} is not GPT-2-compatible (eos id {tokenizer.eos_token_id}, "
            f"{PROBE_TEXT!r} -> {tokenizer.encode(PROBE_TEXT)}); use --tokenizer gpt2."
        )


def encode_text(tokenizer, text, add_special_tokens: bool = False, **kwargs):
    """Encode `text` (a string or a list of them) as ordinary text: a special-token string inside it is BPE'd like
    any other characters ("<|endoftext|>" -> 27, 91, 437, 1659, 5239, 91, 29, as tiktoken's `encode_ordinary`),
    never turned into the special token. HF tokenizers match special tokens in the text by default, even with
    `add_special_tokens=False`, so a web page that quotes "<|endoftext|>" would become a document boundary.
    Returns what `tokenizer(...)` returns (`kwargs` such as `return_tensors` pass through)."""
    return tokenizer(text, add_special_tokens=add_special_tokens, split_special_tokens=True, **kwargs)


def encode_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """The ids of `messages` in the tokenizer's chat template, where the template's own special tokens are special
    and everything inside the messages is ordinary text (`encode_text`): a user who writes "<|endoftext|>" does not
    end the turn. For messages without special-token strings these are exactly `apply_chat_template`'s ids.

    transformers' `apply_chat_template(..., sanitize_control_tokens=True)` also keeps such strings out of the control
    tokens, but cuts the text around them (" <|endoftext|>" -> 220, 27, 91, ... instead of 1279, 91, ...), a
    tokenization the model never saw in pretraining. Here the special-token strings in the messages are swapped for
    private-use placeholders while the template renders, so every special token left in the rendered text is the
    template's own; the text between them is encoded as ordinary text, as HF does between special tokens."""
    specials = sorted(set(tokenizer.all_special_tokens), key=len, reverse=True)
    used = "".join(str(m.get("content", "")) for m in messages)
    placeholders = [chr(c) for c in range(0xF0000, 0xFFFFE) if chr(c) not in used][:len(specials)]
    to_placeholder = dict(zip(specials, placeholders))

    def hide(text):
        for special, placeholder in to_placeholder.items():
            text = text.replace(special, placeholder)
        return text

    hidden = [{**m, "content": hide(m["content"])} if isinstance(m.get("content"), str) else m for m in messages]
    rendered = tokenizer.apply_chat_template(hidden, add_generation_prompt=add_generation_prompt, tokenize=False)
    ids: list[int] = []
    for piece in re.split("(" + "|".join(map(re.escape, specials)) + ")", rendered) if specials else [rendered]:
        if piece in to_placeholder:
            ids.append(tokenizer.convert_tokens_to_ids(piece))
        elif piece:
            for special, placeholder in to_placeholder.items():
                piece = piece.replace(placeholder, special)
            ids.extend(encode_text(tokenizer, piece)["input_ids"])
    return ids


@functools.lru_cache(maxsize=1)
def gpt2_tiktoken():
    """tiktoken's GPT-2 (r50k) encoding built offline from the bundled BPE files; ids equal the HF tokenizer's."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = data_gym_to_mergeable_bpe_ranks(
        str(BUNDLED_GPT2_DIR / "merges.txt"), str(BUNDLED_GPT2_DIR / "vocab.json")
    )
    return tiktoken.Encoding(
        name="gpt2-bundled",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={GPT2_EOS_TOKEN: GPT2_EOS_ID},
    )
