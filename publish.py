"""Publish a finished run directory to the Hugging Face Hub: the final model with its model card on `main`, and with
--branches each checkpoint-N on its own branch `step-N` (load it with `from_pretrained(NAME, revision="step-N")`).

    # see exactly what would go up, offline: DIR/main/, DIR/step-N/ and DIR/plan.json
    python publish.py runs/demo --hub_model_id you/edugpt-demo --branches --dry_run /tmp/edugpt-publish
    # upload (needs `hf auth login` or HF_TOKEN, and network)
    python publish.py runs/fineweb-270m --hub_model_id you/edugpt-270m --branches

Optimizer, scheduler, RNG and trainer state stay local unless --include_optimizer. The token is never uploaded or
printed; a failed push changes nothing in RUN_DIR, a successful one records the repo in RUN_DIR/published.json (the
card of a finetune started from RUN_DIR then names that repo as its base_model). Training scripts push with Trainer's
own `--push_to_hub`; this command is for a run that already exists (see edugpt/hub.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from edugpt.card import DEFAULT_LICENSE
from edugpt.cli import parse_config, run
from edugpt.hub import publish_run


@dataclass
class PublishArguments:
    run_dir: str = field(metadata={"help": "Run directory (train_hf.py / finetune output_dir); may come first, unflagged."})
    hub_model_id: str = field(metadata={"help": "Hub repo id, 'name' or 'owner/name'."})
    branches: bool = field(default=False, metadata={"help": "Also push each checkpoint-N to branch step-N."})
    dry_run: str | None = field(
        default=None, metadata={"help": "Write the upload folder(s) and plan.json here instead of pushing."}
    )
    include_optimizer: bool = field(
        default=False, metadata={"help": "Also upload optimizer/scheduler/RNG/trainer state (for resuming elsewhere)."}
    )
    private: bool = field(default=False, metadata={"help": "Create the repo as private (if it does not exist yet)."})
    eval_dir: str | None = field(default=None, metadata={"help": "lm-eval results folder for the card."})
    license: str = field(default=DEFAULT_LICENSE, metadata={"help": "License id for the card's metadata."})


def main() -> None:
    argv = sys.argv[1:]
    # RUN_DIR may come first without its flag, as in `python publish.py runs/demo --hub_model_id ...`.
    if argv and not argv[0].startswith("-"):
        argv = ["--run_dir", *argv]
    (args,) = parse_config([PublishArguments], argv)
    where = publish_run(
        args.run_dir, args.hub_model_id, branches=args.branches, include_optimizer=args.include_optimizer,
        dry_run=args.dry_run, eval_dir=args.eval_dir, private=args.private or None, license=args.license,
    )
    print(f"dry run written: {where} (plan.json lists branches and left-out files)" if args.dry_run else f"published: {where}")


if __name__ == "__main__":
    run(main)
