"""The model card (`README.md`) of a run directory, built from the run's own files with huggingface_hub's ModelCard.

Regenerate it for any run directory (pretraining, SFT or DPO output), offline, in about a second:

    python -m edugpt.report runs/demo
    python -m edugpt.report runs/demo --eval_dir runs/demo/eval --hub_model_id you/edugpt-270m

Training scripts call `write_model_card(output_dir)` at the end. Inputs, all optional except the saved model's
`config.json` (see the run-directory contract in the README): `run_config.json`, `data_manifest.json`, `metrics.jsonl`
(or TRL's `trainer_state.json` log history for finetuning runs), `samples.md`, `images/*.png`, and lm-eval results
(`results*.json`, found under the run directory or `--eval_dir`). A section whose input is missing is left out.

The YAML header carries license, library_name, pipeline_tag, language, datasets, tags, base_model (finetunes) and a
`model-index` with the lm-eval scores, so the Hub shows them in the model page's evaluation widget.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edugpt.errors import EduGPTError

CARD_NAME = "README.md"
DEFAULT_LICENSE = "mit"  # the project's own license (pyproject.toml); pass another with --license
# Rows kept in by-step tables; longer histories are thinned evenly (first and last always kept), all are in metrics.jsonl.
MAX_TABLE_ROWS = 12
# Training arguments worth a row in the recipe table, in reading order. The full run_config.json sits below it.
RECIPE_KEYS = (
    "max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
    "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio", "weight_decay", "adam_beta1", "adam_beta2", "max_grad_norm",
    "optim", "bf16", "fp16", "torch_compile", "seed", "beta", "loss_type", "max_length", "assistant_only_loss",
)
# DPO/SFT metrics TRL logs, reported for finetuning runs (with their eval_ twins when present).
FINETUNE_METRICS = (
    "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected",
    "mean_token_accuracy", "entropy", "num_tokens",
)
# lm-eval task name -> (Hub dataset id, pretty name, split) for the model-index when results JSON lacks task configs.
KNOWN_TASKS = {"hellaswag": ("Rowan/hellaswag", "HellaSwag", "validation")}
# edugpt's offline stand-in (edugpt/tasks/hellaswag_local.yaml): HellaSwag's scoring over a local jsonl file. Its
# numbers are never presented as HellaSwag's nor put in the model-index.
LOCAL_HELLASWAG_TASK = "hellaswag_local"


@dataclass
class ReportArguments:
    run_dir: str = field(metadata={"help": "Run directory (train_hf.py / finetune output_dir) to describe."})
    eval_dir: str | None = field(
        default=None, metadata={"help": "Folder or file with lm-eval results*.json; default: searched under run_dir."}
    )
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id used in the how-to-load snippets."})
    base_model: str | None = field(default=None, metadata={"help": "Base model of a finetune (default: run_config)."})
    license: str = field(default=DEFAULT_LICENSE, metadata={"help": "License id for the card's metadata."})


# ---------------------------------------------------------------------------------------------------------------------
# Reading the run directory. Every reader returns None / [] when its file is absent, so the card just omits a section.


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EduGPTError(f"{path} is not valid JSON ({err}); fix or delete it, then regenerate the card.") from None


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl records; a torn last line (a run killed mid-write) is skipped rather than fatal.

    Same rule as edugpt.callbacks.read_metrics, kept here so that writing a card never imports torch/transformers.
    """
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def checkpoint_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in run_dir.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    return sorted(found)


def read_log_history(run_dir: Path) -> list[dict]:
    """Trainer/TRL `log_history`: from the root trainer_state.json, else the newest checkpoint's (TRL finetunes)."""
    candidates = [run_dir / "trainer_state.json"] + [p / "trainer_state.json" for _, p in reversed(checkpoint_dirs(run_dir))]
    for path in candidates:
        state = _read_json(path)
        if isinstance(state, dict) and state.get("log_history"):
            return [r for r in state["log_history"] if isinstance(r, dict) and "step" in r]
    return []


