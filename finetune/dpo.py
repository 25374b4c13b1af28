"""Direct Preference Optimization: align an SFT'd edugpt chat model on preference pairs with TRL's DPOTrainer.

Real run (270M SFT model, UltraFeedback pairs; one GPU, or several with accelerate):
    accelerate launch finetune/dpo.py --config configs/dpo.yaml --model_name_or_path runs/sft --output_dir runs/dpo
CPU-sized (offline, bundled pairs, about a minute on 2 cores with a tiny model):
    python finetune/dpo.py --config configs/dpo_smoke.yaml --model_name_or_path RUN/sft --output_dir RUN/dpo
TRL's own CLI runs the same recipes unchanged (`trl dpo --config configs/dpo.yaml ...`, the same training rows).

The order is pretrain -> finetune/sft.py -> finetune/dpo.py: the model must already carry a chat template (a
pretrained checkpoint is refused with that explanation). The reference policy is the same SFT model, loaded a second
time and frozen. It is passed explicitly: with `ref_model=None` TRL reloads the reference from
`config._name_or_path`, which is wrong or empty for a model object. With `precompute_ref_log_probs: true` TRL scores
the pairs with it once up front instead. Pairs whose prompt alone fills `max_length` (TRL drops them) are counted
before training; when that is every pair, the run is refused. TRL logs rewards/chosen, rewards/rejected,
rewards/accuracies and rewards/margins (beta * policy-vs-reference log-ratio) every `logging_steps`;
trainer_state.json in the output keeps them.

Output: a standard HF model folder (same layout as SFT's, same tokenizer and template) with run_config.json,
metrics.jsonl (the rewards/* above included) and edugpt's model card; resume, SIGTERM, `--overwrite_output_dir` and
`--push_to_hub --hub_model_id NAME` as in sft.py (edugpt/run/lifecycle.py).
"""

from __future__ import annotations

from trl import DatasetMixtureConfig, DPOConfig, DPOTrainer, ModelConfig, ScriptArguments

from edugpt.config.arguments import RunArguments
from edugpt.config.cli import parse_config, run
from edugpt.run.plan import dry_run_argv, show_finetune_plan
from edugpt.train.finetune import finetune


def main(argv: list[str] | None = None) -> None:
    # TRL's own `trl dpo` parses these four (the `datasets:` mixture included); RunArguments is edugpt's lifecycle.
    script_args, training_args, model_args, dataset_args, run_args = parse_config(
        [ScriptArguments, DPOConfig, ModelConfig, DatasetMixtureConfig, RunArguments], dry_run_argv(argv)
    )
    if run_args.dry_run:  # the plan, then exit: nothing written, no model loaded, no GPU used (edugpt.run.plan)
        return show_finetune_plan("dpo", script_args, training_args, model_args, run_args, argv)
    finetune("dpo", DPOTrainer, script_args, training_args, model_args, run_args, dataset_args)


if __name__ == "__main__":
    run(main)
