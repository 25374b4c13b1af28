"""A web page for run directories: watch a run learn, and talk to its models (Gradio, local and offline).

    pip install -e ".[app]"
    python -m edugpt.app.page runs/demo/pretrain runs/demo/sft runs/demo/dpo      # http://127.0.0.1:7860
    python -m edugpt.app.page runs/fineweb-270m --port 0                           # any free port (printed)

- Run: train and validation loss against steps or tokens, in-loop HellaSwag, the samples by step and the card's
  numbers, re-read from metrics.jsonl every few seconds, so a run that is still training draws as it goes.
- Chat: one conversation per model through its chat template (a base model gets the one SFT adds, as
  `python -m edugpt.model.chat --compare` does), a system prompt, temperature / top-k / top-p / max new tokens, streamed
  token by token, stopping at the end-of-turn token; several models answer the same message side by side.
- Prompt: plain continuation for a base model, with the same sampling settings.

The page only reads: metrics.jsonl, samples, run_config.json and the card's inputs (edugpt.run.rundir, edugpt.report.card),
and model weights from safetensors only (`use_safetensors=True`); nothing pickled (training_args.bin, optimizer.pt,
pytorch_model.bin) is ever opened, and nothing is written into a run. It binds 127.0.0.1, makes no Hub calls and
sends Gradio no analytics. A run still training answers from its newest whole checkpoint.

The same page runs as a Hugging Face Space beside a published model (`publish.py RUN --hub_model_id ... --space ...`,
edugpt.app.space): there it reads the model repo (`--hub_model_id`), its run record from main, and each `step-N` branch is
a model to talk to.
"""

from __future__ import annotations

import argparse
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.run import rundir

DEFAULT_HOST = "127.0.0.1"
REFRESH_SECONDS = 5.0
# Below this many tokens of room a reply is not worth starting: the oldest turns are dropped first.
MIN_REPLY_TOKENS = 16
# What a Space downloads of the model repo: configs, tokenizer, safetensors weights and the run's record. No pickles.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "merges.txt", rundir.METRICS, rundir.SAMPLES]
FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # the default theme's Google fonts would be a request outside


# ---------------------------------------------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Run:
    path: Path
    name: str  # its label on the page
    kind: str  # "pretrain", "sft" or "dpo"


def open_run(path: str | os.PathLike, name: str | None = None) -> Run:
    """A run directory of this project (its run_config.json says which kind), or one EduGPTError. Reads only."""
    folder = Path(path)
    if not folder.is_dir():
        what = "does not exist" if not os.path.lexists(folder) else "is not a folder"
        raise EduGPTError(f"{str(path)!r} {what}; pass a run directory (the output_dir of train_hf.py, "
                          "finetune/sft.py or finetune/dpo.py).")
    kind = rundir.run_kind(rundir.read_run_config(folder))
    if kind is None:
        raise EduGPTError(f"{str(path)!r} is not an edugpt run (it has no {rundir.RUN_CONFIG} written by train_hf.py, "
                          "finetune/sft.py or finetune/dpo.py); pass a run directory.")
    return Run(folder, name or folder.resolve().name, kind)