def _evaluated_model(results: dict) -> str | None:
    """The model path/id an lm-eval results dict was scored on: eval_harness.py records it as config.model, the lm_eval
    CLI as `pretrained=...` in config.model_args (a string or a dict)."""
    config = results.get("config") or {}
    args = config.get("model_args")
    if isinstance(args, dict) and args.get("pretrained"):
        return str(args["pretrained"])
    if isinstance(args, str):
        match = re.search(r"(?:^|,)\s*pretrained=([^,]+)", args)
        if match:
            return match.group(1).strip()
    model = config.get("model")
    return model if isinstance(model, str) and model not in ("hf", "hf-auto", "huggingface") else None


def _same_model(reference: str, run_dir: Path) -> bool:
    """Does `reference` (as written at eval time, maybe relative to another working directory) name `run_dir`?"""
    ref = Path(reference)
    if ref.exists():
        return ref.resolve() == run_dir.resolve()
    tail = Path(os.path.normpath(reference)).parts
    return not ref.is_absolute() and len(tail) >= 2 and run_dir.resolve().parts[-len(tail):] == tail


def find_lm_eval_results(run_dir: Path, eval_dir: Path | None = None) -> dict | None:
    """The newest lm-eval results JSON (`results*.json` holding a "results" mapping) for this run's final model.

    With `eval_dir` (a folder or a file) that is where results are read. Otherwise: under run_dir (lm-eval writes
    `OUTPUT/<model name>/results_<timestamp>.json`, so a few folders deep; checkpoint-N folders skipped), and in the
    run's sibling folders (`runs/demo/eval` next to `runs/demo/pretrain`, as eval_harness.py is used in the demo) —
    a sibling's file counts only when it names this run directory as the model it scored, and no file that names
    another model (a checkpoint, the SFT model) is taken for this one.
    """
    if eval_dir is not None:
        if not eval_dir.exists():
            raise EduGPTError(f"eval results folder {eval_dir} does not exist; pass the --output_dir of eval_harness.py "
                              "(or lm_eval's --output_path).")
        candidates = [(eval_dir, False)] if eval_dir.is_file() else [(p, False) for p in eval_dir.rglob("results*.json")]
    else:
        candidates = [(p, False) for p in run_dir.rglob("results*.json")
                      if len(p.relative_to(run_dir).parts) <= 4
                      and not any(part.startswith("checkpoint-") for part in p.relative_to(run_dir).parts[:-1])]
        for sibling in run_dir.resolve().parent.iterdir():
            if sibling.is_dir() and sibling != run_dir.resolve():
                candidates += [(p, True) for p in sibling.rglob("results*.json")
                               if len(p.relative_to(sibling).parts) <= 3]
    best = None
    for path, must_match in sorted(candidates, key=lambda c: c[0].stat().st_mtime):
        try:
            data = _read_json(path)
        except EduGPTError:
            if eval_dir is not None:
                raise
            continue  # an unrelated broken file somewhere near the run is not this card's problem
        if not (isinstance(data, dict) and isinstance(data.get("results"), dict) and data["results"]):
            continue
        reference = _evaluated_model(data) if eval_dir is None else None
        if reference is not None and not _same_model(reference, run_dir):
            continue
        if reference is None and must_match:
            continue
        best = {**data, "_path": path}
    return best


