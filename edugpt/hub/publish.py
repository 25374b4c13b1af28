"""publish.py's command (`publish_run`) and the check every push starts with (`require_push_ready`). Every upload to the
Hugging Face Hub takes the one guarded path below: publish.py, Trainer's pushes while and after training
(`--push_to_hub`, `hub_strategy`: edugpt.hub.trainer_pushes), and each checkpoint's `step-N` branch as it is saved
(`--hub_step_branches`), so `from_pretrained(repo, revision="step-5000")` loads that checkpoint even after
save_total_limit deleted it locally.

    python publish.py runs/demo --hub_model_id you/edugpt-demo --branches --dry_run /tmp/publish-plan   # offline
    python publish.py runs/demo --hub_model_id you/edugpt-demo --branches                               # uploads

One guarded path for all of them:
1. plan (edugpt.hub.plan): a record, not a pattern. Only what the run's record (edugpt.run.record) says the run wrote,
   and that is still the file it wrote, is ever uploaded. `main` gets the final model's files and the run's record
   (run_config.json, data_manifest.json, metrics.jsonl, samples.md, the plots in images/, TensorBoard's event files);
   a step-N branch gets its checkpoint's model files. Resume state (optimizer, scheduler, RNG, trainer state,
   training_args.bin, completion marker) goes up only with `include_optimizer` (or `hub_strategy checkpoint`, whose
   point it is). Hidden files (the run's lock and record), corrupt-checkpoint-N, whatever the user put in the folder
   (in images/ and runs/ too), a file edited since the run wrote it, and every symlink (wherever it points: nothing
   outside the run directory is ever read for an upload) stay local; the plan says which and why. The model card is
   built from exactly the planned files, so it links only images that go up.
2. stage (edugpt.hub.stage): the exact upload as one folder. Large files are hardlinked (instant, no extra disk; a
   checkpoint deleted by save_total_limit meanwhile stays intact), small ones copied (a snapshot of files training
   appends to); each is opened without following links and must still be the very file that was planned. A dry run is
   this folder. (Why not upload_folder on the run directory with allow_patterns: its file listing reads through
   symlinked files, and a pattern cannot tell a link from a file.)
3. scan (edugpt.hub.secrets): every staged byte, binary files included (training_args.bin is a pickle), for the user's
   token and anything shaped like a Hugging Face token. A hit stops the upload and names the file; the token is never
   printed.
4. upload (edugpt.hub.pusher): `HfApi.upload_folder` of that folder, one commit with the card; a step-N branch
   (`create_branch`) ends up holding exactly its checkpoint's files (`delete_patterns`); main gains or replaces files
   (weight files that are not uploaded again are deleted, so a sharded model does not sit beside an older single
   file).

Pushes during training run on a background thread, one at a time; a failed one is kept (staged in
RUN_DIR/.edugpt-upload) and retried at the next save, at the end of training, by running the same command again or
by publish.py. A successful publish.py run records the repo in RUN_DIR/published.json, which the card of a finetune of
this run reads to name its base model on the Hub.
"""

from __future__ import annotations

import os
from pathlib import Path

from edugpt.config.arguments import DEFAULT_LICENSE
from edugpt.errors import EduGPTError
from edugpt.hub.plan import RESUME, PublishPlan, plan_publish
from edugpt.hub.pusher import HubPusher
from edugpt.hub.stage import write_dry_run
from edugpt.io.net import hub_available, require_repo_id
from edugpt.run import rundir


def require_push_ready(hub_model_id: str | None) -> str:
    """Raise EduGPTError (one sentence) unless pushing to `hub_model_id` can work: valid id, a token, a reachable Hub,
    and a token the Hub accepts. Call it before training so a run that cannot be uploaded is not started.

    Returns the full repo id ('name' becomes 'your-user/name', as the Hub will create it)."""
    from huggingface_hub import HfApi, get_token

    require_repo_id(hub_model_id)
    if not get_token():
        raise EduGPTError(
            f"no Hugging Face token found, so nothing can be pushed to {hub_model_id}; run `hf auth login` or set "
            "HF_TOKEN (or train without --push_to_hub and publish the run later with publish.py)."
        )
    if not hub_available():
        raise EduGPTError(
            f"the Hugging Face Hub is unreachable (HF_HUB_OFFLINE is set or there is no network), so nothing can be "
            f"pushed to {hub_model_id}; connect and unset HF_HUB_OFFLINE (or train without --push_to_hub and publish "
            "the run later with publish.py)."
        )
    try:
        user = HfApi().whoami(cache=True)
    except Exception as err:
        raise EduGPTError(
            f"the Hub did not accept your token ({type(err).__name__}); log in again with `hf auth login` or set a "
            "valid HF_TOKEN with write access."
        ) from None
    return hub_model_id if "/" in hub_model_id else f"{user['name']}/{hub_model_id}"



def _print_plan(plan: PublishPlan) -> None:
    for upload in plan.uploads:
        print(f"{upload.branch:>12}: {len(upload.files) + 1} files, {upload.total_bytes() / 1e6:.1f} MB "
              f"from {upload.source} ({len(upload.excluded)} left out)")
        resume = [e for e in upload.excluded if e["reason"] == RESUME]
        for entry in upload.excluded:
            if entry["reason"] != RESUME:
                print(f"{'':>12}  left out {entry['path']}: {entry['reason']}")
        if resume:
            print(f"{'':>12}  left out {len(resume)} resume-state files (--include_optimizer uploads them)")
    for skipped in plan.skipped:
        print(f"     skipped: {skipped['path']} ({skipped['reason']})")


def publish_run(run_dir: str | os.PathLike, hub_model_id: str, *, branches: bool = False,
                include_optimizer: bool = False, dry_run: str | os.PathLike | None = None,
                eval_dir: str | os.PathLike | None = None, private: bool | None = None,
                license: str = DEFAULT_LICENSE) -> str:
    """Plan, then either write the dry-run folder or push (main first, then each step-N branch) and record the repo in
    the run's published.json. Everything is scanned for tokens before it is written or uploaded. Returns the folder
    path or repo URL."""
    if dry_run is None:
        hub_model_id = require_push_ready(hub_model_id)  # before any work: no token / no network fails in a second
    plan = plan_publish(run_dir, hub_model_id, branches=branches, include_optimizer=include_optimizer,
                        eval_dir=eval_dir, license=license)
    _print_plan(plan)
    if dry_run is not None:
        return str(write_dry_run(plan, dry_run))
    pusher = HubPusher(Path(run_dir).resolve(), plan.repo_id, private=private)
    for upload in plan.uploads:
        pusher.push(upload)
        print(f"pushed {upload.branch}: {len(upload.files) + 1} files from {upload.source}")
    rundir.write_published(run_dir, pusher.repo_id, [upload.branch for upload in plan.uploads])
    return f"https://huggingface.co/{pusher.repo_id}"

