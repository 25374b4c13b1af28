"""Pretrain a GPT-2 from scratch (or continue a saved one) on a prepared dataset with Hugging Face Trainer + accelerate.

One GPU (GH200/H100/H200), the 16-layer, 1024-wide model ("270M") on FineWeb-Edu sample-10BT:
    accelerate launch --config_file accelerate_config.yaml train_hf.py --config configs/gpt2_270m.yaml
Several GPUs or nodes, no code change (DDP or FSDP2; the recipe's tokens_per_step keeps ~0.5M tokens per step, the
gradient accumulation follows the GPU count; N nodes under Slurm: scripts/slurm_train.sbatch):
    accelerate launch --config_file configs/accelerate/ddp_8gpu.yaml train_hf.py --config configs/gpt2_270m.yaml
Before launching: `--dry_run` prints the plan (parameters, FLOPs, the batch split of this launch, steps and epochs,
peak memory per GPU and the cards it fits, time and cost on common GPUs, checkpoint disk) and writes nothing; the
recipes for 24 GB and 40-48 GB cards are configs/gpt2_270m_24gb.yaml and configs/gpt2_270m_48gb.yaml.
CPU-sized (2 cores, ~1-2 minutes), on the embedded offline corpus:
    python prepare_data.py --dataset embedded --output_dir runs/data --seq_len 128
    python train_hf.py --config configs/smoke.yaml --dataset_dir runs/data --output_dir runs/smoke
Two CPU processes (DDP over gloo), at the one-process global batch:
    accelerate launch --config_file configs/accelerate/cpu_ddp_2proc.yaml train_hf.py --config configs/smoke.yaml \\
        --per_device_train_batch_size 4 --tokens_per_step 1024
Continue pretraining from existing weights: a run folder, one of its checkpoint-N folders, or a Hub model at a revision
(a published run's step-N branch, openai-community/gpt2). The shape comes from the model (recipe shape keys that
disagree are an error); the card names it as base_model:
    python train_hf.py --config configs/smoke.yaml --model_name_or_path runs/smoke --output_dir runs/smoke-more
    python train_hf.py --config RECIPE --model_name_or_path you/edugpt-270m --model_revision step-5000

Any key of the recipe can be overridden on the command line (`--max_steps 50 --learning_rate 1e-3`); unknown keys
are an error. Running the same command again resumes from the newest valid checkpoint in output_dir, bit-exact, and
does nothing for a finished run; `--resume_from_checkpoint PATH` resumes from that checkpoint (also into a new
output_dir); `--overwrite_output_dir` starts over. Resuming with changed settings (learning rate, schedule, batch,
data) is refused unless `--resume_with_changes`. SIGTERM saves a checkpoint at the current step and exits 0. A
NaN/inf loss stops the run with an error, keeping the last good checkpoint (`--nonfinite_loss skip`: drop that
step's update and train on). See edugpt/run/lifecycle.py for the rules, edugpt/run/rundir.py for what output_dir holds:
checkpoint-N/, the final model (`AutoModelForCausalLM.from_pretrained(output_dir)`, `lm_eval --model hf`),
metrics.jsonl, samples.md, images/, run_config.json, data_manifest.json and README.md, edugpt's model card
(`python -m edugpt.report.card DIR` rewrites it).

`--push_to_hub --hub_model_id NAME` checks the token and the Hub before anything is loaded, then at the end uploads
output_dir with Trainer's own push (`hub_strategy` honoured), edugpt's card in the same commit. A failed push leaves
the run directory complete; the same command again (or `python publish.py output_dir --hub_model_id NAME`) pushes it.
"""

from __future__ import annotations

from transformers import TrainingArguments

from edugpt.config.arguments import DataArguments, ModelArguments, PretrainArguments, RunArguments
from edugpt.config.cli import parse_config, run, setup_logging
from edugpt.run.plan import dry_run_argv, show_pretraining_plan
from edugpt.train.pretrain import pretrain


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, pretrain_args, run_args, training_args = parse_config(
        [ModelArguments, DataArguments, PretrainArguments, RunArguments, TrainingArguments], dry_run_argv(argv)
    )
    if run_args.dry_run:  # the plan, then exit: nothing written, no model built, no GPU used (edugpt.run.plan)
        return show_pretraining_plan(model_args, data_args, run_args, training_args, argv)
    setup_logging(training_args.process_index)
    pretrain(model_args, data_args, pretrain_args, run_args, training_args)


if __name__ == "__main__":
    run(main)