def _safetensors_shapes(path: Path) -> dict[str, list[int]] | None:
    """Tensor name -> shape from a safetensors header (8-byte little-endian length, then JSON); None if the file is
    missing or truncated. Reading the header directly keeps torch out of card writing."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
        if 8 + length + end != path.stat().st_size:
            return None
        return {k: v["shape"] for k, v in tensors.items()}
    except (OSError, struct.error, ValueError, KeyError, TypeError):
        return None


def read_parameter_counts(model_dir: Path) -> dict | None:
    """Total and non-embedding parameters from the safetensors headers (no weights are loaded); None if unreadable.

    Tied lm_head weights are stored once, so the sum equals `sum(p.numel() for p in model.parameters())`.
    """
    index = _read_json(model_dir / "model.safetensors.index.json")
    names = sorted(set(index["weight_map"].values())) if index else ["model.safetensors"]
    total = embedding = 0
    for name in names:
        shapes = _safetensors_shapes(model_dir / name)
        if shapes is None:
            return None
        for key, shape in shapes.items():
            numel = math.prod(shape)
            total += numel
            # Kaplan et al. count "non-embedding" parameters: everything but token and position embeddings.
            if key.endswith(("wte.weight", "wpe.weight")):
                embedding += numel
    return {"total": total, "non_embedding": total - embedding}


@dataclass
class RunFacts:
    """Everything the card says, gathered from one run directory."""

    run_dir: Path
    kind: str  # "pretrain", "sft" or "dpo"
    config: dict | None
    params: dict | None
    run_config: dict | None
    manifest: dict | None
    records: list[dict]
    samples_md: str | None
    images: list[Path]
    lm_eval: dict | None
    base_model: str | None


def _detect_kind(run_config: dict | None, records: list[dict], from_trainer_state: bool) -> str:
    if any(key.startswith("rewards/") or key.startswith("eval_rewards/") for r in records for key in r):
        return "dpo"
    training = (run_config or {}).get("training", {}) or {}
    if "beta" in training and "loss_type" in training:
        return "dpo"
    if from_trainer_state or "assistant_only_loss" in training or "completion_only_loss" in training:
        return "sft"
    return "pretrain"


def _config_value(run_config: dict | None, *keys: str) -> str | None:
    """The first non-empty string under any of `keys`, at the top of run_config.json or in one of its sections."""
    if not run_config:
        return None
    sections = [run_config] + [v for v in run_config.values() if isinstance(v, dict)]
    for key in keys:
        for section in sections:
            if isinstance(section.get(key), str) and section[key]:
                return section[key]
    return None


def _find_base_model(run_config: dict | None) -> str | None:
    return _config_value(run_config, "base_model", "model_name_or_path")


def collect_run_facts(run_dir: str | os.PathLike, eval_dir: str | os.PathLike | None = None,
                      base_model: str | None = None) -> RunFacts:
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "config.json")
    if not isinstance(config, dict):
        raise EduGPTError(
            f"{run_dir} holds no saved model (config.json); pass a finished run directory or one of its checkpoint-N "
            "folders."
        )
    run_config = _read_json(run_dir / "run_config.json")
    records = read_metrics(run_dir)
    from_trainer_state = False
    if not records:
        records = read_log_history(run_dir)
        from_trainer_state = bool(records)
    samples_path = run_dir / "samples.md"
    images_dir = run_dir / "images"
    return RunFacts(
        run_dir=run_dir,
        kind=_detect_kind(run_config, records, from_trainer_state),
        config=config,
        params=read_parameter_counts(run_dir),
        run_config=run_config,
        manifest=_read_json(run_dir / "data_manifest.json"),
        records=records,
        samples_md=samples_path.read_text(encoding="utf-8").strip() if samples_path.is_file() else None,
        images=sorted(images_dir.glob("*.png")) if images_dir.is_dir() else [],
        lm_eval=find_lm_eval_results(run_dir, Path(eval_dir) if eval_dir else None),
        base_model=base_model or _find_base_model(run_config),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Formatting helpers.


def human(n: float | int | None) -> str:
    """1234567 -> '1.23M' (token and parameter counts)."""
    if n is None:
        return "—"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def _num(value: Any, digits: int = 4, commas: bool = True) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) >= 100:
        value = int(value)  # counts logged as floats (TRL's num_tokens)
    if isinstance(value, int):
        return f"{value:,}" if commas else str(value)
    return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.{digits}f}"


def _plain(value: Any) -> str:
    """An argument as a recipe would spell it: 0.003 not 0.0030, 1337 not 1,337, dicts/lists as JSON."""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:.6g}"
    return str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _thin(rows: list, limit: int = MAX_TABLE_ROWS) -> tuple[list, bool]:
    if len(rows) <= limit:
        return rows, False
    picks = sorted({round(i * (len(rows) - 1) / (limit - 1)) for i in range(limit)})
    return [rows[i] for i in picks], True


def _last(records: list[dict], key: str) -> dict | None:
    for record in reversed(records):
        if isinstance(record.get(key), (int, float)):
            return record
    return None


def _final_tokens(records: list[dict]) -> dict | None:
    """The record with the most tokens seen (records are not strictly ordered: samples at step 0 may come last)."""
    with_tokens = [r for r in records if isinstance(r.get("tokens"), (int, float)) and r["tokens"] > 0]
    return max(with_tokens, key=lambda r: (r["tokens"], r["step"])) if with_tokens else None


def _is_hub_id(name: str | None) -> bool:
    """A Hub repo id ('owner/name'), not a local path: only those belong in `datasets:` / `base_model:` metadata."""
    return (bool(name) and re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not Path(name).exists()
            and Path(name).suffix not in (".json", ".jsonl", ".parquet", ".csv", ".txt"))


def _in_loop_source(facts: RunFacts) -> str:
    """Which items the in-loop HellaSwag records scored, from run_config's script/data arguments."""
    sections = [v for v in (facts.run_config or {}).values() if isinstance(v, dict)]
    hellaswag_file = next((s["hellaswag_file"] for s in sections if s.get("hellaswag_file")), None)
    limit = next((s["hellaswag_limit"] for s in sections if s.get("hellaswag_limit")), None)
    where = (f"the local file `{hellaswag_file}` in HellaSwag's format (not HellaSwag's validation set)"
             if hellaswag_file else "HellaSwag's validation set")
    return where + (f", first {limit:,} items" if limit else "")


