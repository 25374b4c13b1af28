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

The page only reads: metrics.jsonl, samples, run_config.json and the card's inputs (edugpt.app.runs, through
edugpt.run.rundir and edugpt.report), and model weights from safetensors only (edugpt.app.models,
`use_safetensors=True`); nothing pickled (training_args.bin, optimizer.pt, pytorch_model.bin) is ever opened, and
nothing is written into a run. It binds 127.0.0.1, makes no Hub calls and sends Gradio no analytics. A run still
training answers from its newest whole checkpoint. This module is the Gradio page itself and its launch (`main`).

The same page runs as a Hugging Face Space beside a published model (`publish.py RUN --hub_model_id ... --space ...`,
edugpt.app.space): there it reads the model repo (`--hub_model_id`), its run record from main, and each `step-N` branch is
a model to talk to.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from edugpt.app.models import Models, Sampling, chat_messages, stream_continuation, stream_reply
from edugpt.app.runs import (
    Run,
    card_numbers,
    hellaswag_curves,
    loss_curves,
    metrics_signature,
    model_dir,
    open_run,
    open_runs,
    run_status,
    samples_by_step,
)
from edugpt.errors import EduGPTError
from edugpt.run import rundir

DEFAULT_HOST = "127.0.0.1"
REFRESH_SECONDS = 5.0
# What a Space downloads of the model repo: configs, tokenizer, safetensors weights and the run's record. No pickles.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "merges.txt", rundir.METRICS, rundir.SAMPLES]
FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # the default theme's Google fonts would be a request outside


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
