"""The one answer to "is this a saved model?": `is_saved_model` (a config plus weights: is there a model here at all)
and `require_saved_model` (whole enough to load: every JSON file parses, a causal LM config, weights, tokenizer files;
one error line naming what is wrong otherwise). Every entry point that takes a model folder, the run directory, the
page and the card ask here."""

from __future__ import annotations

import os
from pathlib import Path

from edugpt.errors import EduGPTError

# What a saved model needs to load: a config plus one of these weight files.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def is_saved_model(folder: str | os.PathLike) -> bool:
    """Does `folder` hold a saved HF model (config.json plus weights)? Says nothing about whether the files are whole:
    require_saved_model and edugpt.run.checkpoints.checkpoint_problem do."""
    folder = Path(folder)
    return (folder / "config.json").is_file() and any((folder / name).is_file() for name in WEIGHT_FILES)


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
# The JSON files of a saved model and tokenizer that transformers parses on load: each must be a whole JSON object.
MODEL_JSON_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
                    "tokenizer_config.json", "special_tokens_map.json", "vocab.json")


def require_saved_model(folder: Path, name: str, fix: str) -> None:
    """Raise unless `folder` holds a whole saved causal LM: a config.json that parses as one, weights whose
    safetensors headers cover their files exactly, tokenizer files, and every JSON file of it whole. A truncated copy
    fails here, before a run writes anything, instead of inside transformers after it has begun. Reads the weights'
    headers only: milliseconds, also for a GB. `fix` ends the message: what to pass instead."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


    if not (folder / "config.json").is_file():
        raise EduGPTError(f"{name!r} has no config.json, so it is not a saved model; {fix}")
    saved = {file: _json_object(folder / file, fix) for file in MODEL_JSON_FILES if (folder / file).is_file()}
    if "model_type" not in saved["config.json"]:
        raise EduGPTError(f"{str(folder / 'config.json')!r} has no model_type, so it is no transformers model "
                          f"config; {fix}")
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as err:  # e.g. a field of the wrong type
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise EduGPTError(f"{str(folder / 'config.json')!r} could not be read ({reason}); {fix}") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise EduGPTError(f"{name!r} holds a {config.model_type!r} model, not a causal language model such as our "
                          f"GPT-2 checkpoints; {fix}")
    if not any((folder / weights).is_file() for weights in WEIGHT_FILES):
        raise EduGPTError(f"{name!r} has a config.json but no weights ({WEIGHT_FILES[0]}), so the save did not "
                          f"finish; {fix}")
    if not any((folder / tokenizer).is_file() for tokenizer in TOKENIZER_FILES):
        raise EduGPTError(f"{name!r} has no tokenizer files; save the tokenizer with the model (train_hf.py does), or "
                          f"{fix}")
    template = folder / "chat_template.jinja"
    if template.is_file():
        try:
            template.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise EduGPTError(f"{template} is not UTF-8 text ({err.reason} at byte {err.start}); save the tokenizer "
                              "with its chat template again (finetune/sft.py does).") from None
    weight_map = saved.get("model.safetensors.index.json", {}).get("weight_map", {})
    shards = sorted(folder.glob("*.safetensors"))
    shards += [folder / str(shard) for shard in sorted(set(weight_map.values()))] if isinstance(weight_map, dict) else []
    for weights in dict.fromkeys(shards):
        if not weights.is_file():
            raise EduGPTError(f"{weights} is missing (model.safetensors.index.json lists it); copy or save the model "
                              "again.")
        if problem := weights_problem(weights):
            raise EduGPTError(f"{weights} is damaged ({problem}), e.g. truncated by an interrupted copy; copy or save "
                              "the model again.")


def _json_object(path: Path, fix: str) -> dict:
    import json

    try:
        content = json.loads(path.read_bytes())
    except ValueError as err:  # UnicodeDecodeError is one too
        raise EduGPTError(f"{str(path)!r} is not valid JSON ({err}), e.g. cut short by an interrupted copy; "
                          f"{fix}") from None
    if not isinstance(content, dict):
        raise EduGPTError(f"{str(path)!r} holds a JSON {type(content).__name__}, not the object transformers saves; "
                          f"{fix}")
    return content


def weights_problem(path: Path) -> str | None:
    """Why `path` is not a whole safetensors file, or None (its header parses and covers the file exactly)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np"):
            return None
    except (SafetensorError, OSError) as err:
        return str(err).splitlines()[0] if str(err) else type(err).__name__
