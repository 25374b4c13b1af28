"""The one dataset loader of finetune/sft.py and finetune/dpo.py (Hub id or local jsonl in, TRL's conversational
format out), and the staged output folder both scripts write.

`load_finetune_dataset(name, stage="sft"|"dpo", ...)` returns a `datasets.Dataset` holding only the columns the stage
trains on, in TRL's explicit conversational form:
- SFT: `messages` (list of {"role", "content"}), e.g. HuggingFaceTB/smol-smoltalk, HuggingFaceH4/ultrachat_200k.
- DPO: `prompt` (messages) + `chosen` / `rejected` (assistant messages), e.g. HuggingFaceH4/ultrafeedback_binarized.
Every other column is dropped on purpose: ultrachat_200k has a string `prompt` column next to `messages`, and TRL
treats any dataset with `prompt` as prompt-completion data.

Rows that cannot train are skipped and counted (logged as one warning): SFT conversations without a non-empty
assistant turn; preference pairs where chosen equals rejected or a prompt/chosen/rejected is empty (DPO would push
the same sequence up and down, or learn from nothing). A dataset where every row is skipped is an error.

"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.net import hub_available, hub_offline_requested, looks_like_hub_id, missing_local_path

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
# ShareGPT-style `conversations` rows ({"from": "human", "value": ...}) are renamed to these roles.
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
FORMATS = {
    "sft": "`messages` (a list of {\"role\", \"content\"} with at least one assistant turn), ShareGPT "
    "`conversations` ({\"from\", \"value\"}), or `prompt` + `completion` given as message lists",
    "dpo": "`prompt` + `chosen` + `rejected` (strings, or message lists with the reply as assistant messages), or "
    "`chosen` + `rejected` as full conversations sharing their first turns (the prompt is extracted)",
}
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def load_finetune_dataset(
    name: str | None,
    stage: str,
    config: str | None = None,
    split: str = "train",
    num_proc: int | None = None,
    streaming: bool = False,
):
    """Load `name` (local .jsonl/.json file, local dataset folder, or Hub id) and return it in the stage's format."""
    if stage not in FORMATS:
        raise ValueError(f"stage must be 'sft' or 'dpo', got {stage!r}")
    if not name:
        raise EduGPTError(
            f"no dataset given; set dataset_name to a Hub dataset or a local .jsonl file ({FORMATS[stage]})."
        )
    if streaming:
        raise EduGPTError("dataset_streaming is not supported: rows are checked and counted before training; drop it.")
    from datasets import Dataset

    raw = _load_raw(name, config, split)
    normalize = _with_skip_reason(_normalize_sft if stage == "sft" else _normalize_dpo, stage)
    features = _features(stage)  # explicit, so a first batch of skipped (empty) rows cannot fix the types
    if isinstance(raw, list):  # a local file: rows may mix formats (string vs message-list prompts), Arrow may not
        _require_columns(sorted({key for row in raw for key in row}), stage, name)
        mapped = Dataset.from_list([normalize(row) for row in raw], features=features)
    else:
        _require_columns(raw.column_names, stage, name)
        mapped = raw.map(
            normalize,
            remove_columns=raw.column_names,
            features=features,
            num_proc=num_proc,
            desc=f"Checking {stage.upper()} rows",
        )
    reasons = Counter(reason for reason in mapped["skip_reason"] if reason)
    kept = mapped.filter(lambda reason: not reason, input_columns="skip_reason", num_proc=num_proc)
    kept = kept.remove_columns("skip_reason")
    if reasons:
        detail = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
        skipped = sum(reasons.values())
        logger.warning("%s data %r: skipped %d of %d rows (%s).", stage.upper(), name, skipped, len(mapped), detail)
    if len(kept) == 0:
        raise EduGPTError(
            f"no usable rows in {name!r} ({dict(reasons) or 'the split is empty'}); a {stage.upper()} dataset needs "
            f"{FORMATS[stage]}."
        )
    logger.info("%s data %r split %r: %d rows.", stage.upper(), name, split, len(kept))
    return kept


