"""A literal special-token string in text is ordinary text on every path of ours that turns text into ids (issue 11):
"<|endoftext|>" inside a text becomes 27, 91, 437, 1659, 5239, 91, 29 as tiktoken's `encode_ordinary` gives, never the
end-of-text id 50256. (prepare_data.py's paths: test_data.py; the SFT/DPO chat template: test_chat.py.)"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from edugpt.model.chat import add_chat_template, generate_reply
from edugpt.model.tokenizer import GPT2_EOS_ID, encode_text, gpt2_tiktoken
from edugpt.run.rundir import MetricsLog
from edugpt.train.samples import SamplesCallback

LITERAL_IDS = [27, 91, 437, 1659, 5239, 91, 29]
TEXT = "A web page that quotes <|endoftext|> in its middle.<|endoftext|>And its end"


def ordinary(text: str) -> list[int]:
    return gpt2_tiktoken().encode_ordinary(text)


@pytest.fixture(scope="module", params=["gpt2", "saved"])
def tokenizer(request, gpt2_tokenizer, tiny_model_dir):
    """The default tokenizer, and a GPT-2 tokenizer saved in a folder (what `--tokenizer DIR` loads)."""
    return gpt2_tokenizer if request.param == "gpt2" else AutoTokenizer.from_pretrained(tiny_model_dir)


def test_encode_text_is_tiktokens_encode_ordinary(tokenizer):
    assert encode_text(tokenizer, "<|endoftext|>")["input_ids"] == LITERAL_IDS == ordinary("<|endoftext|>")
    assert encode_text(tokenizer, TEXT)["input_ids"] == ordinary(TEXT)
    assert encode_text(tokenizer, [TEXT, "plain"])["input_ids"] == [ordinary(TEXT), ordinary("plain")]
    assert GPT2_EOS_ID in tokenizer(TEXT)["input_ids"]  # what HF's default call does with the same text


class _Recorder(torch.nn.Module):
    """Wraps a model's `generate` to record the prompt ids it was given."""

    def __init__(self, model):
        super().__init__()
        self.model, self.prompts = model, []

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)

    def generate(self, input_ids=None, **kwargs):
        self.prompts.append(input_ids[0].tolist())
        return self.model.generate(input_ids=input_ids, **kwargs)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def test_sample_prompt_with_a_special_token_string_is_text(tokenizer, model, tmp_path):
    prompt = "The token <|endoftext|> ends a document"
    samples = SamplesCallback(tokenizer, [prompt], 10, 4, 0, 0, tmp_path / "samples.md", MetricsLog(tmp_path / "m"))
    recorder = _Recorder(model)
    text = samples.generate(recorder, prompt)
    assert recorder.prompts == [ordinary(prompt)] and GPT2_EOS_ID not in recorder.prompts[0]
    assert text.startswith(prompt)


def test_chat_messages_with_a_special_token_string_do_not_end_their_turn(tokenizer, model):
    chat_tokenizer = add_chat_template(tokenizer.__class__.from_pretrained(tokenizer.name_or_path))
    messages = [{"role": "user", "content": "Say <|endoftext|> please"},
                {"role": "assistant", "content": "<|endoftext|>"},
                {"role": "user", "content": "Again"}]
    recorder = _Recorder(model)
    generate_reply(recorder, chat_tokenizer, messages, max_new_tokens=2)
    # The template's own end of the assistant turn is the one 50256; the strings inside the messages are text (the
    # template writes them with a zero-width space after "<", see edugpt/templates/chat_template.jinja).
    (prompt,) = recorder.prompts
    assert prompt.count(GPT2_EOS_ID) == 1
    end = prompt.index(GPT2_EOS_ID)
    assert chat_tokenizer.decode(prompt[end + 1:]) == "User: Again\n\nAssistant:"
    assert chat_tokenizer.decode(prompt[:end]).replace("\u200b", "") == (
        "User: Say <|endoftext|> please\n\nAssistant: <|endoftext|>")
