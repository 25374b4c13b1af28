"""The model card (`README.md`) of a run directory: facts computed here, laid out by `templates/model_card.md.jinja`.

Regenerate it for any run directory (pretraining, SFT or DPO output), offline, in about a second:

    python -m edugpt.report.card runs/demo
    python -m edugpt.report.card runs/demo --eval_dir runs/demo/eval --hub_model_id you/edugpt-270m

Training scripts call `write_model_card(output_dir)` at the end. Inputs, all optional except the saved model's
`config.json`, are the run directory's files (edugpt.run.rundir: run_config.json, data_manifest.json, metrics.jsonl or
Trainer's log history, samples.md, images/*.png) and lm-eval results (`results*.json` under the run directory, beside
it, or in `--eval_dir`). A section whose input is missing is left out.

This module computes the card's facts and table rows, each in a small function named for what it computes; the
template holds the prose and the section layout, rendered with huggingface_hub's `ModelCard.from_template`. The YAML
header carries license, library_name, pipeline_tag, language, datasets, tags, base_model (finetunes) and a
`model-index` with the lm-eval scores of real Hub tasks, so the Hub shows them in the model page's evaluation widget.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from edugpt.config.arguments import DEFAULT_LICENSE, CardArguments
from edugpt.errors import EduGPTError
from edugpt.io.safefs import atomic_write_text, read_json
from edugpt.model.gpt2 import saved_parameter_counts
from edugpt.run import rundir
from edugpt.run.record import RECORD, Record

TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "model_card.md.jinja"
# Rows kept in by-step tables; longer histories are thinned evenly (first and last always kept), all are in metrics.jsonl.
MAX_TABLE_ROWS = 12
# Training arguments worth a row in the recipe table, in reading order. The full run_config.json sits below it.
RECIPE_KEYS = (
    "max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
    "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio", "weight_decay", "adam_beta1",
    "adam_beta2", "max_grad_norm", "optim", "bf16", "fp16", "torch_compile", "seed", "beta", "loss_type", "max_length",
    "assistant_only_loss",
)
# DPO/SFT metrics TRL logs, reported for finetuning runs (with their eval_ twins when present).
FINETUNE_METRICS = (
    "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected",
    "mean_token_accuracy", "entropy", "num_tokens",
)
# lm-eval task name -> (Hub dataset id, pretty name, split) for the model-index when results JSON lacks task configs.
KNOWN_TASKS = {"hellaswag": ("Rowan/hellaswag", "HellaSwag", "validation")}
# edugpt's offline stand-in (edugpt/eval/tasks/hellaswag_local.yaml): HellaSwag's scoring over a local jsonl file. Its
# numbers are never presented as HellaSwag's nor put in the model-index.
LOCAL_HELLASWAG_TASK = "hellaswag_local"
KNOWN_PLOTS = (rundir.LOSS_PLOT, rundir.HELLASWAG_PLOT)  # placed in their sections; other images go under "More plots"
# (label, distribution) listed under "Framework versions", as TRL's own cards list them; TRL only for finetunes.
FRAMEWORKS = (("edugpt", "edugpt"), ("TRL", "trl"), ("Transformers", "transformers"), ("Pytorch", "torch"),
              ("Datasets", "datasets"), ("Tokenizers", "tokenizers"))


# ---------------------------------------------------------------------------------------------------------------------
# What the card is built from: one run directory, read through edugpt.run.rundir.


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


def run_kind(run_config: dict | None, records: list[dict], from_trainer_state: bool) -> str:
    """"pretrain", "sft" or "dpo". A finetune that run_config.json names (rundir.run_kind) is one; otherwise the logged
    metrics and the training arguments decide, as for run_configs written before the finetunes recorded their kind."""
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
    kind = run_kind(run_config, records, from_trainer_state)
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


# data_manifest.json (a copy of the prepared dataset's manifest.json): the parts the card reads, each an object where
# present, and the values it formats as numbers or names.
MANIFEST_OBJECTS = ("source", "tokenizer", "split_rule", "splits")
MANIFEST_VALUES = {("seq_len",): int, ("source", "max_docs"): int, ("source", "dataset"): str,
                   ("source", "subset"): str}
SPLIT_COUNTS = ("documents", "tokens", "blocks")


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
    if rundir.run_kind(rundir.read_run_config(base_dir)) is None or not (base_dir / "config.json").is_file():
        return None, None
    return None, model_sentence(collect_run_facts(base_dir, summary_only=True))


# ---------------------------------------------------------------------------------------------------------------------
# Formatting: numbers as the card prints them.


def human(n: float | None) -> str:
    """1234567 -> '1.23M' (token and parameter counts)."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "—" if n is None else str(n)
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) >= 100:
        value = int(value)  # counts logged as floats (TRL's num_tokens)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.{digits}f}"