def _lm_eval_rows(lm_eval: dict) -> list[dict]:
    """One row per (task, metric) for acc-like metrics: {'task', 'metric', 'value', 'stderr', 'n_shot', 'limit'}."""
    rows = []
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
            rows.append({"task": task, "metric": name, "value": value, "stderr": stderr, "n_shot": n_shot,
                         "samples": samples, "limit": limit})
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Card sections. Each returns Markdown or "" when its inputs are absent.


def _summary(facts: RunFacts, title: str) -> str:
    c = facts.config
    arch = f"{c.get('n_layer')} layers, {c.get('n_head')} heads, d_model {c.get('n_embd')}" if "n_layer" in c else c.get("model_type", "?")
    size = f"{human(facts.params['total'])}-parameter " if facts.params else ""
    what = {
        "pretrain": "pretrained from scratch",
        "sft": "supervised-finetuned (SFT with TRL)",
        "dpo": "preference-tuned (DPO with TRL)",
    }[facts.kind]
    dataset = f" on {_dataset_phrase(facts.manifest)}" if facts.manifest else ""
    base = f", starting from `{facts.base_model}`" if facts.base_model and facts.kind != "pretrain" else ""
    tokens = _final_tokens(facts.records)
    seen = f", {human(tokens['tokens'])} tokens seen" if tokens else ""
    return (
        f"# {title}\n\n"
        f"A {size}GPT-2-architecture causal language model ({arch}) {what}{dataset}{base}{seen}, with the "
        f"GPT-2 tokenizer. Built with edugpt on the Hugging Face stack (transformers Trainer"
        f"{', TRL' if facts.kind != 'pretrain' else ''}). It is an experiment for learning, not a state-of-the-art model."
    )


def _dataset_phrase(manifest: dict) -> str:
    source = manifest.get("source") or {}
    name = source.get("dataset", "?")
    if name == "embedded":  # prepare_data.py --dataset embedded (edugpt/corpus.py)
        return "edugpt's embedded offline corpus (Python documentation in FineWeb-Edu's schema, a smoke-test corpus)"
    return f"`{name}`" + (f" ({source['subset']})" if source.get("subset") else "")


def _results(facts: RunFacts, lm_rows: list[dict]) -> str:
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
    tokens = _final_tokens(facts.records)
    if tokens:
        rows.append(["Tokens seen", f"{tokens['tokens']:,} ({human(tokens['tokens'])})"])
    speeds = sorted(r["tokens_per_second"] for r in facts.records if isinstance(r.get("tokens_per_second"), (int, float)))
    if speeds:
        rows.append(["Throughput (median)", f"{human(speeds[len(speeds) // 2])} tokens/s"])
    mfus = sorted(r["mfu"] for r in facts.records if isinstance(r.get("mfu"), (int, float)))
    if mfus:  # a fraction of the accelerator's peak FLOP/s (edugpt.callbacks.ThroughputCallback)
        rows.append(["MFU (median)", f"{mfus[len(mfus) // 2]:.1%}"])
    in_loop = _last(facts.records, "hellaswag/acc_norm")
    if in_loop:
        local = "local file, " if "local file" in _in_loop_source(facts) else ""
        rows.append([f"HellaSwag acc_norm, in-loop ({local}step {in_loop['step']:,})",
                     _num(in_loop["hellaswag/acc_norm"])])
    for row in lm_rows:
        if row["task"] in ("hellaswag", LOCAL_HELLASWAG_TASK) and row["metric"] in ("acc", "acc_norm"):
            name = "HellaSwag" if row["task"] == "hellaswag" else "HellaSwag-format local file"
            rows.append([f"{name} {row['metric']}, lm-eval {row['n_shot']}-shot", _num(row["value"])])
    for key in ("rewards/accuracies", "rewards/margins", "mean_token_accuracy"):
        for prefix in ("", "eval_"):
            record = _last(facts.records, prefix + key)
            if record:
                label = "eval " if prefix else "train "
                rows.append([f"{label}{key} (step {record['step']:,})", _num(record[prefix + key])])
    if not rows:
        return ""
    out = ["## Results", "", _table(["", "value"], rows)]
    loss_plot = facts.run_dir / "images" / "train-loss.png"
    if loss_plot in facts.images:
        out += ["", "![Training and validation loss by step](images/train-loss.png)"]
    out += ["", _loss_table(facts.records)]
    return "\n".join(out).rstrip()


