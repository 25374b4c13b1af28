"""Supervised finetuning: turn a pretrained edugpt GPT-2 into a chat model with TRL's SFTTrainer.

Real run (270M model, smol-smoltalk; one GPU, or several with accelerate):
    accelerate launch finetune/sft.py --config configs/sft.yaml \
        --model_name_or_path runs/gpt2-270m --output_dir runs/sft
CPU-sized (offline, bundled data, about a minute on 2 cores with a tiny model):
    python finetune/sft.py --config configs/sft_smoke.yaml --model_name_or_path RUN/pretrain --output_dir RUN/sft
TRL's own CLI runs the same recipes unchanged (`trl sft --config configs/sft_smoke.yaml ...`): they name the chat
template file (`chat_template_path`) and the data (`dataset_name` or a `datasets:` mixture) the way TRL loads them.

The base model gets the edugpt chat template (edugpt/templates/chat_template.jinja: plain-text roles, every assistant
turn ends with `<|endoftext|>`, which message text can never produce), conversations are packed into `max_length`
rows without padding (TRL's BFD packing: GPT-2 sees position_ids that restart per conversation and attends within
each one only), and only assistant tokens carry loss (`assistant_only_loss`). Conversations longer than `max_length`
are counted before training, and a dataset where none keeps an assistant token within it is refused. Arguments are
TRL's own ScriptArguments / SFTConfig / ModelConfig / DatasetMixtureConfig: a YAML recipe plus command-line
overrides, and an unknown key is an error.

Output: `output_dir` is a standard HF model folder (config.json, model.safetensors, generation_config.json, tokenizer
files with chat_template.jinja), so `AutoTokenizer.apply_chat_template`, `pipeline("text-generation")` on a list of
messages, eval_harness.py and finetune/dpo.py take it as is. The run follows pretraining's lifecycle
(edugpt/run/lifecycle.py): checkpoints in output_dir, the same command again resumes from the newest valid one (or does
nothing for a finished run), SIGTERM saves a checkpoint and exits 0, `--overwrite_output_dir` starts over. The folder
also holds run_config.json (every argument used), metrics.jsonl (every log record with its step and tokens seen) and
README.md, edugpt's model card (`python -m edugpt.report.card DIR` rewrites it).

`--push_to_hub --hub_model_id NAME` checks the token and the Hub before anything is loaded, then at the end uploads
the folder with Trainer's own push (`hub_strategy` honoured), edugpt's card in the same commit.
"""

from __future__ import annotations

from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, SFTConfig, SFTTrainer

from edugpt.config.arguments import RunArguments
from edugpt.config.cli import parse_config, run
from edugpt.run.plan import dry_run_argv, show_finetune_plan
from edugpt.train.finetune import finetune


def main(argv: list[str] | None = None) -> None:
    # TRL's own `trl sft` parses these four (the `datasets:` mixture included); RunArguments is edugpt's lifecycle.
    script_args, training_args, model_args, dataset_args, run_args = parse_config(
        [ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig, RunArguments], dry_run_argv(argv)
    )
    if run_args.dry_run:  # the plan, then exit: nothing written, no model loaded, no GPU used (edugpt.run.plan)
        return show_finetune_plan("sft", script_args, training_args, model_args, run_args, argv)
    finetune("sft", SFTTrainer, script_args, training_args, model_args, run_args, dataset_args)


if __name__ == "__main__":
    run(main)