def load_stage_splits(script_args, training_args, stage: str):
    """The train split, and the test split when the recipe evaluates, of `script_args.dataset_name` for `stage`.

    Rank 0 loads first (downloading and caching), then the other ranks read its cache.
    """

    def load(split):
        return load_finetune_dataset(
            script_args.dataset_name, stage, script_args.dataset_config, split,
            num_proc=training_args.dataset_num_proc, streaming=script_args.dataset_streaming,
        )

    with training_args.main_process_first(desc="loading the dataset"):
        train_dataset = load(script_args.dataset_train_split)
        eval_dataset = load(script_args.dataset_test_split) if training_args.eval_strategy != "no" else None
    return train_dataset, eval_dataset


def _load_raw(name: str, config: str | None, split: str):
    """A local .jsonl file as a list of row dicts; a dataset folder or Hub dataset as a `datasets.Dataset`."""
    from datasets import load_dataset, load_from_disk

    path = _local_path(name)
    if path is not None and path.is_file():
        if path.suffix not in (".jsonl", ".json"):
            raise EduGPTError(f"{name!r}: local datasets must be JSON lines files (.jsonl); got {path.suffix!r}.")
        if split != "train":
            raise EduGPTError(
                f"{name!r} is a single local file, which has no {split!r} split; set eval_strategy: no, or put the "
                "evaluation rows in a Hub dataset or a dataset folder with splits."
            )
        return _read_jsonl(path)
    if path is not None and path.is_dir():
        saved = (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()  # save_to_disk
        try:
            loaded = load_from_disk(str(path)) if saved else load_dataset(str(path), config)
        except Exception as err:
            raise EduGPTError(
                f"could not read the dataset folder {name!r} ({type(err).__name__}: {_first_line(err)})."
            ) from None
        if hasattr(loaded, "keys"):  # a DatasetDict
            if split not in loaded:
                raise EduGPTError(f"dataset folder {name!r} has no split {split!r}; its splits are {sorted(loaded)}.")
            return loaded[split]
        return loaded
    if not hub_available() and not hub_offline_requested():
        raise EduGPTError(
            f"{missing_local_path(name, 'dataset')}; go online, or use a local .jsonl file (configs/sft_smoke.yaml "
            "and configs/dpo_smoke.yaml ship one)."
        )
    try:
        # Offline (HF_HUB_OFFLINE=1) this reads the local datasets cache, if the dataset was downloaded before.
        return load_dataset(name, config, split=split)
    except Exception as err:
        where = "in the offline cache (HF_HUB_OFFLINE=1)" if not hub_available() else "on the Hub"
        raise EduGPTError(
            f"dataset {name!r} is no local file or folder (relative to {Path.cwd()}) and could not be loaded "
            f"(config {config!r}, split {split!r}) {where}: "
            f"{type(err).__name__}: {_first_line(err)}; check the name, or use a local .jsonl file."
        ) from None


def _local_path(name: str) -> Path | None:
    """The file or folder `name` points to, also relative to the repository (so recipes work from any directory)."""
    for candidate in (Path(name).expanduser(), PACKAGE_ROOT / name):
        if candidate.exists():
            return candidate
    if not looks_like_hub_id(name):
        raise EduGPTError(f"{missing_local_path(name, 'dataset')}; pass an existing .jsonl file or dataset folder, or "
                          "a Hub dataset id.")
    return None


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise EduGPTError(
                    f"{path}:{line_number} is not valid JSON ({err.msg}); write one JSON object per line."
                ) from None
            if not isinstance(row, dict):
                raise EduGPTError(
                    f"{path}:{line_number} is a JSON {type(row).__name__}, not an object; write one object per line."
                )
            rows.append(row)
    if not rows:
        raise EduGPTError(f"{path} holds no rows; write one JSON object per line.")
    return rows


def _require_columns(columns: list[str], stage: str, name: str) -> None:
    have = set(columns)
    if stage == "sft":
        if "messages" in have or "conversations" in have or {"prompt", "completion"} <= have:
            return
        half_of_prompt_completion = {"prompt", "completion"} & have
        missing = " and ".join(sorted({"prompt", "completion"} - have)) if half_of_prompt_completion else "messages"
    else:
        if {"chosen", "rejected"} <= have:
            return
        missing = " and ".join(c for c in ("chosen", "rejected") if c not in have)
    raise EduGPTError(
        f"dataset {name!r} lacks the column(s) {missing} that {stage.upper()} needs (it has: "
        f"{', '.join(sorted(have)) or 'none'}); accepted formats: {FORMATS[stage]}."
    )


COLUMNS = {"sft": ["messages"], "dpo": ["prompt", "chosen", "rejected"]}


def _features(stage: str):
    from datasets import Features, List, Value

    messages = List({"role": Value("string"), "content": Value("string")})
    return Features({**{column: messages for column in COLUMNS[stage]}, "skip_reason": Value("string")})


class _SkipRow(Exception):
    """A row that cannot be trained on; its message is the reason counted in the log."""


def _with_skip_reason(normalize, stage: str):
    def apply(row):
        try:
            return {**normalize(row), "skip_reason": ""}
        except _SkipRow as reason:
            return {**{column: [] for column in COLUMNS[stage]}, "skip_reason": str(reason)}

    return apply


def _messages(value, what: str) -> list[dict]:
    """Validate a list of messages; a bare string becomes one message of role `what`."""
    if isinstance(value, str):
        return [{"role": what, "content": value}]
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise _SkipRow("with malformed messages")
    messages = []
    for message in value:
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise _SkipRow(f"with a {role!r} role")
        if not isinstance(content, str):
            raise _SkipRow("with non-text message content")
        messages.append({"role": role, "content": content})
    return messages


def _normalize_sft(row: dict) -> dict:
    if row.get("messages") is not None:
        messages = _messages(row["messages"], "user")
    elif row.get("conversations") is not None:
        turns = row["conversations"]
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise _SkipRow("with malformed messages")
        renamed = [{"role": SHAREGPT_ROLES.get(t.get("from")), "content": t.get("value")} for t in turns]
        messages = _messages(renamed, "user")
    else:
        messages = _messages(row.get("prompt"), "user") + _messages(row.get("completion"), "assistant")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise _SkipRow("without a non-empty assistant turn")
    return {"messages": messages}


def _normalize_dpo(row: dict) -> dict:
    chosen, rejected, prompt = row.get("chosen"), row.get("rejected"), row.get("prompt")
    if isinstance(chosen, list) and isinstance(rejected, list) and (prompt is None or isinstance(prompt, str)):
        # Implicit prompt (HuggingFaceH4/ultrafeedback_binarized: `prompt` is a string and chosen/rejected are whole
        # conversations): the shared leading turns are the prompt.
        chosen, rejected = _messages(chosen, "assistant"), _messages(rejected, "assistant")
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if shared:
            prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        else:
            prompt = _messages(prompt or "", "user")
    else:
        prompt = _messages(prompt or "", "user")
        chosen, rejected = _messages(chosen, "assistant"), _messages(rejected, "assistant")
    if not any(m["content"].strip() for m in prompt):
        raise _SkipRow("with an empty prompt")
    for reply in (chosen, rejected):
        if not reply or reply[0]["role"] != "assistant":
            raise _SkipRow("whose chosen/rejected is not an assistant reply")
        if not all(m["content"].strip() for m in reply):
            raise _SkipRow("with an empty chosen or rejected reply")
    if chosen == rejected:
        raise _SkipRow("where chosen == rejected")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
