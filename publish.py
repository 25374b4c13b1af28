"""Publish a finished run directory to the Hugging Face Hub: the final model with its model card on `main`, and with
--branches each checkpoint-N on its own branch `step-N` (load it with `from_pretrained(NAME, revision="step-N")`).

    # see exactly what would go up, offline: DIR/main/, DIR/step-N/ and DIR/plan.json (what stays local, and why)
    python publish.py runs/demo --hub_model_id you/edugpt-demo --branches --dry_run /tmp/edugpt-publish
    # upload (needs `hf auth login` or HF_TOKEN, and network)
    python publish.py runs/fineweb-270m --hub_model_id you/edugpt-270m --branches

Only the model's files and the run's record go up, never a symlink (nothing outside RUN_DIR is read) or a hidden
file; optimizer, scheduler, RNG and trainer state stay local unless --include_optimizer. Every byte is scanned for a
token first; the token is never uploaded or printed; a failed push changes nothing in RUN_DIR. Training scripts push
with --push_to_hub (and --hub_step_branches) through the same code, edugpt/hub/publish.py; this command is for a run that
already exists, and also pushes step-N branches whose push failed during training.

A prepared dataset (prepare_data.py's --output_dir) goes to a dataset repo the same guarded way (edugpt/hub/datasets.py):
exactly the files its manifest records, manifest.json and a dataset card, after `prepare_data.py --verify`'s checks.
    python publish.py data/embedded --hub_dataset_id you/edugpt-embedded --dry_run /tmp/ds-plan   # offline
    python publish.py data/embedded --hub_dataset_id you/edugpt-embedded      # then: train_hf.py --dataset_dir
                                                                            #   hf://datasets/you/edugpt-embedded@COMMIT
"""

from __future__ import annotations

import sys

from edugpt.app.space import check_space, publish_space
from edugpt.config.arguments import PublishArguments
from edugpt.config.cli import parse_config, run, setup_logging
from edugpt.hub.datasets import publish_dataset
from edugpt.hub.publish import publish_run


def main() -> None:
    argv = sys.argv[1:]
    # RUN_DIR may come first without its flag, as in `python publish.py runs/demo --hub_model_id ...`.
    if argv and not argv[0].startswith("-"):
        argv = ["--run_dir", *argv]
    (args,) = parse_config([PublishArguments], argv)
    setup_logging()
    # --space: checked before the model goes up (the Space reads that repo), pushed after it.
    space = check_space(args.space, args.hub_model_id, dry_run=args.dry_run is not None) if args.space else None
    if args.hub_dataset_id is not None:
        where = publish_dataset(args.run_dir, args.hub_dataset_id, dry_run=args.dry_run, private=args.private or None,
                                license=args.license)
        print(f"dry run written: {where} (main/ is the upload, plan.json lists it)" if args.dry_run else
              f"published: {where}")
        return
    where = publish_run(
        args.run_dir, args.hub_model_id, branches=args.branches, include_optimizer=args.include_optimizer,
        dry_run=args.dry_run, eval_dir=args.eval_dir, private=args.private or None, license=args.license,
    )
    if args.dry_run:
        print(f"dry run written: {where} (plan.json lists branches and left-out files)")
    else:
        print(f"published: {where}")
    if space:
        where = publish_space(*space, dry_run=args.dry_run and f"{args.dry_run}/space", license=args.license,
                              private=args.private or None)
        print(f"space: {where}")


if __name__ == "__main__":
    run(main)