def open_runs(paths: list[str]) -> list[Run]:
    """Every run, labelled by its folder name (with the parent's when two share one); refused before anything starts."""
    names = [Path(p).resolve().name for p in paths]
    labels = [f"{Path(p).resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names)]
    if len(set(labels)) < len(labels):
        raise EduGPTError("the same run directory is given twice; pass each run once.")
    return [open_run(p, label) for p, label in zip(paths, labels)]


def model_dir(run_dir: str | os.PathLike) -> Path | None:
    """The model a run answers with: its final model, else (while it trains) its newest whole checkpoint; None before
    the first save."""
    run_dir = Path(run_dir)
    if rundir.is_saved_model(run_dir):
        return run_dir
    from edugpt.run.checkpoints import checkpoint_problem

    for checkpoint in reversed(rundir.list_checkpoints(run_dir)):
        if not checkpoint.is_symlink() and checkpoint_problem(checkpoint) is None:
            return checkpoint
    return None


# ------------------------------------------------------------------------------------------- what the Run tab shows
def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def loss_curves(records: list[dict]) -> list[dict]:
    """One row per logged loss: {"step", "tokens", "loss", "split"} with split "train" or "validation" (a long table,
    one line per split)."""
    rows = []
    for record in records:
        for key, split in (("loss", "train"), ("eval_loss", "validation")):
            if _number(record.get(key)):
                rows.append({"step": record["step"], "tokens": record.get("tokens"), "loss": record[key],
                             "split": split})
    return rows


def hellaswag_curves(records: list[dict]) -> list[dict]:
    """One row per in-loop HellaSwag score: {"step", "tokens", "accuracy", "metric"} (acc and acc_norm)."""
    return [{"step": r["step"], "tokens": r.get("tokens"), "accuracy": r[key], "metric": key.split("/")[1]}
            for r in records for key in ("hellaswag/acc", "hellaswag/acc_norm") if _number(r.get(key))]


def samples_by_step(records: list[dict]) -> list[list]:
    """[step, prompt, text] of every logged sample, by step (records are not strictly ordered)."""
    rows = [[r["step"], r.get("sample/prompt", ""), r["sample/text"]] for r in records
            if isinstance(r.get("sample/text"), str) and isinstance(r.get("step"), int)]
    return sorted(rows, key=lambda row: row[0])


def run_status(records: list[dict]) -> str:
    """One line: the last step, the tokens seen and the latest train and validation losses."""
    from edugpt.report.card import final_tokens, human

    steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
    if not steps:
        return "No records in metrics.jsonl yet."
    parts = [f"step {max(steps):,}"]
    if tokens := final_tokens(records):
        parts.append(f"{human(tokens['tokens'])} tokens")
    for key, label in (("loss", "train loss"), ("eval_loss", "validation loss")):
        last = next((r for r in reversed(records) if _number(r.get(key))), None)
        if last is not None:
            parts.append(f"{label} {last[key]:.4f} (step {last['step']:,})")
    return " · ".join(parts)


def card_numbers(run_dir: str | os.PathLike) -> list[list[str]]:
    """The headline rows of the run's model card (edugpt.report.card: losses, tokens, speed, HellaSwag, finetune metrics);
    empty before the run has saved its final model."""
    from edugpt.report import card

    if not (Path(run_dir) / "config.json").is_file():
        return []
    facts = card.collect_run_facts(run_dir)
    return card.results_rows(facts, card.lm_eval_scores(facts.lm_eval))


def metrics_signature(run_dir: str | os.PathLike) -> tuple | None:
    """What changes when a run logs: metrics.jsonl's size and mtime (None while it does not exist)."""
    try:
        st = os.stat(Path(run_dir) / rundir.METRICS)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------------------------------------- chat and sampling
@dataclass(frozen=True)
class Sampling:
    """The sampling settings of a reply or continuation. Temperature 0 is greedy decoding (as `edugpt.model.chat`)."""

    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    max_new_tokens: int = 128

    def __post_init__(self):
        if not _number(self.temperature) or self.temperature < 0:
            raise EduGPTError(f"temperature {self.temperature} must be 0 (greedy) or more; set it to e.g. 0.8.")
        if not _number(self.top_k) or self.top_k < 0 or int(self.top_k) != self.top_k:
            raise EduGPTError(f"top-k {self.top_k} must be a whole number, 0 (off) or more.")
        if not _number(self.top_p) or not 0 < self.top_p <= 1:
            raise EduGPTError(f"top-p {self.top_p} must be above 0 and at most 1 (1 is off).")
        if not _number(self.max_new_tokens) or self.max_new_tokens < 1 or int(self.max_new_tokens) != self.max_new_tokens:
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


# ------------------------------------------------------------------------------------------------------------ the page
def _import_gradio():
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before the import: gradio reads it there
    try:
        import gradio as gr
    except ImportError:
        raise EduGPTError('gradio is not installed; install the page\'s extra with pip install -e ".[app]".') from None
    return gr


def build_page(runs: list[Run], models: Models, *, title: str = "edugpt", refresh_seconds: float = REFRESH_SECONDS,
               chat_default: list[str] | None = None):
    """The Gradio Blocks of the page: the Run tab over `runs`, the Chat and Prompt tabs over `models`."""
    gr = _import_gradio()
    import pandas as pd

    by_name = {run.name: run for run in runs}
    labels = models.labels
    chat_default = chat_default or labels

    def run_view(name: str, axis: str, seen):
        run = by_name.get(name)
        if run is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen
        signature = (name, axis, metrics_signature(run.path))
        if signature == seen:  # nothing new logged: leave the page as it is
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen
        records = rundir.read_metrics(run.path)
        losses = pd.DataFrame(loss_curves(records), columns=["step", "tokens", "loss", "split"])
        hellaswag = pd.DataFrame(hellaswag_curves(records), columns=["step", "tokens", "accuracy", "metric"])
        try:
            numbers = card_numbers(run.path)
        except EduGPTError as err:
            numbers = [["the card's numbers cannot be read", str(err)]]
        status = f"**{run.name}** ({run.kind}, {run.path}): {run_status(records)}"
        return (status, gr.LinePlot(value=losses.dropna(subset=[axis]), x=axis),
                gr.LinePlot(value=hellaswag.dropna(subset=[axis]), x=axis, visible=not hellaswag.empty),
                samples_by_step(records), numbers or [["(after the final model is saved)", ""]], signature)

    def chat(message: str, system_prompt: str, selected: list[str], temperature, top_k, top_p, max_new_tokens,
             *histories):
        histories = [list(h or []) for h in histories]
        if not message.strip():
            yield ("", *histories)
            return
        try:
            sampling = Sampling(temperature, top_k, top_p, max_new_tokens)
        except EduGPTError as err:
            raise gr.Error(str(err)) from None
        for i, label in enumerate(labels):
            if label not in selected:
                continue
            messages = chat_messages(histories[i], message, system_prompt)
            histories[i] = histories[i] + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
            try:
                model, tokenizer, _, _ = models.get(label)
                for text in stream_reply(model, tokenizer, messages, sampling):
                    histories[i][-1] = {"role": "assistant", "content": text}
                    yield ("", *histories)
            except EduGPTError as err:
                histories[i][-1] = {"role": "assistant", "content": f"({err})"}
            yield ("", *histories)

    def complete(prompt: str, label: str, temperature, top_k, top_p, max_new_tokens):
        try:
            sampling = Sampling(temperature, top_k, top_p, max_new_tokens)
            model, tokenizer, _, _ = models.get(label)
            yield from stream_continuation(model, tokenizer, prompt, sampling)
        except EduGPTError as err:
            raise gr.Error(str(err)) from None

    def show(selected: list[str]):
        return [gr.Chatbot(visible=label in selected) for label in labels]

    with gr.Blocks(title=title) as page:
        gr.Markdown(f"# {title}")
        with gr.Tab("Run"):
            if runs:
                with gr.Row():
                    run_name = gr.Dropdown([r.name for r in runs], value=runs[0].name, label="Run", scale=3)
                    axis = gr.Radio(["step", "tokens"], value="step", label="x axis", scale=1)
                status = gr.Markdown(elem_id="run-status")
                loss_plot = gr.LinePlot(x="step", y="loss", color="split", title="Loss", elem_id="loss-plot",
                                        tooltip="all", height=320)
                hellaswag_plot = gr.LinePlot(x="step", y="accuracy", color="metric", title="HellaSwag (in-loop)",
                                             elem_id="hellaswag-plot", tooltip="all", height=260)
                samples = gr.Dataframe(headers=["step", "prompt", "sample"], label="Samples by step", wrap=True,
                                       interactive=False)
                numbers = gr.Dataframe(headers=["card", "value"], label="The card's numbers", interactive=False)
                seen = gr.State(None)
                outputs = [status, loss_plot, hellaswag_plot, samples, numbers, seen]
                timer = gr.Timer(refresh_seconds)  # re-reads metrics.jsonl: the curves grow while the run trains
                for trigger in (page.load, timer.tick, run_name.change, axis.change):
                    trigger(run_view, [run_name, axis, seen], outputs, show_progress="hidden")
            else:
                gr.Markdown("No run record (run_config.json, metrics.jsonl) found for this model.")
        with gr.Tab("Chat"):
            selected = gr.CheckboxGroup(labels, value=chat_default, label="Models (each keeps its own conversation)")
            system_prompt = gr.Textbox(label="System prompt", placeholder="optional", lines=1)
            with gr.Row():
                chatbots = [gr.Chatbot(label=label, visible=label in chat_default, height=360,
                                       elem_id=f"chat-{i}", elem_classes=["edugpt-chat"])
                            for i, label in enumerate(labels)]
            message = gr.Textbox(label="Message", placeholder="Ask something and press Enter", elem_id="chat-message")
            with gr.Row():
                send = gr.Button("Send", variant="primary", elem_id="chat-send")
                clear = gr.Button("New conversation")
        with gr.Tab("Prompt"):
            prompt_model = gr.Dropdown(labels, value=labels[0] if labels else None, label="Model")
            prompt = gr.Textbox(label="Prompt (plain continuation, no chat template)", value="Once upon a time",
                                lines=3)
            go = gr.Button("Continue", variant="primary")
            continuation = gr.Textbox(label="Continuation", lines=8, interactive=False)
        with gr.Accordion("Sampling (chat and prompt)", open=False):
            with gr.Row():
                temperature = gr.Slider(0, 2, value=Sampling.temperature, step=0.05, label="temperature (0: greedy)")
                top_k = gr.Slider(0, 200, value=Sampling.top_k, step=1, label="top-k (0: off)")
                top_p = gr.Slider(0.05, 1, value=Sampling.top_p, step=0.05, label="top-p (1: off)")
                max_new_tokens = gr.Slider(1, 512, value=Sampling.max_new_tokens, step=1, label="max new tokens")
        settings = [temperature, top_k, top_p, max_new_tokens]
        for trigger in (message.submit, send.click):
            trigger(chat, [message, system_prompt, selected, *settings, *chatbots], [message, *chatbots])
        clear.click(lambda: [[] for _ in chatbots], None, chatbots)
        selected.change(show, selected, chatbots)
        go.click(complete, [prompt, prompt_model, *settings], continuation)
    return page


def local_page(runs: list[Run], refresh_seconds: float = REFRESH_SECONDS):
    """The page over local run directories: one model per run (its final model, or newest checkpoint)."""
    models = Models({run.name: (lambda run=run: model_dir(run.path)) for run in runs})
    chatty = [run.name for run in runs if run.kind in ("sft", "dpo")]
    title = "edugpt: " + ", ".join(run.name for run in runs)
    return build_page(runs, models, title=title, refresh_seconds=refresh_seconds, chat_default=chatty or None)


# ------------------------------------------------------------------------------------------------------ Space (Hub)
def hub_branches(repo_id: str) -> list[str]:
    """The repo's main first, then its step-N branches by step (publish.py --branches pushed them)."""
    from huggingface_hub import HfApi

    names = [branch.name for branch in HfApi().list_repo_refs(repo_id).branches]
    steps = sorted((n for n in names if n.startswith("step-") and n[5:].isdigit()), key=lambda n: int(n[5:]))
    return ["main", *steps]


def hub_snapshot(repo_id: str, revision: str, root: Path) -> Path:
    """One branch of the model repo as a local folder: configs, tokenizer, safetensors and the run's record only."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS,
                                  local_dir=root / revision.replace("/", "_")))


def hub_page(repo_id: str, cache: str | os.PathLike, refresh_seconds: float = REFRESH_SECONDS):
    """The page of a Space: the run record on the model repo's main, and every branch (main, step-N) as a model."""
    cache = Path(cache)
    main = hub_snapshot(repo_id, "main", cache)
    try:
        runs = [open_run(main, repo_id)]
    except EduGPTError:
        runs = []  # a repo without the run's record: the chat still works
    snapshots = {"main": main}

    def source(branch: str) -> Callable[[], Path]:
        def folder() -> Path:
            if branch not in snapshots:
                snapshots[branch] = hub_snapshot(repo_id, branch, cache)
            return snapshots[branch]
        return folder

    models = Models({branch: source(branch) for branch in hub_branches(repo_id)})
    return build_page(runs, models, title=repo_id, refresh_seconds=refresh_seconds, chat_default=["main"])


# ------------------------------------------------------------------------------------------------------------- launch
def free_port(host: str = DEFAULT_HOST) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="A web page for run directories: curves, samples, chat.",
                                     allow_abbrev=False)
    parser.add_argument("runs", nargs="*", metavar="RUN", help="run directories (pretraining, SFT, DPO output_dir)")
    parser.add_argument("--host", default=None, help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860 or the next free one; 0: any free)")
    parser.add_argument("--refresh_seconds", type=float, default=REFRESH_SECONDS, help="how often metrics are re-read")
    parser.add_argument("--hub_model_id", default=None,
                        help="a Space's mode: read this model repo on the Hub (its main and step-N branches)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    if args.refresh_seconds <= 0:
        raise EduGPTError(f"--refresh_seconds {args.refresh_seconds} must be above 0; e.g. 5.")
    if args.hub_model_id:
        if args.runs:
            raise EduGPTError("pass run directories or --hub_model_id, not both.")
        import tempfile

        page = hub_page(args.hub_model_id, tempfile.mkdtemp(prefix="edugpt-space-"), args.refresh_seconds)
        host = args.host  # None: a Space sets GRADIO_SERVER_NAME
    else:
        if not args.runs:
            raise EduGPTError("no run directory given; pass one or more, e.g. python -m edugpt.app.page runs/demo/pretrain.")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local runs only: nothing on the page asks the Hub
        page = local_page(open_runs(args.runs), args.refresh_seconds)
        host = args.host or DEFAULT_HOST
    port = free_port(host or "0.0.0.0") if args.port == 0 else args.port
    page.queue().launch(server_name=host, server_port=port, show_error=True, footer_links=[],
                        theme=_import_gradio().themes.Default(font=FONTS, font_mono=["ui-monospace", "monospace"]))


if __name__ == "__main__":
    from edugpt.config.cli import run

    run(main)
