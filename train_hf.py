"""Pretrain a GPT-2 from scratch on a prepared dataset with Hugging Face Trainer + accelerate.

One GPU (GH200/H100/H200), the 16-layer, 1024-wide model ("270M") on FineWeb-Edu sample-10BT:
    accelerate launch --config_file accelerate_config.yaml train_hf.py --config configs/gpt2_270m.yaml
Several GPUs or nodes, no code change (DDP or FSDP; divide gradient_accumulation_steps by the GPU count):
    accelerate launch --config_file configs/accelerate/ddp_8gpu.yaml train_hf.py --config configs/gpt2_270m.yaml \\
        --gradient_accumulation_steps 4
CPU-sized (2 cores, ~1-2 minutes), on the embedded offline corpus:
    python prepare_data.py --dataset embedded --output_dir runs/data --seq_len 128
    python train_hf.py --config configs/smoke.yaml --dataset_dir runs/data --output_dir runs/smoke
Two CPU processes (DDP over gloo):
    accelerate launch --config_file configs/accelerate/cpu_ddp_2proc.yaml train_hf.py --config configs/smoke.yaml

Any key of the recipe can be overridden on the command line (`--max_steps 50 --learning_rate 1e-3`); unknown keys
are an error listing the valid ones. Re-running the same command resumes from the newest valid checkpoint in
output_dir, bit-exact; SIGTERM saves a checkpoint at the current step and exits 0. A NaN/inf loss stops the run with
an error, keeping the last good checkpoint (`--nonfinite_loss skip`: drop that step's update and train on).
output_dir ends up holding checkpoint-N/, the final model (`AutoModelForCausalLM.from_pretrained(output_dir)`,
`lm_eval --model hf --model_args pretrained=output_dir`), metrics.jsonl, samples.md, images/train-loss.png,
run_config.json, data_manifest.json and README.md, edugpt's model card (`python -m edugpt.report DIR` rewrites it).

`--push_to_hub --hub_model_id NAME` checks the token and the Hub before anything is loaded, then at the end uploads
output_dir with Trainer's own push (`hub_strategy` honoured) and replaces Trainer's card with edugpt's. A failed push
leaves the run directory complete; `python publish.py output_dir --hub_model_id NAME` publishes it later.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file
from transformers import TrainingArguments

from edugpt.args import DataArguments, ModelArguments, ScriptArguments
from edugpt.card import write_model_card
from edugpt.checkpoints import find_resume_checkpoint, list_checkpoints
from edugpt.cli import parse_config, run
from edugpt.errors import EduGPTError
from edugpt.hub import push_failed_error, require_push_ready, save_card_and_push
from edugpt.modeling import require_compatible_checkpoint
from edugpt.rundir import CARD as CARD_NAME
from edugpt.training import build_trainer

logger = logging.getLogger("train_hf")


def write_run_files(output_dir: Path, model_args, data_args, script_args, training_args, manifest: dict) -> None:
    """run_config.json (every argument in effect) and data_manifest.json, each written atomically."""
    output_dir.mkdir(parents=True, exist_ok=True)
    run_config = {"model": asdict(model_args), "data": asdict(data_args), "script": asdict(script_args),
                  "training": training_args.to_dict()}
    for name, content in {"run_config.json": run_config, "data_manifest.json": manifest}.items():
        tmp = output_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(content, indent=2, default=str) + "\n")
        os.replace(tmp, output_dir / name)


def save_final_model(trainer, output_dir: Path) -> None:
    """The final model (+ generation config, tokenizer) and README.md, edugpt's card; with push_to_hub both go up."""
    push_failure = save_card_and_push(trainer)
    if push_failure:
        raise push_failed_error(output_dir, trainer.args.hub_model_id, push_failure)
    logger.info("final model and model card saved to %s%s", output_dir,
                f" and pushed to {trainer.args.hub_model_id}" if trainer.args.push_to_hub else "")


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, script_args, training_args = parse_config(
        [ModelArguments, DataArguments, ScriptArguments, TrainingArguments], argv
    )
    is_main = training_args.process_index == 0
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if training_args.push_to_hub:  # before any data or model: offline or without a login this fails in a second
        training_args.hub_model_id = require_push_ready(training_args.hub_model_id)
    pretraining = build_trainer(model_args, data_args, script_args, training_args)

    output_dir = Path(training_args.output_dir)
    with training_args.main_process_first(desc="finding the newest valid checkpoint"):
        checkpoint = find_resume_checkpoint(output_dir, quarantine=is_main)
    if checkpoint is not None:
        require_compatible_checkpoint(checkpoint, pretraining.config)
        done = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
        if done >= training_args.max_steps:
            # Trainer would run one more step past max_steps when resumed at it; a finished run has nothing to train.
            # Killed between its last checkpoint and the final save, it lacks the final model and card; asked to push
            # (again, after a failed push), it pushes: both from the last checkpoint's weights.
            if training_args.push_to_hub or not (output_dir / "model.safetensors").exists():
                pretraining.trainer.model.load_state_dict(load_file(checkpoint / "model.safetensors"), strict=False)
                save_final_model(pretraining.trainer, output_dir)
            elif is_main and not (output_dir / CARD_NAME).exists():
                write_model_card(output_dir)
            logger.info("%s already reached max_steps %d; final model in %s", checkpoint, training_args.max_steps,
                        output_dir)
            return
        logger.info("resuming from %s", checkpoint)
    if is_main:
        write_run_files(output_dir, model_args, data_args, script_args, training_args, pretraining.data.manifest)

    trainer = pretraining.trainer
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    if pretraining.guard.failure:
        good = list_checkpoints(output_dir)
        raise EduGPTError(
            f"{pretraining.guard.failure}, so training stopped without saving those weights; the last good checkpoint is "
            f"{good[0] if good else 'none'}: lower learning_rate or raise warmup_steps, then re-run to resume from it."
        )
    if pretraining.sigterm.received:
        logger.info("stopped by SIGTERM after saving checkpoint-%s; re-run the same command to resume",
                    pretraining.sigterm.stopped_at)
        return
    state = trainer.state
    if trainer.eval_dataset is not None and not any(
        "eval_loss" in record and record["step"] == state.global_step for record in state.log_history
    ):
        trainer.evaluate()  # the final validation loss, for the table and the plot
    save_final_model(trainer, output_dir)


if __name__ == "__main__":
    run(main)
