"""The facts of one run directory that its model card states: what kind of run it is, its model, data and records.

Read through edugpt.run.rundir (config.json, run_config.json, data_manifest.json, metrics.jsonl or Trainer's log
history, samples.md, images/*.png) and lm-eval results; a missing input is None (its section is left out), an
unreadable one is one EduGPTError naming the file and what to do. The card's first sentence (model_sentence) is here
too: a finetune's card quotes its local base run's. Tables are edugpt.report.rows; the layout is edugpt.report.card.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edugpt.errors import EduGPTError
from edugpt.io.net import looks_like_hub_id
from edugpt.io.safefs import read_json
from edugpt.model.gpt2 import saved_parameter_counts
from edugpt.model.saved import is_saved_model
from edugpt.report.numbers import final_tokens, human
from edugpt.run import rundir

# data_manifest.json (a copy of the prepared dataset's manifest.json): the parts the card reads, each an object where
# present, and the values it formats as numbers or names.
MANIFEST_OBJECTS = ("source", "tokenizer", "split_rule", "splits")
MANIFEST_VALUES = {("seq_len",): int, ("source", "max_docs"): int, ("source", "dataset"): str,
                   ("source", "subset"): str}
SPLIT_COUNTS = ("documents", "tokens", "blocks")


@dataclass
class RunFacts:
    """Everything the card says, gathered from one run directory."""

    run_dir: Path
    kind: str  # "pretrain", "sft" or "dpo"
    config: dict
    params: dict | None
    run_config: dict | None
    manifest: dict | None
    records: list[dict]
    samples_md: str | None
    images: list[str]  # paths relative to run_dir, e.g. "images/train-loss.png"
    lm_eval: dict | None
    base_model: str | None  # the base (of a finetune, or train_hf.py --model_name_or_path) as recorded or passed
    base_hub_id: str | None = None  # the base model on the Hub: base_model itself, or where its local run was published
    base_summary: str | None = None  # for an unpublished local edugpt run: the first sentence of its own card

    @property
    def finetune(self) -> bool:
        return self.kind != "pretrain"


def inferred_run_kind(run_config: dict | None, records: list[dict], from_trainer_state: bool) -> str:
    """"pretrain", "sft" or "dpo". A finetune that run_config.json names (rundir.run_kind) is one; otherwise (a folder
    without an edugpt run_config.json: a checkpoint-N, a TRL output dir) the logged metrics and the training arguments
    decide."""
    if (kind := rundir.run_kind(run_config)) in ("sft", "dpo"):
        return kind
    if any(key.startswith(("rewards/", "eval_rewards/")) for r in records for key in r):
        return "dpo"
    training = (run_config or {}).get("training", {}) or {}
    if "beta" in training and "loss_type" in training:
        return "dpo"
    if from_trainer_state or "assistant_only_loss" in training or "completion_only_loss" in training:
        return "sft"
    return "pretrain"


def collect_run_facts(run_dir: str | os.PathLike, eval_dir: str | os.PathLike | None = None,
                      base_model: str | None = None, *, summary_only: bool = False) -> RunFacts:
    """The run's facts. `summary_only` skips what only the run's own card needs (lm-eval results, the base model's
    run): enough for the first sentence, which describes this run in the card of a finetune started from it."""
    run_dir = Path(run_dir)
    if (run_dir.exists() or run_dir.is_symlink()) and not run_dir.is_dir():
        raise EduGPTError(f"run directory {run_dir} is a file, not a folder; pass a finished run directory (the "
                          "output_dir of training) or one of its checkpoint-N folders.")
    config = read_json(run_dir / "config.json", what="model config")
    if not isinstance(config, dict):
        raise EduGPTError(
            f"{run_dir} holds no saved model (config.json); pass a finished run directory or one of its checkpoint-N "
            "folders."
        )
    run_config = rundir.read_run_config(run_dir)
    records = rundir.read_metrics(run_dir)
    from_trainer_state = False
    if not records:
        records = rundir.read_log_history(run_dir)
        from_trainer_state = bool(records)
    images_dir = run_dir / rundir.IMAGES
    kind = inferred_run_kind(run_config, records, from_trainer_state)
    base_model = base_model or rundir.config_value(run_config, "base_model", "model_name_or_path")
    base_hub_id, base_summary = base_model_facts(base_model) if not summary_only else (None, None)
    return RunFacts(
        run_dir=run_dir,
        kind=kind,
        config=config,
        params=saved_parameter_counts(run_dir),
        run_config=run_config,
        manifest=read_data_manifest(run_dir),
        records=records,
        samples_md=read_samples(run_dir),
        images=[p.relative_to(run_dir).as_posix() for p in sorted(images_dir.glob("*.png"))] if images_dir.is_dir()
        else [],
        lm_eval=None if summary_only else rundir.find_lm_eval_results(run_dir, eval_dir),
        base_model=base_model,
        base_hub_id=base_hub_id,
        base_summary=base_summary,
    )



def manifest_problem(manifest: Any) -> str | None:
    """Why `manifest` is not a data manifest the card can read ("has a string as 'splits', not an object"), or None."""
    if not isinstance(manifest, dict):
        return f"holds {rundir.json_kind(manifest)}, not a JSON object"
    for key in MANIFEST_OBJECTS:
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            return f"has {rundir.json_kind(manifest[key])} as {key!r}, not an object"
    for keys, wanted in MANIFEST_VALUES.items():
        value = manifest
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None and (not isinstance(value, wanted) or isinstance(value, bool)):
            return f"has {rundir.json_kind(value)} as {'.'.join(keys)!r}, not {rundir.json_kind(wanted())}"
    for split, counts in (manifest.get("splits") or {}).items():
        if not isinstance(counts, dict):
            return f"has {rundir.json_kind(counts)} as {f'splits.{split}'!r}, not an object of counts"
        for key in SPLIT_COUNTS:
            value = counts.get(key)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                return f"has {rundir.json_kind(value)} as {f'splits.{split}.{key}'!r}, not a number"
    return None


def read_data_manifest(run_dir: Path) -> dict | None:
    """The run's data_manifest.json, None when there is none; one EduGPTError when the card cannot read it."""
    path = run_dir / rundir.DATA_MANIFEST
    manifest = read_json(path, what="data manifest")
    if manifest is None and not os.path.lexists(path):
        return None
    if (problem := manifest_problem(manifest)) is not None:
        raise EduGPTError(f"data manifest {path} {problem}; fix it, or delete it (the card then has no Data section).")
    return manifest


