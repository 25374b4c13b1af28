import pytest

from edugpt.errors import EduGPTError
from edugpt.model.tokenizer import (
    GPT2_EOS_ID,
    GPT2_VOCAB_SIZE,
    PROBE_IDS,
    gpt2_tiktoken,
    load_tokenizer,
    require_gpt2_compatible,
)

TEXTS = [
    "Once upon a time",
    "The mitochondria is the powerhouse of the cell.\n\nIt makes ATP — adenosine triphosphate.",
    "  leading spaces, tabs\tand numbers 1234567 and émojis 🙂 and CJK 漢字",
    "def f(x):\n    return x ** 2  # squares\n",
]


def test_offline_gpt2_ids_are_gpt2s(gpt2_tokenizer):
    assert gpt2_tokenizer.encode("Once upon a time") == [7454, 2402, 257, 640] == PROBE_IDS
    assert len(gpt2_tokenizer) == GPT2_VOCAB_SIZE
    assert gpt2_tokenizer.eos_token_id == GPT2_EOS_ID == gpt2_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    require_gpt2_compatible(gpt2_tokenizer)


def test_tiktoken_matches_hf_tokenizer(gpt2_tokenizer):
    enc = gpt2_tiktoken()
    for text in TEXTS:
        assert enc.encode_ordinary(text) == gpt2_tokenizer.encode(text)
        assert enc.decode(enc.encode_ordinary(text)) == text


def test_saved_tokenizer_loads_with_auto(tmp_path, gpt2_tokenizer):
    from transformers import AutoTokenizer

    gpt2_tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).encode("Once upon a time") == PROBE_IDS


def test_incompatible_tokenizer_is_refused(gpt2_tokenizer):
    with pytest.raises(EduGPTError, match="vocabulary is 1000"):
        require_gpt2_compatible(gpt2_tokenizer, vocab_size=1000)


def test_unknown_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(EduGPTError, match="could not load tokenizer"):
        load_tokenizer(str(tmp_path / "nope"))


# --- the tokenizer saved beside a model: what a Hub user relies on --------------------------------------------------

def test_ready_to_save_sets_context_pad_and_drops_load_time_settings(tmp_path, gpt2_tokenizer):
    import copy
    import json

    from edugpt.model.tokenizer import ready_to_save

    tokenizer = copy.deepcopy(gpt2_tokenizer)
    assert tokenizer.model_max_length > 1e29 and tokenizer.pad_token is None  # as loaded: "no limit", no pad
    ready_to_save(tokenizer, 256).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert saved["model_max_length"] == 256 and saved["pad_token"] == "<|endoftext|>"
    assert not {"is_local", "local_files_only"} & set(saved)  # how it was loaded here is no setting of the model
    assert tokenizer.encode("Once upon a time") == PROBE_IDS  # ids unchanged

