"""The models the page (edugpt.app.page) talks to: loaded from safetensors only, sampled, streamed token by token.

Sampling holds a reply's settings (temperature 0 is greedy, as `python -m edugpt.model.chat`); a chat goes through
the model's chat template (edugpt's own for a base model, edugpt.model.chat.add_chat_template), its oldest turns
dropped when the conversation outgrows the context; a prompt is continued as plain text. Models loads each model on
first use and again when its folder changes (a newer checkpoint, then the final model, of a run still training).
Nothing pickled (training_args.bin, optimizer.pt, pytorch_model.bin) is ever opened.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edugpt.app.runs import is_finite_number
from edugpt.errors import EduGPTError

# Below this many tokens of room a reply is not worth starting: the oldest turns are dropped first.
MIN_REPLY_TOKENS = 16


@dataclass(frozen=True)
class Sampling:
    """The sampling settings of a reply or continuation. Temperature 0 is greedy decoding (as `edugpt.model.chat`)."""

    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    max_new_tokens: int = 128

    def __post_init__(self):
        if not is_finite_number(self.temperature) or self.temperature < 0:
            raise EduGPTError(f"temperature {self.temperature} must be 0 (greedy) or more; set it to e.g. 0.8.")
        if not is_finite_number(self.top_k) or self.top_k < 0 or int(self.top_k) != self.top_k:
            raise EduGPTError(f"top-k {self.top_k} must be a whole number, 0 (off) or more.")
        if not is_finite_number(self.top_p) or not 0 < self.top_p <= 1:
            raise EduGPTError(f"top-p {self.top_p} must be above 0 and at most 1 (1 is off).")
        if (not is_finite_number(self.max_new_tokens) or self.max_new_tokens < 1
                or int(self.max_new_tokens) != self.max_new_tokens):
            raise EduGPTError(f"max new tokens {self.max_new_tokens} must be a whole number of at least 1.")

    def generate_kwargs(self, max_new_tokens: int | None = None) -> dict:
        """`model.generate` keyword arguments: greedy at temperature 0, else sampling with the top-k/top-p filters
        (top_k 0 and top_p 1 switch a filter off, as in transformers)."""
        kwargs = {"max_new_tokens": int(max_new_tokens or self.max_new_tokens)}
        if self.temperature == 0:
            return {**kwargs, "do_sample": False, "temperature": None, "top_k": None, "top_p": None}
        return {**kwargs, "do_sample": True, "temperature": float(self.temperature), "top_k": int(self.top_k),
                "top_p": float(self.top_p)}


def message_text(content) -> str:
    """A chat message's text: Gradio hands content over as a string or as a list of {"type": "text", "text"} blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, (list, tuple)):
        return "".join(message_text(block) for block in content)
    return ""


def chat_messages(history: list[dict], message: str, system_prompt: str = "") -> list[dict]:
    """The conversation the chat template renders: the system prompt (if any), the earlier turns, the new message."""
    messages = [{"role": "system", "content": system_prompt.strip()}] if system_prompt.strip() else []
    messages += [{"role": m["role"], "content": message_text(m.get("content"))} for m in history
                 if m.get("role") in ("user", "assistant")]
    return messages + [{"role": "user", "content": message}]


