"""The settings a checkpoint is trained with and a resumed run must share: what the optimizer, the schedule and the data
order depend on (`training_settings`, recorded in every completion marker), how two sets of them differ, and the
process layout (number of processes, FSDP or not) a checkpoint was written with and whether another layout can
continue it (`layout_problem`). Pure functions, but `training_layout` (reads a Trainer) and `checkpoint_layout` (reads a
checkpoint's marker)."""

from __future__ import annotations

import json
from pathlib import Path

from edugpt.config.arguments import global_batch_blocks
from edugpt.run.checkpoints import read_marker

# Compared between a checkpoint and the run that resumes it: what the optimizer, the schedule and the data order
# depend on. (Model shape is checked when the weights load.)
OPTIMIZER_KEYS = ("learning_rate", "optim", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon")
SCHEDULE_KEYS = ("lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "max_steps", "num_train_epochs")
# The settings key of the process layout (number of processes, FSDP or not), recorded in every completion marker.
LAYOUT = "layout"


def training_settings(training_args, **data) -> dict:
    """The settings a resumed run must share with its checkpoint, as plain JSON values."""
    args = training_args
    settings = {key: getattr(args, key) for key in OPTIMIZER_KEYS + SCHEDULE_KEYS}
    if args.max_steps > 0:
        settings.pop("num_train_epochs")
    global_batch = global_batch_blocks(args)
    if data.get("seq_len"):  # fixed-length blocks (pretraining): the global batch in tokens, whatever the layout
        settings["tokens_per_step"] = global_batch * data["seq_len"]
    else:
        settings["global_batch_size"] = global_batch
    settings["seed"] = args.seed if args.data_seed is None else args.data_seed
    settings.update(data)
    return json.loads(json.dumps(settings, default=str))


def settings_differences(saved: dict, new: dict) -> dict:
    """{key: (saved value, new value)} for every key whose value differs. A key absent on one side is not compared:
    num_train_epochs is recorded only without max_steps (whose change is reported), base_model only for a run that
    continues a model. The layout is checked on its own (`layout_problem`)."""
    keys = sorted((saved.keys() & new.keys()) - {LAYOUT})
    return {key: (saved[key], new[key]) for key in keys if saved[key] != new[key]}


def training_layout(trainer) -> dict:
    """How `trainer` spreads the run over processes: their number and the FSDP version (None: every process holds
    the whole model, as under DDP or on one device)."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None) if trainer.is_fsdp_enabled else None
    return {"processes": trainer.args.world_size, "fsdp": getattr(plugin, "fsdp_version", None) if plugin else None}


def checkpoint_layout(checkpoint: Path) -> dict | None:
    """The layout recorded in `checkpoint`'s marker (every marker of this format records one); None without one."""
    recorded = ((read_marker(checkpoint) or {}).get("settings") or {}).get(LAYOUT)
    return recorded if isinstance(recorded, dict) else None


def describe_layout(layout: dict) -> str:
    processes = f"{layout['processes']} process{'es' if layout['processes'] != 1 else ''}"
    fsdp = layout.get("fsdp")
    return f"{processes} under FSDP{fsdp}" if fsdp else f"{processes} without FSDP"


def layout_problem(saved: dict | None, now: dict) -> str | None:
    """Why a checkpoint written with layout `saved` cannot be resumed with layout `now`, or None.

    The number of processes may change: with the same global batch in tokens (a compared setting) every optimizer
    step trains on the same blocks (edugpt.train.pretrain.CompactRandomSampler), and unsharded runs save the whole
    optimizer state, FSDP runs with FULL_STATE_DICT a full one that is re-sharded on load. Sharded and unsharded runs
    cannot continue each other: Trainer keeps their model and optimizer state in different files
    (pytorch_model_fsdp.bin + optimizer.bin vs model.safetensors + optimizer.pt) and would crash on the other kind.
    """
    if not saved:
        return None
    was, now_fsdp = saved.get("fsdp"), now.get("fsdp")
    if was != now_fsdp:
        return f"it was written by {describe_layout(saved)} and this run has {describe_layout(now)}"
    return None