def _loss_table(records: list[dict]) -> str:
    evals = [r for r in records if isinstance(r.get("eval_loss"), (int, float))]
    if not evals:
        return ""
    rows = []
    for record in evals:
        train = next((r for r in reversed(records) if isinstance(r.get("loss"), (int, float)) and r["step"] <= record["step"]), None)
        rows.append([f"{record['step']:,}", human(record.get("tokens")), _num(train["loss"]) if train else "—",
                     _num(record["eval_loss"])])
    rows, thinned = _thin(rows)
    note = " (evenly thinned; every evaluation is in metrics.jsonl)" if thinned else ""
    return f"Loss by step{note}:\n\n" + _table(["Step", "Tokens", "Train loss", "Validation loss"], rows)


def _hellaswag(facts: RunFacts, lm_rows: list[dict]) -> str:
    in_loop = [r for r in facts.records if isinstance(r.get("hellaswag/acc_norm"), (int, float))
               or isinstance(r.get("hellaswag/acc"), (int, float))]
    plot = facts.run_dir / "images" / "hellaswag.png"
    if not in_loop and not lm_rows and plot not in facts.images:
        return ""
    out = ["## Evaluation", "",
           "Zero-shot, 4-way multiple choice: chance is 0.25; OpenAI's GPT-2 small (124M) scores about 0.31 acc_norm "
           "(0.29 acc) on lm-eval's `hellaswag` task. `acc_norm` normalises each ending's log-likelihood by its "
           "length in bytes."]
    if in_loop:
        rows = [[f"{r['step']:,}", human(r.get("tokens")), _num(r.get("hellaswag/acc", "—")),
                 _num(r.get("hellaswag/acc_norm", "—"))] for r in in_loop]
        rows, thinned = _thin(rows)
        note = ", evenly thinned" if thinned else ""
        out += ["", f"During training, on {_in_loop_source(facts)} (scored in-loop by lm-eval's own `hellaswag` task "
                f"code{note}):", "",
                _table(["Step", "Tokens", "acc", "acc_norm"], rows)]
    if plot in facts.images:
        out += ["", "![HellaSwag accuracy by step](images/hellaswag.png)"]
    if lm_rows:
        version = facts.lm_eval.get("lm_eval_version")
        source = f"lm-evaluation-harness{' ' + version if version else ''}"
        model = _evaluated_model(facts.lm_eval)
        limit = lm_rows[0]["limit"]
        scope = (f" on `{model}`" if model else "") + (f", first {limit} items per task" if limit else "")
        out += ["", f"Final model, {source}{scope}:", "",
                _table(["Task", "n-shot", "Metric", "Value", "± stderr", "Examples"],
                       [[r["task"], r["n_shot"], r["metric"], _num(r["value"]),
                         _num(r["stderr"]) if isinstance(r["stderr"], (int, float)) else "—",
                         r["samples"] if r["samples"] is not None else "all"] for r in lm_rows])]
        local = (facts.lm_eval.get("configs") or {}).get(LOCAL_HELLASWAG_TASK)
        if local is not None:
            path = (local.get("dataset_kwargs") or {}).get("hellaswag_file") or local.get("dataset_path")
            out += ["", f"`{LOCAL_HELLASWAG_TASK}` is lm-eval's HellaSwag task over a local file in HellaSwag's format "
                    f"(`{path}`), not HellaSwag itself; its scores are left out of the model-index."]
    return "\n".join(out)