def _plain(value: Any) -> str:
    """An argument as a recipe would spell it: 0.003 not 0.0030, 1337 not 1,337, dicts/lists as JSON."""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:.6g}"
    return str(value)


def _thin(rows: list, limit: int = MAX_TABLE_ROWS) -> tuple[list, bool]:
    """At most `limit` rows, evenly spaced with the first and last kept, and whether any were dropped."""
    if len(rows) <= limit:
        return rows, False
    picks = sorted({round(i * (len(rows) - 1) / (limit - 1)) for i in range(limit)})
    return [rows[i] for i in picks], True


def _last(records: list[dict], key: str) -> dict | None:
    for record in reversed(records):
        if isinstance(record.get(key), (int, float)):
            return record
    return None


def _median(records: list[dict], key: str) -> float | None:
    values = sorted(r[key] for r in records if isinstance(r.get(key), (int, float)))
    return values[len(values) // 2] if values else None


def final_tokens(records: list[dict]) -> dict | None:
    """The record with the most tokens seen (records are not strictly ordered: samples at step 0 may come last)."""
    with_tokens = [r for r in records if isinstance(r.get("tokens"), (int, float)) and r["tokens"] > 0]
    return max(with_tokens, key=lambda r: (r["tokens"], r["step"])) if with_tokens else None


def is_hub_id(name: str | None) -> bool:
    """A Hub repo id ('owner/name'), not a local path: only those belong in `datasets:` / `base_model:` metadata."""
    return (isinstance(name, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not Path(name).exists()
            and Path(name).suffix not in (".json", ".jsonl", ".parquet", ".csv", ".txt"))


# ---------------------------------------------------------------------------------------------------------------------
# Facts and table rows, one function each. Rows are lists of display strings; the template draws the tables.


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


def in_loop_source(facts: RunFacts) -> str:
    """Which items the in-loop HellaSwag records scored, from run_config's script/data arguments."""
    sections = [v for v in (facts.run_config or {}).values() if isinstance(v, dict)]
    hellaswag_file = next((s["hellaswag_file"] for s in sections if s.get("hellaswag_file")), None)
    limit = next((s["hellaswag_limit"] for s in sections if s.get("hellaswag_limit")), None)
    where = (f"the local file `{hellaswag_file}` in HellaSwag's format (not HellaSwag's validation set)"
             if hellaswag_file else "HellaSwag's validation set")
    return where + (f", first {_num(limit)} items" if limit else "")


def lm_eval_scores(lm_eval: dict | None) -> list[dict]:
    """One entry per (task, metric) of an lm-eval results JSON: {'task', 'metric', 'value', 'stderr', 'n_shot',
    'samples', 'limit'}."""
    if not lm_eval:
        return []
    scores = []
    limit = (lm_eval.get("config") or {}).get("limit")
    for task, metrics in sorted(lm_eval["results"].items()):
        if not isinstance(metrics, dict):
            continue
        for key, value in metrics.items():
            name, comma, filter_name = key.partition(",")
            # Metric keys are "metric,filter"; others (alias, sample_len) are not metrics.
            if not comma or "stderr" in name or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            stderr = metrics.get(f"{name}_stderr,{filter_name}" if filter_name else f"{name}_stderr")
            n_shot = (lm_eval.get("n-shot") or {}).get(task, 0)
            samples = ((lm_eval.get("n-samples") or {}).get(task) or {}).get("effective")
            scores.append({"task": task, "metric": name, "value": value, "stderr": stderr, "n_shot": n_shot,
                           "samples": samples, "limit": limit})
    return scores


def results_rows(facts: RunFacts, scores: list[dict]) -> list[list[str]]:
    """The headline numbers: final and best losses, tokens, speed, HellaSwag, and the finetuning metrics."""
    rows = []
    train = _last(facts.records, "loss")
    if train:
        rows.append([f"Final train loss (step {train['step']:,})", _num(train["loss"])])
    val = _last(facts.records, "eval_loss")
    if val:
        rows.append([f"Final validation loss (step {val['step']:,})", _num(val["eval_loss"])])
        rows.append(["Final validation perplexity", _num(math.exp(min(val["eval_loss"], 50)), 2)])
        evals = [r for r in facts.records if isinstance(r.get("eval_loss"), (int, float))]
        best = min(evals, key=lambda r: r["eval_loss"])
        if best is not val:
            rows.append([f"Best validation loss (step {best['step']:,})", _num(best["eval_loss"])])
    tokens = final_tokens(facts.records)
    if tokens:
        rows.append(["Tokens seen", f"{tokens['tokens']:,} ({human(tokens['tokens'])})"])
    speed = _median(facts.records, "tokens_per_second")
    if speed is not None:
        rows.append(["Throughput (median)", f"{human(speed)} tokens/s"])
    mfu = _median(facts.records, "mfu")
    if mfu is not None:  # a fraction of the accelerator's peak FLOP/s (edugpt.train.callbacks.ThroughputCallback)
        rows.append(["MFU (median)", f"{mfu:.1%}"])
    in_loop = _last(facts.records, "hellaswag/acc_norm")
    if in_loop:
        local = "local file, " if "local file" in in_loop_source(facts) else ""
        rows.append([f"HellaSwag acc_norm, in-loop ({local}step {in_loop['step']:,})",
                     _num(in_loop["hellaswag/acc_norm"])])
    for score in scores:
        if score["task"] in ("hellaswag", LOCAL_HELLASWAG_TASK) and score["metric"] in ("acc", "acc_norm"):
            name = "HellaSwag" if score["task"] == "hellaswag" else "HellaSwag-format local file"
            rows.append([f"{name} {score['metric']}, lm-eval {score['n_shot']}-shot", _num(score["value"])])
    for key in ("rewards/accuracies", "rewards/margins", "mean_token_accuracy"):
        for prefix in ("", "eval_"):
            record = _last(facts.records, prefix + key)
            if record:
                label = "eval " if prefix else "train "
                rows.append([f"{label}{key} (step {record['step']:,})", _num(record[prefix + key])])
    return rows


def loss_rows(records: list[dict]) -> list[list[str]]:
    """Step, tokens, train loss and validation loss at each evaluation."""
    rows = []
    for record in (r for r in records if isinstance(r.get("eval_loss"), (int, float))):
        train = next((r for r in reversed(records)
                      if isinstance(r.get("loss"), (int, float)) and r["step"] <= record["step"]), None)
        rows.append([f"{record['step']:,}", human(record.get("tokens")), _num(train["loss"]) if train else "—",
                     _num(record["eval_loss"])])
    return rows


def in_loop_hellaswag_rows(records: list[dict]) -> list[list[str]]:
    """Step, tokens, acc and acc_norm of each HellaSwag evaluation during training."""
    return [[f"{r['step']:,}", human(r.get("tokens")), _num(r.get("hellaswag/acc", "—")),
             _num(r.get("hellaswag/acc_norm", "—"))]
            for r in records if isinstance(r.get("hellaswag/acc_norm"), (int, float))
            or isinstance(r.get("hellaswag/acc"), (int, float))]


def lm_eval_source(lm_eval: dict, scores: list[dict]) -> str:
    """'lm-evaluation-harness 0.4.13 on `runs/x`, first 100 items per task': what scored the final model, on what."""
    version = lm_eval.get("lm_eval_version") if isinstance(lm_eval.get("lm_eval_version"), str) else None
    model = rundir.evaluated_model(lm_eval)
    limit = scores[0]["limit"]
    return (f"lm-evaluation-harness{' ' + version if version else ''}" + (f" on `{model}`" if model else "")
            + (f", first {limit} items per task" if limit else ""))


def lm_eval_rows(scores: list[dict]) -> list[list[str]]:
    return [[s["task"], s["n_shot"], s["metric"], _num(s["value"]),
             _num(s["stderr"]) if isinstance(s["stderr"], (int, float)) else "—",
             s["samples"] if s["samples"] is not None else "all"] for s in scores]


def local_hellaswag_file(lm_eval: dict | None) -> str | None:
    """The file lm-eval's `hellaswag_local` task scored, when the results hold that task."""
    local = ((lm_eval or {}).get("configs") or {}).get(LOCAL_HELLASWAG_TASK)
    if local is None:
        return None
    kwargs = local.get("dataset_kwargs") if isinstance(local.get("dataset_kwargs"), dict) else {}
    return str(kwargs.get("hellaswag_file") or local.get("dataset_path"))


def sample_rows(records: list[dict]) -> list[list[str]]:
    """Samples logged in metrics.jsonl, for a run without samples.md."""
    return [[f"{r['step']:,}", r["sample/text"]] for r in records if isinstance(r.get("sample/text"), str)]


def sample_prompts(records: list[dict]) -> list[str]:
    return [repr(p) for p in sorted({r["sample/prompt"] for r in records if isinstance(r.get("sample/prompt"), str)})]


def finetune_rows(records: list[dict]) -> list[list[str]]:
    """The last logged value of each TRL metric (and its eval_ twin), with its step."""
    rows = []
    for key in ("loss", "eval_loss") + FINETUNE_METRICS + tuple("eval_" + k for k in FINETUNE_METRICS):
        record = _last(records, key)
        if record:
            rows.append([key, f"{record['step']:,}", _num(record[key])])
    return rows


def architecture(config: dict) -> str:
    return ", ".join(config.get("architectures") or [config.get("model_type", "?")])


def model_rows(config: dict, params: dict | None) -> list[list[str]]:
    """Parameter counts (from the safetensors headers) and the GPT-2 config's shape."""
    rows = [[label, _num(config[key])] for label, key in (
        ("Layers", "n_layer"), ("Attention heads", "n_head"), ("Model width (n_embd)", "n_embd"),
        ("Context length (n_positions)", "n_positions"), ("Vocabulary", "vocab_size"),
        ("Activation", "activation_function"), ("Tied input/output embeddings", "tie_word_embeddings"),
        ("Weights dtype", "dtype"),
    ) if key in config]
    if params:
        rows[:0] = [["Parameters", f"{params['total']:,} ({human(params['total'])})"],
                    ["Non-embedding parameters", f"{params['non_embedding']:,} ({human(params['non_embedding'])})"]]
    return rows


def redact(value: Any) -> Any:
    """Blank every *token* value (hub_token...), as TrainingArguments.to_dict does, in case a run_config holds one."""
    if isinstance(value, dict):
        return {k: f"<{k.upper()}>" if k.lower().endswith("token") and isinstance(v, str) and v and not v.startswith("<")
                else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def recipe_rows(run_config: dict, records: list[dict]) -> list[list[str]]:
    """The training arguments of RECIPE_KEYS, the model and data sections, and the measured tokens per step."""
    training = run_config.get("training") or {}
    rows = [[key, _plain(training[key])] for key in RECIPE_KEYS if training.get(key) not in (None, "", [])]
    max_steps = training.get("max_steps")
    if isinstance(max_steps, (int, float)) and max_steps > 0:
        rows = [r for r in rows if r[0] != "num_train_epochs"]
    for section in ("model", "data"):
        values = run_config.get(section)
        if isinstance(values, dict):
            rows += [[f"{section}.{k}", _plain(v)] for k, v in values.items() if v not in (None, "", [])]
    tokens = final_tokens(records)
    if tokens and tokens["step"]:
        rows.append(["tokens per optimizer step (measured)", f"{round(tokens['tokens'] / tokens['step']):,}"])
    return rows


def data_facts(manifest: dict) -> dict:
    """The prepared data's source, tokenizer, split rule and split sizes, from data_manifest.json."""
    source = manifest.get("source") or {}
    rule = manifest.get("split_rule") or {}
    splits = manifest.get("splits") or {}
    tokenizer = manifest.get("tokenizer") or {}
    return {
        "source": dataset_phrase(manifest),
        "max_docs": _num(source["max_docs"]) if source.get("max_docs") else None,
        "tokenizer": {key: tokenizer.get(key) for key in ("name", "vocab_size", "eos_token_id")} if tokenizer else None,
        "seq_len": manifest.get("seq_len"),
        "split_rule": str(rule.get("description") or rule) if rule else None,
        "salt": repr(rule.get("salt")) if "salt" in rule else None,
        "val_fraction": rule.get("val_fraction"),
        "split_rows": [[name, _num(s.get("documents", "—")), _num(s.get("tokens", "—")), human(s.get("tokens")),
                        _num(s.get("blocks", "—"))] for name, s in splits.items()],
    }


def framework_versions(finetune: bool) -> list[list[str]]:
    """[label, version] of the libraries installed now (when the card is written, as TRL's cards do)."""
    rows = []
    for label, distribution in FRAMEWORKS:
        if distribution == "trl" and not finetune:
            continue
        try:
            rows.append([label, version(distribution)])
        except PackageNotFoundError:
            continue
    return rows


def has_chat_template(facts: RunFacts) -> bool:
    return facts.finetune and (facts.run_dir / "chat_template.jinja").is_file()


def eval_output_dir(repo: str) -> str:
    # Results written under a local run's eval/ folder are found by the next `python -m edugpt.report.card RUN_DIR`.
    return f"{repo}/eval" if Path(repo).exists() else "eval"


# ---------------------------------------------------------------------------------------------------------------------
# Metadata and rendering.


def card_metadata(facts: RunFacts, title: str, scores: list[dict], license: str):
    """The YAML header: a `huggingface_hub.ModelCardData`, with a model-index for scores on Hub datasets only."""
    from huggingface_hub import EvalResult, ModelCardData

    tags = ["gpt2", "edugpt", "causal-lm", {"pretrain": "pretraining", "sft": "sft", "dpo": "dpo"}[facts.kind]]
    if facts.finetune:
        tags.append("trl")
    datasets = None
    finetune_dataset = rundir.config_value(facts.run_config, "dataset_name") if facts.finetune else None
    if is_hub_id(finetune_dataset):
        datasets = [finetune_dataset]
    elif facts.manifest:
        dataset = (facts.manifest.get("source") or {}).get("dataset")
        if is_hub_id(dataset):
            datasets = [dataset]
        if dataset and "fineweb-edu" in dataset.lower():
            tags.append("fineweb-edu")
    eval_results = []
    configs = (facts.lm_eval or {}).get("configs") or {}
    for score in scores:
        task_config = configs.get(score["task"]) or {}
        known = KNOWN_TASKS.get(score["task"], (None, score["task"], None))
        dataset_type = task_config.get("dataset_path") or known[0]
        if score["task"] == LOCAL_HELLASWAG_TASK or not is_hub_id(dataset_type):
            continue  # a local file is not a Hub dataset: the scores stay in the card's body only
        shots = f"{score['n_shot']}-shot" + (f", {score['samples']} examples" if score["limit"] and score["samples"]
                                              else "")
        eval_results.append(EvalResult(
            task_type="text-generation", task_name="Text Generation",
            dataset_type=dataset_type, dataset_name=known[1] if score["task"] in KNOWN_TASKS else score["task"],
            dataset_config=task_config.get("dataset_name") or None,
            dataset_split=task_config.get("validation_split") or task_config.get("test_split") or known[2],
            metric_type=score["metric"], metric_value=round(float(score["value"]), 4),
            metric_name=f"{score['metric']} ({shots})",
        ))
    return ModelCardData(
        language=["en"],
        license=license,
        library_name="transformers",
        pipeline_tag="text-generation",
        datasets=datasets,
        base_model=facts.base_hub_id,
        tags=tags,
        model_name=title if eval_results else None,  # only used as the model-index's name
        eval_results=eval_results or None,
    )


def card_variables(facts: RunFacts, title: str, repo: str, revision: str | None, scores: list[dict]) -> dict:
    """Everything the template shows, by section.

    A step-N branch holds only its checkpoint's files, so its card links no images (the plots stay on `main`)."""
    images = [] if revision else facts.images
    in_loop, in_loop_thinned = _thin(in_loop_hellaswag_rows(facts.records))
    losses, losses_thinned = _thin(loss_rows(facts.records))
    return {
        "title": title,
        "model_sentence": model_sentence(facts),
        "finetune": facts.finetune,
        "kind": facts.kind,
        "revision": revision,
        "revision_step": revision.removeprefix("step-") if revision else None,
        "results_rows": results_rows(facts, scores),
        "loss_plot": rundir.LOSS_PLOT in images,
        "loss_rows": losses,
        "loss_rows_thinned": losses_thinned,
        "in_loop_rows": in_loop,
        "in_loop_rows_thinned": in_loop_thinned,
        "in_loop_source": in_loop_source(facts),
        "hellaswag_plot": rundir.HELLASWAG_PLOT in images,
        "lm_eval_source": lm_eval_source(facts.lm_eval, scores) if scores else None,
        "lm_eval_rows": lm_eval_rows(scores),
        "local_hellaswag_task": LOCAL_HELLASWAG_TASK,
        "local_hellaswag_file": local_hellaswag_file(facts.lm_eval) if scores else None,
        "samples_table": facts.samples_md,
        "sample_rows": sample_rows(facts.records),
        "sample_prompts": sample_prompts(facts.records),
        "finetune_method": {"sft": "Supervised finetuning (SFT)",
                            "dpo": "Direct Preference Optimization (DPO)"}.get(facts.kind),
        "base_model": facts.base_model,
        "base_hub_id": facts.base_hub_id,
        "base_summary": facts.base_summary,
        "finetune_dataset": rundir.config_value(facts.run_config, "dataset_name"),
        "finetune_split": rundir.config_value(facts.run_config, "dataset_train_split"),
        "finetune_rows": finetune_rows(facts.records) if facts.finetune else [],
        "architecture": architecture(facts.config),
        "model_rows": model_rows(facts.config, facts.params),
        "recipe_rows": recipe_rows(facts.run_config, facts.records) if facts.run_config else None,
        "run_config_json": json.dumps(redact(facts.run_config), indent=2, sort_keys=True) if facts.run_config else None,
        "data": data_facts(facts.manifest) if facts.manifest else None,
        "other_images": [{"path": path, "name": Path(path).stem} for path in images if path not in KNOWN_PLOTS],
        "repo": repo,
        "chat": has_chat_template(facts),
        "eval_output_dir": eval_output_dir(repo),
        "framework_versions": framework_versions(facts.finetune),
    }


def build_model_card(run_dir: str | os.PathLike, *, eval_dir: str | os.PathLike | None = None,
                     hub_model_id: str | None = None, base_model: str | None = None,
                     license: str = DEFAULT_LICENSE, revision: str | None = None):
    """The run's model card as a `huggingface_hub.ModelCard` (nothing is written).

    `revision` (e.g. "step-5000") marks a card for a checkpoint branch: it says so at the top and its snippets
    load that revision.
    """
    from huggingface_hub import ModelCard

    facts = collect_run_facts(run_dir, eval_dir, base_model)
    title = hub_model_id.split("/")[-1] if hub_model_id else facts.run_dir.resolve().name
    scores = lm_eval_scores(facts.lm_eval)
    # A step-N branch's card keeps the final model's lm-eval scores in its body but not in its model-index, which
    # would attribute them to that checkpoint.
    metadata = card_metadata(facts, title, [] if revision else scores, license)
    variables = card_variables(facts, title, hub_model_id or str(facts.run_dir), revision, scores)
    return ModelCard.from_template(metadata, template_path=str(TEMPLATE), **variables)


def write_model_card(run_dir: str | os.PathLike, *, eval_dir: str | os.PathLike | None = None,
                     hub_model_id: str | None = None, base_model: str | None = None,
                     license: str = DEFAULT_LICENSE) -> Path:
    """Write `RUN_DIR/README.md` (atomically: a reader never sees half a card) and return its path. Where it cannot
    be written (a folder or a link under that name, a read-only folder) that is said before the card is built."""
    path = Path(run_dir) / rundir.CARD
    require_card_writable(path)
    card = build_model_card(run_dir, eval_dir=eval_dir, hub_model_id=hub_model_id, base_model=base_model,
                            license=license)
    try:
        return atomic_write_text(path, str(card))
    except OSError as err:  # a full disk is already one line (safefs); a folder made read-only since the check
        raise EduGPTError(f"the model card {path} cannot be written ({os.strerror(err.errno)}); make "
                          f"{path.parent} writable and run the same command again.") from None


def require_card_writable(path: Path) -> None:
    """Refuse, without writing anything, a card path the card cannot replace: what is there is not a regular file (a
    folder, a symlink: someone else's, which the rename would replace) or its folder is not writable."""
    if not path.parent.is_dir():
        return  # collect_run_facts says what is wrong with the run directory
    if path.is_symlink() or os.path.lexists(path) and not path.is_file():
        raise EduGPTError(f"{path} is not a regular file (a folder or a link) and the model card goes there; move it "
                          "away, then run the same command again.")
    if os.path.lexists(path) and Record.load(path.parent).role(path.name) is None:
        raise EduGPTError(f"{path} was not written by edugpt (it is not in the run's record {RECORD}, or it was edited "
                          "since): it is not replaced; move it away (or rename it), then run the same command again.")
    if not os.access(path.parent, os.W_OK | os.X_OK):  # EROFS too: access() reports a read-only filesystem
        raise EduGPTError(f"run directory {path.parent} is not writable (a read-only filesystem, or no permission); "
                          "the model card README.md goes there: make it writable, or copy the run elsewhere.")


def main(argv: list[str] | None = None) -> None:
    import sys

    from edugpt.config.cli import parse_config

    args = list(sys.argv[1:] if argv is None else argv)
    # RUN_DIR may come first without its flag: `python -m edugpt.report.card runs/demo`.
    if args and not args[0].startswith("-"):
        args = ["--run_dir", *args]
    (options,) = parse_config([CardArguments], args)
    path = write_model_card(options.run_dir, eval_dir=options.eval_dir, hub_model_id=options.hub_model_id,
                            base_model=options.base_model, license=options.license)
    print(f"model card written: {path}")


if __name__ == "__main__":
    from edugpt.config.cli import run

    run(main)