def chat_input_ids(tokenizer, messages: list[dict], context: int | None, max_new_tokens: int):
    """(input_ids, max_new_tokens, turns dropped): the conversation through the tokenizer's chat template, ending with
    the assistant's prompt. When it leaves no room for a reply in the model's context, the oldest turns go first (the
    system prompt stays); a last message too long on its own is one EduGPTError."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    dropped = 0
    while True:
        ids = tokenizer.apply_chat_template(system + turns, add_generation_prompt=True, return_dict=True,
                                            return_tensors="pt")["input_ids"]
        room = max_new_tokens if context is None else context - ids.shape[1]
        if room >= min(max_new_tokens, MIN_REPLY_TOKENS) or len(turns) <= 1:
            break
        turns, dropped = turns[2:], dropped + 2  # a user message and its reply
    if room < 1:
        raise EduGPTError(f"the message is {ids.shape[1]} tokens with the template but the model's context is "
                          f"{context}; send a shorter message (or a shorter system prompt).")
    return ids, min(max_new_tokens, room), dropped


def stream_generate(model, tokenizer, input_ids, sampling: Sampling, max_new_tokens: int) -> Iterator[str]:
    """The text generated after `input_ids`, growing as tokens come (TextIteratorStreamer; generation runs on a
    thread). It stops at the end-of-turn token, which is `<|endoftext|>` in edugpt's template, and hides it."""
    import torch
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure: list[BaseException] = []

    def generate() -> None:
        try:
            with torch.no_grad():
                model.generate(input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                               **sampling.generate_kwargs(max_new_tokens))
        except BaseException as err:  # re-raised below; the streamer must end or the reader waits forever
            failure.append(err)
            streamer.end()

    thread = threading.Thread(target=generate, name="edugpt-app-generate", daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text
    thread.join()
    if failure:
        raise failure[0]


def stream_reply(model, tokenizer, messages: list[dict], sampling: Sampling) -> Iterator[str]:
    """The assistant's reply to `messages`, growing as it streams (see chat_input_ids and stream_generate)."""
    from edugpt.model.chat import context_length

    ids, max_new, _ = chat_input_ids(tokenizer, messages, context_length(model), sampling.max_new_tokens)
    for text in stream_generate(model, tokenizer, ids, sampling, max_new):
        yield text.strip()


def stream_continuation(model, tokenizer, prompt: str, sampling: Sampling) -> Iterator[str]:
    """The prompt and its plain continuation (no template), growing as it streams; the prompt's oldest tokens are cut
    when it fills the context. An empty prompt starts from `<|endoftext|>`, where every pretraining document starts."""
    import torch

    from edugpt.model.chat import context_length

    ids = tokenizer(prompt, return_tensors="pt")["input_ids"] if prompt else torch.tensor([[tokenizer.eos_token_id]])
    context = context_length(model)
    max_new = sampling.max_new_tokens
    if context is not None:
        max_new = min(max_new, context - 1)
        ids = ids[:, -(context - max_new):]
    for text in stream_generate(model, tokenizer, ids, sampling, max_new):
        yield prompt + text


# -------------------------------------------------------------------------------------------------------------- models
def load_model(folder: str | os.PathLike):
    """(model, tokenizer, had_template) from a saved model folder, weights from safetensors only; the tokenizer gets
    edugpt's chat template when it has none (edugpt.model.chat.add_chat_template)."""
    from transformers import AutoModelForCausalLM

    from edugpt.model import chat

    folder = str(folder)
    chat.resolve_model_dir(folder, flag="the run's model")
    if not any((Path(folder) / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        raise EduGPTError(f"{folder} has no safetensors weights; the page loads only those (never pickled .bin "
                          "files): save the model again with save_pretrained.")
    tokenizer = chat.load_model_tokenizer(folder)
    had_template = bool(tokenizer.chat_template)
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
    chat.add_chat_template(tokenizer, model)
    return model, tokenizer, had_template


class Models:
    """Models by label, loaded on first use and kept; `source(label)` gives the folder to load (it may change while a
    run trains: a newer checkpoint, then the final model, replaces the one loaded)."""

    def __init__(self, sources: dict[str, Callable[[], Path | None]]):
        self.sources = sources
        self._loaded: dict[str, tuple] = {}
        self._lock = threading.Lock()

    @property
    def labels(self) -> list[str]:
        return list(self.sources)

    def get(self, label: str):
        """(model, tokenizer, had_template, folder), or EduGPTError when the run has no saved model yet."""
        folder = self.sources[label]()
        if folder is None:
            raise EduGPTError(f"{label} has no saved model yet (no final model, no whole checkpoint); it can answer "
                              "after its first save.")
        with self._lock:
            key = (str(folder), os.stat(folder / "config.json").st_mtime_ns)
            if self._loaded.get(label, (None,))[0] != key:
                self._loaded[label] = (key, *load_model(folder), folder)
            return self._loaded[label][1:]