def _samples(facts: RunFacts) -> str:
    if facts.samples_md:
        table = facts.samples_md
    else:
        samples = [r for r in facts.records if isinstance(r.get("sample/text"), str)]
        if not samples:
            return ""
        table = _table(["Step", "Output"], [[f"{r['step']:,}", r["sample/text"]] for r in samples])
    prompts = sorted({r["sample/prompt"] for r in facts.records if isinstance(r.get("sample/prompt"), str)})
    prompt_note = f" Prompt{'s' if len(prompts) > 1 else ''}: {', '.join(repr(p) for p in prompts)}." if prompts else ""
    return f"## Samples by step\n\nWhat the model wrote from the same prompt as training went on.{prompt_note}\n\n{table}"


def _finetune(facts: RunFacts) -> str:
    if facts.kind == "pretrain":
        return ""
    rows = []
    for key in ("loss", "eval_loss") + FINETUNE_METRICS + tuple("eval_" + k for k in FINETUNE_METRICS):
        record = _last(facts.records, key)
        if record:
            rows.append([key, f"{record['step']:,}", _num(record[key])])
    method = "Direct Preference Optimization (DPO)" if facts.kind == "dpo" else "Supervised finetuning (SFT)"
    base = f"`{facts.base_model}`" if facts.base_model else "not recorded in run_config.json"
    out = ["## Finetuning", "", f"- Method: {method}, TRL's trainer", f"- Base model: {base}"]
    dataset = _config_value(facts.run_config, "dataset_name")
    if dataset:
        out.append(f"- Data: `{dataset}`" + (f" (split `{split}`)" if (split := _config_value(facts.run_config, "dataset_train_split")) else ""))
    if rows:
        out += ["", "Final logged values:", "", _table(["metric", "step", "value"], rows)]
    return "\n".join(out)


def _model(facts: RunFacts) -> str:
    c = facts.config
    rows = [[label, _num(c[key])] for label, key in (
        ("Layers", "n_layer"), ("Attention heads", "n_head"), ("Model width (n_embd)", "n_embd"),
        ("Context length (n_positions)", "n_positions"), ("Vocabulary", "vocab_size"),
        ("Activation", "activation_function"), ("Tied input/output embeddings", "tie_word_embeddings"),
        ("Weights dtype", "dtype"),
    ) if key in c]
    if facts.params:
        rows.insert(0, ["Parameters", f"{facts.params['total']:,} ({human(facts.params['total'])})"])
        rows.insert(1, ["Non-embedding parameters", f"{facts.params['non_embedding']:,} ({human(facts.params['non_embedding'])})"])
    architectures = ", ".join(c.get("architectures") or [c.get("model_type", "?")])
    return f"## Model\n\n`{architectures}` (transformers), GPT-2 tokenizer (50,257 tokens, `<|endoftext|>` = 50256).\n\n" + _table(["", ""], rows)


