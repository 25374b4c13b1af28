"""The GPT-2 tokenizer: the Hub's when it is reachable, the bundled copy of the same BPE files when it is not.

Either way the ids are exactly GPT-2's ("Once upon a time" -> [7454, 2402, 257, 640], `<|endoftext|>` = 50256).
`gpt2_tiktoken()` builds tiktoken's encoder from the same bundled files: identical ids, ~5x faster on a CPU core,
which is what `prepare_data.py` uses for the bulk of the tokenizing. `ready_to_save(tokenizer, n_positions)` makes a
tokenizer what a Hub user expects to find next to a model (its context length, a pad token, no load-time settings).
"""

from __future__ import annotations

import logging
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.io.net import hub_available

logger = logging.getLogger(__name__)

GPT2_VOCAB_SIZE = 50257
GPT2_EOS_ID = 50256
GPT2_EOS_TOKEN = "<|endoftext|>"
BUNDLED_GPT2_DIR = Path(__file__).resolve().parents[1] / "assets" / "gpt2"
# Names that mean "OpenAI's GPT-2 BPE", which the bundled files reproduce exactly.
GPT2_NAMES = ("gpt2", "openai-community/gpt2")
# A probe with known ids: a tokenizer that does not reproduce it is not GPT-2's.
PROBE_TEXT = "Once upon a time"
PROBE_IDS = [7454, 2402, 257, 640]
# What `from_pretrained` records about how a tokenizer was loaded; `save_pretrained` writes it back into
# tokenizer_config.json (transformers 5.24), where it would describe the machine that saved it, not the model.
LOAD_TIME_SETTINGS = ("is_local", "local_files_only")


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


def ready_to_save(tokenizer, n_positions: int | None):
    """Make `tokenizer` (in place) what a Hub user expects beside a model of `n_positions` context; returns it.

    - `model_max_length = n_positions` (as openai-community/gpt2's tokenizer_config.json has 1024) instead of the
      "no limit" 1e30, so over-long inputs are flagged by the tokenizer ("Token indices sequence length is longer than
      the specified maximum sequence length for this model") and `pipeline(..., handle_long_generation="hole")` or
      `truncation=True` know where to cut.
    - a pad token: `<|endoftext|>`, as GPT-2 has no other special token (attention masks, not pad ids, mark padding,
      and TRL and lm-eval both use eos as pad when there is none).
    - none of the load-time settings (`is_local`, `local_files_only`) that transformers would save into
      tokenizer_config.json.
    """
    if n_positions is not None:
        tokenizer.model_max_length = n_positions
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    for key in LOAD_TIME_SETTINGS:
        tokenizer.init_kwargs.pop(key, None)
    return tokenizer


class _EosIsNotPaddingHere(logging.Filter):
    """Drops transformers' one-time "input_ids may be padded" warning: with pad = eos (`ready_to_save`), every
    `<|endoftext|>` that starts or ends a packed training row looks like padding to its check, but training rows here
    are packed documents (pretraining) or padding-free packed conversations (SFT): nothing is padded."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "since your input_ids may be padded" not in record.getMessage()


def packed_rows_have_no_padding() -> None:
    """Install `_EosIsNotPaddingHere` on transformers' modeling logger (once per process; entry points call it)."""
    modeling_logger = logging.getLogger("transformers.modeling_utils")
    if not any(isinstance(f, _EosIsNotPaddingHere) for f in modeling_logger.filters):
        modeling_logger.addFilter(_EosIsNotPaddingHere())


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
