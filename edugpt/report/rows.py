"""The model card's table rows and the small facts its sections print, one function each, from a run's facts.

Rows are lists of display strings (edugpt.report.numbers formats them); the template draws the tables
(edugpt.report.card). The page's Run tab shows results_rows too (edugpt.app.runs).
"""

from __future__ import annotations

import math
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from edugpt.eval.tasks import LOCAL_HELLASWAG_TASK
from edugpt.report.facts import RunFacts, dataset_phrase
from edugpt.report.numbers import argument_text, final_tokens, human, last_record, median_value, number_text
from edugpt.run import rundir

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
# (label, distribution) listed under "Framework versions", as TRL's own cards list them; TRL only for finetunes.
FRAMEWORKS = (("edugpt", "edugpt"), ("TRL", "trl"), ("Transformers", "transformers"), ("Pytorch", "torch"),
              ("Datasets", "datasets"), ("Tokenizers", "tokenizers"))


def in_loop_source(facts: RunFacts) -> str:
    """Which items the in-loop HellaSwag records scored, from run_config's script/data arguments."""
    sections = [v for v in (facts.run_config or {}).values() if isinstance(v, dict)]
    hellaswag_file = next((s["hellaswag_file"] for s in sections if s.get("hellaswag_file")), None)
    limit = next((s["hellaswag_limit"] for s in sections if s.get("hellaswag_limit")), None)
    where = (f"the local file `{hellaswag_file}` in HellaSwag's format (not HellaSwag's validation set)"
             if hellaswag_file else "HellaSwag's validation set")
    return where + (f", first {number_text(limit)} items" if limit else "")


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
    train = last_record(facts.records, "loss")
    if train:
        rows.append([f"Final train loss (step {train['step']:,})", number_text(train["loss"])])
    val = last_record(facts.records, "eval_loss")
    if val:
        rows.append([f"Final validation loss (step {val['step']:,})", number_text(val["eval_loss"])])
        rows.append(["Final validation perplexity", number_text(math.exp(min(val["eval_loss"], 50)), 2)])
        evals = [r for r in facts.records if isinstance(r.get("eval_loss"), (int, float))]
        best = min(evals, key=lambda r: r["eval_loss"])
        if best is not val:
            rows.append([f"Best validation loss (step {best['step']:,})", number_text(best["eval_loss"])])
    tokens = final_tokens(facts.records)
    if tokens:
        rows.append(["Tokens seen", f"{tokens['tokens']:,} ({human(tokens['tokens'])})"])
    speed = median_value(facts.records, "tokens_per_second")
    if speed is not None:
        rows.append(["Throughput (median)", f"{human(speed)} tokens/s"])
    mfu = median_value(facts.records, "mfu")
    if mfu is not None:  # a fraction of the accelerator's peak FLOP/s (edugpt.train.callbacks.ThroughputCallback)
        rows.append(["MFU (median)", f"{mfu:.1%}"])
    in_loop = last_record(facts.records, "hellaswag/acc_norm")
    if in_loop:
        local = "local file, " if "local file" in in_loop_source(facts) else ""
        rows.append([f"HellaSwag acc_norm, in-loop ({local}step {in_loop['step']:,})",
                     number_text(in_loop["hellaswag/acc_norm"])])
    for score in scores:
        if score["task"] in ("hellaswag", LOCAL_HELLASWAG_TASK) and score["metric"] in ("acc", "acc_norm"):
            name = "HellaSwag" if score["task"] == "hellaswag" else "HellaSwag-format local file"
            rows.append([f"{name} {score['metric']}, lm-eval {score['n_shot']}-shot", number_text(score["value"])])
    for key in ("rewards/accuracies", "rewards/margins", "mean_token_accuracy"):
        for prefix in ("", "eval_"):
            record = last_record(facts.records, prefix + key)
            if record:
                label = "eval " if prefix else "train "
                rows.append([f"{label}{key} (step {record['step']:,})", number_text(record[prefix + key])])
    return rows


def loss_rows(records: list[dict]) -> list[list[str]]:
    """Step, tokens, train loss and validation loss at each evaluation."""
    rows = []
    for record in (r for r in records if isinstance(r.get("eval_loss"), (int, float))):
        train = next((r for r in reversed(records)
                      if isinstance(r.get("loss"), (int, float)) and r["step"] <= record["step"]), None)
        rows.append([f"{record['step']:,}", human(record.get("tokens")), number_text(train["loss"]) if train else "—",
                     number_text(record["eval_loss"])])
    return rows


def in_loop_hellaswag_rows(records: list[dict]) -> list[list[str]]:
    """Step, tokens, acc and acc_norm of each HellaSwag evaluation during training."""
    return [[f"{r['step']:,}", human(r.get("tokens")), number_text(r.get("hellaswag/acc", "—")),
             number_text(r.get("hellaswag/acc_norm", "—"))]
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
    return [[s["task"], s["n_shot"], s["metric"], number_text(s["value"]),
             number_text(s["stderr"]) if isinstance(s["stderr"], (int, float)) else "—",
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
        record = last_record(records, key)
        if record:
            rows.append([key, f"{record['step']:,}", number_text(record[key])])
    return rows


def architecture(config: dict) -> str:
    return ", ".join(config.get("architectures") or [config.get("model_type", "?")])


def model_rows(config: dict, params: dict | None) -> list[list[str]]:
    """Parameter counts (from the safetensors headers) and the GPT-2 config's shape."""
    rows = [[label, number_text(config[key])] for label, key in (
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
    rows = [[key, argument_text(training[key])] for key in RECIPE_KEYS if training.get(key) not in (None, "", [])]
    max_steps = training.get("max_steps")
    if isinstance(max_steps, (int, float)) and max_steps > 0:
        rows = [r for r in rows if r[0] != "num_train_epochs"]
    for section in ("model", "data"):
        values = run_config.get(section)
        if isinstance(values, dict):
            rows += [[f"{section}.{k}", argument_text(v)] for k, v in values.items() if v not in (None, "", [])]
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
        "max_docs": number_text(source["max_docs"]) if source.get("max_docs") else None,
        "tokenizer": {key: tokenizer.get(key) for key in ("name", "vocab_size", "eos_token_id")} if tokenizer else None,
        "seq_len": manifest.get("seq_len"),
        "split_rule": str(rule.get("description") or rule) if rule else None,
        "salt": repr(rule.get("salt")) if "salt" in rule else None,
        "val_fraction": rule.get("val_fraction"),
        "split_rows": [[name, number_text(s.get("documents", "—")), number_text(s.get("tokens", "—")),
                        human(s.get("tokens")), number_text(s.get("blocks", "—"))] for name, s in splits.items()],
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