def _redact(value: Any) -> Any:
    """Blank every *token* value (hub_token...), as TrainingArguments.to_dict does, in case a run_config holds one."""
    if isinstance(value, dict):
        return {k: f"<{k.upper()}>" if k.lower().endswith("token") and isinstance(v, str) and v and not v.startswith("<")
                else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _recipe(facts: RunFacts) -> str:
    if not facts.run_config:
        return ""
    training = facts.run_config.get("training") or {}
    rows = [[key, _plain(training[key])] for key in RECIPE_KEYS if training.get(key) not in (None, "", [])]
    if training.get("max_steps", -1) > 0:
        rows = [r for r in rows if r[0] != "num_train_epochs"]
    for section in ("model", "data"):
        values = facts.run_config.get(section)
        if isinstance(values, dict):
            rows += [[f"{section}.{k}", _plain(v)] for k, v in values.items() if v not in (None, "", [])]
    tokens = _final_tokens(facts.records)
    if tokens and tokens["step"]:
        rows.append(["tokens per optimizer step (measured)", f"{round(tokens['tokens'] / tokens['step']):,}"])
    full = json.dumps(_redact(facts.run_config), indent=2, sort_keys=True)
    return (
        "## Training recipe\n\nFrom `run_config.json`, the arguments the run actually used:\n\n"
        + _table(["argument", "value"], rows)
        + f"\n\n<details><summary>Full run_config.json</summary>\n\n```json\n{full}\n```\n\n</details>"
    )


def _data(facts: RunFacts) -> str:
    m = facts.manifest
    if not m:
        return ""
    source = m.get("source", {})
    lines = ["## Data", ""]
    lines.append(f"- Source: {_dataset_phrase(m)}"
                 + (f", first {source['max_docs']:,} documents" if source.get("max_docs") else ""))
    tokenizer = m.get("tokenizer", {})
    if tokenizer:
        lines.append(f"- Tokenizer: {tokenizer.get('name')} (vocab {tokenizer.get('vocab_size')}); every document ends "
                     f"with `<|endoftext|>` ({tokenizer.get('eos_token_id')}), then each split is packed into "
                     f"{m.get('seq_len')}-token blocks")
    rule = m.get("split_rule", {})
    if rule:
        lines.append(f"- Split rule, per document id: `{rule.get('description') or rule}`"
                     + (f" with salt {rule.get('salt')!r} and val_fraction {rule.get('val_fraction')}"
                        if "salt" in rule else ""))
        lines.append("- No document appears in both splits: the split is decided per document, before packing.")
    splits = m.get("splits") or {}
    if splits:
        rows = [[name, _num(s.get("documents", "—")), _num(s.get("tokens", "—")), human(s.get("tokens")),
                 _num(s.get("blocks", "—"))] for name, s in splits.items()]
        lines += ["", _table(["Split", "Documents", "Tokens", "≈", "Blocks"], rows)]
    return "\n".join(lines)


def _other_images(facts: RunFacts) -> str:
    known = {"train-loss.png", "hellaswag.png"}
    extra = [p for p in facts.images if p.name not in known]
    if not extra:
        return ""
    return "## More plots\n\n" + "\n\n".join(f"![{p.stem}](images/{p.name})" for p in extra)


def _usage(facts: RunFacts, repo: str, revision: str | None) -> str:
    rev = f', revision="{revision}"' if revision else ""
    rev_arg = f",revision={revision}" if revision else ""
    prompt = "Once upon a time"
    # Results written under a local run's eval/ folder are found by the next `python -m edugpt.report RUN_DIR`.
    eval_out = f"{repo}/eval" if Path(repo).exists() else "eval"
    chat = facts.kind != "pretrain" and (facts.run_dir / "chat_template.jinja").is_file()
    generate = (
        'messages = [{"role": "user", "content": "What is photosynthesis?"}]\n'
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)\n"
        if chat else f'inputs = tokenizer("{prompt}", return_tensors="pt")\n'
    )
    return f"""## How to use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{repo}"{rev})
tokenizer = AutoTokenizer.from_pretrained("{repo}"{rev})
{generate}out = model.generate(**inputs, max_new_tokens=64, do_sample=True, top_k=50, pad_token_id=tokenizer.eos_token_id)
print(tokenizer.decode(out[0], skip_special_tokens=True))
```

Evaluate on HellaSwag with the project's wrapper or with lm-evaluation-harness directly:

```sh
python eval_harness.py --model {repo} --tasks hellaswag --batch_size auto --output_dir {eval_out}
lm_eval --model hf --model_args pretrained={repo}{rev_arg} --tasks hellaswag --batch_size 16 --output_path {eval_out}
```

Offline, `--hellaswag_file edugpt/assets/eval/python_docs_hellaswag_format_smoke.jsonl` runs HellaSwag's scoring on a
smoke file (not HellaSwag). Regenerate this card from the run directory, offline, with
`python -m edugpt.report RUN_DIR` (results in RUN_DIR/eval or a sibling folder are picked up)."""


