"""The model card (`README.md`) of a run directory: its facts and rows, laid out by `templates/model_card.md.jinja`.

Regenerate it for any run directory (pretraining, SFT or DPO output), offline, in about a second:

    python -m edugpt.report.card runs/demo
    python -m edugpt.report.card runs/demo --eval_dir runs/demo/eval --hub_model_id you/edugpt-270m

Training scripts call `write_model_card(output_dir)` at the end. Inputs, all optional except the saved model's
`config.json`, are the run directory's files (edugpt.run.rundir: run_config.json, data_manifest.json, metrics.jsonl or
Trainer's log history, samples.md, images/*.png) and lm-eval results (`results*.json` under the run directory, beside
it, or in `--eval_dir`). A section whose input is missing is left out.

The run's facts are edugpt.report.facts, the table rows edugpt.report.rows (numbers formatted by
edugpt.report.numbers); this module puts them together: the YAML metadata and the variables of the template, which
holds the prose and the section layout, rendered with huggingface_hub's `ModelCard.from_template`. The YAML
header carries license, library_name, pipeline_tag, language, datasets, tags, base_model (finetunes) and a
`model-index` with the lm-eval scores of real Hub tasks, so the Hub shows them in the model page's evaluation widget.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edugpt.config.arguments import DEFAULT_LICENSE, CardArguments
from edugpt.errors import EduGPTError
from edugpt.eval.tasks import LOCAL_HELLASWAG_TASK
from edugpt.io.safefs import atomic_write_text
from edugpt.report.facts import RunFacts, collect_run_facts, is_hub_id, model_sentence
from edugpt.report.numbers import thin_rows
from edugpt.report.rows import (
    architecture,
    data_facts,
    finetune_rows,
    framework_versions,
    in_loop_hellaswag_rows,
    in_loop_source,
    lm_eval_rows,
    lm_eval_scores,
    lm_eval_source,
    local_hellaswag_file,
    loss_rows,
    model_rows,
    recipe_rows,
    redact,
    results_rows,
    sample_prompts,
    sample_rows,
)
from edugpt.run import rundir
from edugpt.run.record import RECORD, Record

TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "model_card.md.jinja"
# lm-eval task name -> (Hub dataset id, pretty name, split) for the model-index when results JSON lacks task configs.
KNOWN_TASKS = {"hellaswag": ("Rowan/hellaswag", "HellaSwag", "validation")}
KNOWN_PLOTS = (rundir.LOSS_PLOT, rundir.HELLASWAG_PLOT)  # placed in their sections; other images go under "More plots"


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
    in_loop, in_loop_thinned = thin_rows(in_loop_hellaswag_rows(facts.records))
    losses, losses_thinned = thin_rows(loss_rows(facts.records))
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