def read_samples(run_dir: Path) -> str | None:
    """The run's samples.md table, None when there is none; one EduGPTError when it is not a UTF-8 text file."""
    path = run_dir / rundir.SAMPLES
    data = rundir.read_regular_file(path, what="samples table")
    if data is None:
        return None
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise EduGPTError(f"samples table {path} is not UTF-8 text; fix it, or delete it (the card then shows the "
                          "samples logged in metrics.jsonl).") from None


def base_model_facts(base_model: str | None) -> tuple[str | None, str | None]:
    """(Hub id, summary) of a finetune's base model. A Hub id is its own. A local edugpt run (the README's flow: SFT
    from runs/gpt2-270m) has the id of the repo it was published to (rundir.published_repo_id), or else, unpublished,
    the first sentence of its own card as the summary. Any other local folder has neither."""
    if is_hub_id(base_model):
        return base_model, None
    if not base_model or not Path(base_model).is_dir():
        return None, None
    base_dir = Path(base_model)
    if is_hub_id(repo_id := rundir.published_repo_id(base_dir)):
        return repo_id, None
    if rundir.run_kind(rundir.read_run_config(base_dir)) is None or not is_saved_model(base_dir):
        return None, None
    return None, model_sentence(collect_run_facts(base_dir, summary_only=True))


def is_hub_id(name: str | None) -> bool:
    """A Hub repo id ('owner/name'), not a local path: only those belong in `datasets:` / `base_model:` metadata.
    What a repo id looks like is edugpt.io.net's rule; here it must also name its owner (a bare legacy name such as
    "gpt2", or a bare lm-eval dataset_path, stays out of the metadata) and not be a path that exists here."""
    return isinstance(name, str) and "/" in name and looks_like_hub_id(name) and not Path(name).exists()



def dataset_phrase(manifest: dict) -> str:
    source = manifest.get("source") or {}
    name = source.get("dataset", "?")
    if name == "embedded":  # prepare_data.py --dataset embedded (edugpt/corpus/sources.py)
        return "edugpt's embedded offline corpus (Python documentation in FineWeb-Edu's schema, a smoke-test corpus)"
    return f"`{name}`" + (f" ({source['subset']})" if source.get("subset") else "")


def model_sentence(facts: RunFacts) -> str:
    """The card's first sentence: size, shape, training, data, base model and tokens seen."""
    c = facts.config
    shape = (f"{c.get('n_layer')} layers, {c.get('n_head')} heads, d_model {c.get('n_embd')}" if "n_layer" in c
             else c.get("model_type", "?"))
    size = f"{human(facts.params['total'])}-parameter " if facts.params else ""
    what = {
        "pretrain": "pretrained from scratch",
        "sft": "supervised-finetuned (SFT with TRL)",
        "dpo": "preference-tuned (DPO with TRL)",
    }[facts.kind]
    dataset = f" on {dataset_phrase(facts.manifest)}" if facts.manifest else ""
    base_model = facts.base_hub_id or facts.base_model
    if base_model and not facts.finetune:  # train_hf.py --model_name_or_path
        what = "further pretrained"
    base = f", starting from `{base_model}`" if base_model else ""
    tokens = final_tokens(facts.records)
    seen = f", {human(tokens['tokens'])} tokens seen" if tokens else ""
    return (f"A {size}GPT-2-architecture causal language model ({shape}) {what}{dataset}{base}{seen}, with the GPT-2 "
            "tokenizer.")