def _metadata(facts: RunFacts, title: str, lm_rows: list[dict], license: str):
    from huggingface_hub import EvalResult, ModelCardData

    tags = ["gpt2", "edugpt", "causal-lm", {"pretrain": "pretraining", "sft": "sft", "dpo": "dpo"}[facts.kind]]
    if facts.kind != "pretrain":
        tags.append("trl")
    datasets = None
    finetune_dataset = _config_value(facts.run_config, "dataset_name") if facts.kind != "pretrain" else None
    if _is_hub_id(finetune_dataset):
        datasets = [finetune_dataset]
    elif facts.manifest:
        dataset = (facts.manifest.get("source") or {}).get("dataset")
        if _is_hub_id(dataset):
            datasets = [dataset]
        if dataset and "fineweb-edu" in dataset.lower():
            tags.append("fineweb-edu")
    eval_results = []
    configs = (facts.lm_eval or {}).get("configs") or {}
    for row in lm_rows:
        task_config = configs.get(row["task"]) or {}
        known = KNOWN_TASKS.get(row["task"], (None, row["task"], None))
        dataset_type = task_config.get("dataset_path") or known[0]
        if row["task"] == LOCAL_HELLASWAG_TASK or not _is_hub_id(dataset_type):
            continue  # a local file is not a Hub dataset: the scores stay in the card's body only
        shots = f"{row['n_shot']}-shot" + (f", {row['samples']} examples" if row["limit"] and row["samples"] else "")
        eval_results.append(EvalResult(
            task_type="text-generation", task_name="Text Generation",
            dataset_type=dataset_type, dataset_name=known[1] if row["task"] in KNOWN_TASKS else row["task"],
            dataset_config=task_config.get("dataset_name") or None,
            dataset_split=task_config.get("validation_split") or task_config.get("test_split") or known[2],
            metric_type=row["metric"], metric_value=round(float(row["value"]), 4),
            metric_name=f"{row['metric']} ({shots})",
        ))
    return ModelCardData(
        language=["en"],
        license=license,
        library_name="transformers",
        pipeline_tag="text-generation",
        datasets=datasets,
        base_model=facts.base_model if facts.kind != "pretrain" and _is_hub_id(facts.base_model) else None,
        tags=tags,
        model_name=title if eval_results else None,  # only used as the model-index's name
        eval_results=eval_results or None,
    )


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
    lm_rows = _lm_eval_rows(facts.lm_eval) if facts.lm_eval else []
    sections = [_summary(facts, title)]
    if revision:
        step = revision.removeprefix("step-")
        sections.append(f"> This is revision `{revision}`: the checkpoint saved after {step} optimizer steps. The "
                        "metrics, plots and samples below describe the whole run; the final model is on `main`.")
    sections += [_results(facts, lm_rows), _hellaswag(facts, lm_rows), _samples(facts), _finetune(facts),
                 _model(facts), _recipe(facts), _data(facts), _other_images(facts),
                 _usage(facts, hub_model_id or str(facts.run_dir), revision)]
    body = "\n\n".join(s for s in sections if s) + "\n"
    # A step-N branch's card keeps the final model's lm-eval scores in its body but not in its model-index, which
    # would attribute them to that checkpoint.
    metadata = _metadata(facts, title, [] if revision else lm_rows, license)
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{body}")


def write_model_card(run_dir: str | os.PathLike, *, eval_dir: str | os.PathLike | None = None,
                     hub_model_id: str | None = None, base_model: str | None = None,
                     license: str = DEFAULT_LICENSE) -> Path:
    """Write `RUN_DIR/README.md` (atomically: a reader never sees half a card) and return its path."""
    card = build_model_card(run_dir, eval_dir=eval_dir, hub_model_id=hub_model_id, base_model=base_model,
                            license=license)
    target = Path(run_dir) / CARD_NAME
    fd, tmp = tempfile.mkstemp(prefix=".README.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(str(card))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def main(argv: list[str] | None = None) -> None:
    import sys

    from edugpt.cli import parse_config

    args = list(sys.argv[1:] if argv is None else argv)
    # RUN_DIR may come first without its flag: `python -m edugpt.report runs/demo`.
    if args and not args[0].startswith("-"):
        args = ["--run_dir", *args]
    (options,) = parse_config([ReportArguments], args)
    path = write_model_card(options.run_dir, eval_dir=options.eval_dir, hub_model_id=options.hub_model_id,
                            base_model=options.base_model, license=options.license)
    print(f"model card written: {path}")


if __name__ == "__main__":
    from edugpt.cli import run

    run(main)
