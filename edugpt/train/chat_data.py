"""The one dataset loader of finetune/sft.py and finetune/dpo.py: a dataset named the way TRL names it in, TRL's
conversational format out.

Named as TRL's own `trl sft` / `trl dpo` scripts name data, so a recipe runs unchanged under both:
- `dataset_name`: a Hub id or a local dataset folder (both read by `datasets.load_dataset`; a folder written by
  `save_to_disk` by `load_from_disk`), split `dataset_train_split` / `dataset_test_split`. A local `.jsonl` file is
  accepted too (`load_dataset("json")`; TRL's scripts do not take one).
- the `datasets:` mixture (TRL's `DatasetMixtureConfig`: path, name, data_dir, data_files, split, columns, fraction),
  loaded by TRL's own `get_dataset`. Its `test_split_size` is applied with the run's seed (TRL's split is unseeded, so a
  resumed run would evaluate, and train, on other rows).

`load_finetune_dataset(raw, stage="sft"|"dpo")` returns a `datasets.Dataset` holding only the columns the stage trains
on, in TRL's explicit conversational form:
- SFT: `messages` (list of {"role", "content"}), e.g. HuggingFaceTB/smol-smoltalk, HuggingFaceH4/ultrachat_200k.
  ShareGPT rows go through TRL's `maybe_convert_to_chatml`.
- DPO: `prompt` (messages) + `chosen` / `rejected` (assistant messages). Pairs whose prompt is implicit (chosen and
  rejected are whole conversations, as in HuggingFaceH4/ultrafeedback_binarized, whose string `prompt` column repeats
  the first turn) get their prompt from TRL's `extract_prompt`, as `trl dpo` does for rows without a `prompt` column.
Every other column is dropped on purpose: ultrachat_200k has a string `prompt` column next to `messages`, and TRL
treats any dataset with `prompt` as prompt-completion data.

Rows that cannot train are skipped and counted (logged as one warning): SFT conversations without a non-empty
assistant turn; preference pairs where chosen equals rejected or a prompt/chosen/rejected is empty (DPO would push
the same sequence up and down, or learn from nothing). A dataset where every row is skipped is an error.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path

from edugpt.corpus.sources import require_json_lines
from edugpt.errors import EduGPTError
from edugpt.io.net import hub_available, hub_offline_requested, looks_like_hub_id, missing_local_path

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
# TRL's maybe_convert_to_chatml renames from/value to role/content but keeps ShareGPT's role names; these map them.
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant"}
FORMATS = {
    "sft": "`messages` (a list of {\"role\", \"content\"} with at least one assistant turn), ShareGPT "
    "`conversations` ({\"from\", \"value\"}), or `prompt` + `completion` given as message lists",
    "dpo": "`prompt` + `chosen` + `rejected` (strings, or message lists with the reply as assistant messages), or "
    "`chosen` + `rejected` as full conversations sharing their first turns (the prompt is extracted)",
}
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# What each line of a local .jsonl must be, said when one is not.
JSONL_ROW = "one JSON object (one row of the dataset)"


def load_stage_splits(script_args, training_args, stage: str, dataset_args=None):
    """(train, eval) datasets for `stage` from the recipe's `datasets:` mixture or `dataset_name`, in TRL's format.

    The test split is loaded only when the recipe evaluates. Rank 0 loads first (downloading and caching), then the
    other ranks read its cache.
    """
    mixture = dataset_args if dataset_args is not None and dataset_args.datasets else None
    if script_args.dataset_streaming or (mixture is not None and mixture.streaming):
        raise EduGPTError("dataset streaming is not supported: rows are checked and counted before training; drop it.")
    evaluate = training_args.eval_strategy != "no"
    with training_args.main_process_first(desc="loading the dataset"):
        if mixture is not None:
            if script_args.dataset_name:
                logger.warning("both `datasets` and `dataset_name` are set; training on `datasets` (as TRL does).")
            raw = _load_mixture(mixture, training_args.seed)
            name = ", ".join(d.path for d in mixture.datasets)
            splits = [script_args.dataset_train_split] + ([script_args.dataset_test_split] if evaluate else [])
            for split in splits:
                if split not in raw:
                    raise EduGPTError(
                        f"the `datasets:` mixture has no {split!r} split (it has {sorted(raw)}); TRL's mixture gives "
                        "'train', and 'test' only with test_split_size: set test_split_size, or eval_strategy: no."
                    )
            train_raw = raw[script_args.dataset_train_split]
            eval_raw = raw[script_args.dataset_test_split] if evaluate else None
        else:
            name = script_args.dataset_name
            if not name:
                raise EduGPTError(f"no dataset given; set dataset_name (a Hub dataset or a local dataset folder) or a "
                                  f"`datasets:` mixture, with rows in one of these formats: {FORMATS[stage]}.")
            train_raw = load_raw(name, script_args.dataset_config, script_args.dataset_train_split)
            eval_raw = load_raw(name, script_args.dataset_config, script_args.dataset_test_split) if evaluate else None
        num_proc = training_args.dataset_num_proc
        train = load_finetune_dataset(train_raw, stage, name=name, num_proc=num_proc)
        evaluation = load_finetune_dataset(eval_raw, stage, name=name, num_proc=num_proc) if evaluate else None
    return train, evaluation


def load_raw(name: str, config: str | None = None, split: str = "train"):
    """One split of `name` (a local .jsonl/.json file, a local dataset folder, or a Hub id) as a `datasets.Dataset`."""
    from datasets import load_dataset, load_from_disk

    path = _local_path(name)
    if path is not None and path.is_file():
        if path.suffix not in (".jsonl", ".json"):
            raise EduGPTError(f"{name!r}: a local dataset file must be JSON lines (.jsonl); got {path.suffix!r}.")
        if split != "train":
            raise EduGPTError(
                f"{name!r} is a single local file, which has no {split!r} split; set eval_strategy: no, or put the "
                "rows in a dataset folder with one file per split (train.jsonl, test.jsonl)."
            )
        require_json_lines([str(path)], row=JSONL_ROW)  # `datasets` segfaults on a file that starts with `null`
        return _loaded(lambda: load_dataset("json", data_files=str(path), split="train"), name)
    if path is not None and path.is_dir():
        saved = (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()  # save_to_disk
        if not saved:
            # the .jsonl files `load_dataset` reads from a folder (it skips hidden ones and `__pycache__`-like ones)
            require_json_lines(sorted(str(f) for f in path.rglob("*.jsonl") if f.is_file() and not any(
                part.startswith((".", "__")) for part in f.relative_to(path).parts)), row=JSONL_ROW)
        loaded = _loaded(lambda: load_from_disk(str(path)) if saved else load_dataset(str(path), config), name)
        if hasattr(loaded, "keys"):  # a DatasetDict
            if split not in loaded:
                raise EduGPTError(f"dataset folder {name!r} has no split {split!r}; its splits are {sorted(loaded)}.")
            return loaded[split]
        return loaded
    if not hub_available() and not hub_offline_requested():
        raise EduGPTError(
            f"{name!r} is not a local dataset and the Hugging Face Hub cannot be reached; go online, or use a local "
            "dataset folder (configs/sft_smoke.yaml and configs/dpo_smoke.yaml name the ones shipped in edugpt/assets)."
        )
    try:
        # Offline (HF_HUB_OFFLINE=1) this reads the local datasets cache, if the dataset was downloaded before.
        return load_dataset(name, config, split=split)
    except Exception as err:
        where = "in the offline cache (HF_HUB_OFFLINE=1)" if not hub_available() else "on the Hub"
        raise EduGPTError(
            f"dataset {name!r} is no local file or folder (relative to {Path.cwd()}) and could not be loaded "
            f"(config {config!r}, split {split!r}) {where}: {type(err).__name__}: {_first_line(err)}; check the name, "
            "or use a local dataset folder."
        ) from None


def _load_mixture(mixture, seed: int):
    """TRL's `get_dataset` on the mixture, local paths resolved like `dataset_name`; test_split_size split with `seed`."""
    from trl import get_dataset

    entries = []
    for entry in mixture.datasets:
        path = _local_path(entry.path)
        data_files = entry.data_files
        if isinstance(data_files, str) and not Path(data_files).exists() and (PACKAGE_ROOT / data_files).exists():
            data_files = str(PACKAGE_ROOT / data_files)
        entries.append(replace(entry, path=str(path) if path is not None else entry.path, data_files=data_files))
    unsplit = replace(mixture, datasets=entries, test_split_size=None)
    raw = _loaded(lambda: get_dataset(unsplit), ", ".join(e.path for e in entries))
    if mixture.test_split_size is not None:
        raw = raw["train"].train_test_split(test_size=mixture.test_split_size, seed=seed)
    return raw


def _loaded(load, name: str):
    """`load()`, with what `datasets` raises for data it cannot load or parse turned into one sentence."""
    try:
        return load()
    except EduGPTError:
        raise
    except Exception as err:
        cause = err.__cause__ or err  # DatasetGenerationError wraps the JSON parser's message ("... in row 1")
        hint = ("it is not in the offline cache (HF_HUB_OFFLINE=1): go online once, or use a local dataset folder"
                if isinstance(cause, ConnectionError) else "a local file needs one JSON object per line")
        raise EduGPTError(f"could not load the dataset {name!r} ({type(cause).__name__}: {_first_line(cause)}); "
                          f"{hint}.") from None


def load_finetune_dataset(raw, stage: str, name: str | None = None, num_proc: int | None = None):
    """`raw` (a `datasets.Dataset`, or a name for `load_raw`) in the stage's format, unusable rows skipped and counted."""
    if stage not in FORMATS:
        raise ValueError(f"stage must be 'sft' or 'dpo', got {stage!r}")
    if raw is None or isinstance(raw, str):
        if not raw:
            raise EduGPTError(f"no dataset given; set dataset_name to a Hub dataset or a local dataset folder "
                              f"({FORMATS[stage]}).")
        name = name or raw
        raw = load_raw(raw)
    name = name or "the dataset"
    if len(raw) == 0:
        raise EduGPTError(f"{name!r} holds no rows; a {stage.upper()} dataset needs {FORMATS[stage]}.")
    _require_columns(raw.column_names, stage, name)
    normalize = _with_skip_reason(_normalize_sft if stage == "sft" else _normalize_dpo, stage, name)
    mapped = raw.map(
        normalize,
        with_indices=True,
        remove_columns=raw.column_names,
        features=_features(stage),  # explicit, so a first batch of skipped (empty) rows cannot fix the types
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
            f"no usable rows in {name!r} ({dict(reasons)}); a {stage.upper()} dataset needs {FORMATS[stage]}."
        )
    logger.info("%s data %r: %d rows.", stage.upper(), name, len(kept))
    return kept


def check_lengths(stage: str, dataset, tokenizer, args, split: str = "train") -> None:
    """Count the rows that `max_length` cuts, and those left with nothing to learn from, as TRL will see them; log the
    counts, and raise when no row is left to train on. TRL reports neither: an SFT set of over-long conversations
    trains on nothing and exits 0, and DPO drops every pair whose prompt alone fills max_length without a word.

    SFT (TRL's BFD packing or plain truncation both keep a conversation's first max_length tokens): a row keeps
    something to learn when a trained token (an assistant token with assistant_only_loss) lies in that window; without
    packing TRL drops the others. DPO: TRL drops a pair whose prompt is max_length tokens or more.
    """
    max_length = args.max_length
    if max_length is None:
        return
    assistant_only = stage == "sft" and args.assistant_only_loss

    def measure(row):
        if stage == "sft":
            out = tokenizer.apply_chat_template(row["messages"], return_dict=True,
                                                return_assistant_tokens_mask=assistant_only)
            ids = out["input_ids"]
            trained = sum(out["assistant_masks"][:max_length]) if assistant_only else min(len(ids), max_length) - 1
            return {"length": len(ids), "kept": int(trained > 0)}
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, return_dict=True)["input_ids"]
        longest = max(len(tokenizer.apply_chat_template(row["prompt"] + row[reply], return_dict=True)["input_ids"])
                      for reply in ("chosen", "rejected"))
        return {"length": longest, "kept": int(len(prompt) < max_length)}

    sizes = dataset.map(measure, remove_columns=dataset.column_names, num_proc=args.dataset_num_proc,
                        desc=f"Measuring {stage.upper()} rows")
    total, cut = len(sizes), sum(length > max_length for length in sizes["length"])
    empty = total - sum(sizes["kept"])
    unit = "conversations" if stage == "sft" else "pairs"
    if empty == total:
        what = ("keeps no assistant token in its first" if assistant_only else "fits no trained token in") \
            if stage == "sft" else "has a prompt of at least"
        raise EduGPTError(
            f"every one of the {total} {unit} in the {split} data {what} max_length {max_length} tokens, so training "
            f"would learn nothing; raise max_length (up to the model's context) or use shorter {unit}."
        )
    if cut:
        lost = ""
        if empty:
            lost = (f"; {empty} of them keep no trained token and " + ("are dropped by TRL" if stage == "dpo" or
                    not args.packing else "train on nothing"))
        logger.warning("%s %s data: %d of %d %s are longer than max_length %d tokens and are cut to it%s.",
                       stage.upper(), split, cut, total, unit, max_length, lost)


def _local_path(name: str) -> Path | None:
    """The file or folder `name` points to, also relative to the repository (so recipes work from any directory)."""
    for candidate in (Path(name).expanduser(), PACKAGE_ROOT / name):
        if candidate.exists():
            return candidate
    if not looks_like_hub_id(name):
        raise EduGPTError(f"{missing_local_path(name, 'dataset')}; pass an existing .jsonl file or dataset folder, or "
                          "a Hub dataset id.")
    return None


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


def _with_skip_reason(normalize, stage: str, name: str):
    def apply(row, index):
        try:
            return {**normalize(row), "skip_reason": ""}
        except _SkipRow as reason:
            return {**{column: [] for column in COLUMNS[stage]}, "skip_reason": str(reason)}
        except UnicodeDecodeError as err:
            # `datasets` reads a .jsonl's bytes into string columns unchecked; they are decoded only here, when a row's
            # messages are read. Skipping the row would train on the rest of a file in the wrong encoding.
            raise EduGPTError(
                f"{name!r} row {index + 1}: its text is not UTF-8 (byte {err.object[err.start:err.start + 1]!r}: "
                f"{err.reason}); save the data as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN.jsonl > OUT.jsonl`."
            ) from None

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
    from trl import maybe_convert_to_chatml

    if row.get("messages") is not None:
        messages = _messages(row["messages"], "user")
    elif row.get("conversations") is not None:
        turns = row["conversations"]
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise _SkipRow("with malformed messages")
        chatml = maybe_convert_to_chatml({"conversations": [dict(t) for t in turns]})["messages"]
        messages = _messages([{**m, "role": SHAREGPT_ROLES.get(m.get("role"), m.get("role"))} for m in chatml], "user")
    else:
        messages = _messages(row.get("prompt"), "user") + _messages(row.get("completion"), "assistant")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise _SkipRow("without a non-empty assistant turn")
    return {"messages": messages}


def _normalize_dpo(row: dict) -> dict:
    from trl import extract_prompt

    chosen, rejected, prompt = row.get("chosen"), row.get("rejected"), row.get("prompt")
    if isinstance(chosen, list) and isinstance(rejected, list) and (prompt is None or isinstance(prompt, str)):
        # Implicit prompt (HuggingFaceH4/ultrafeedback_binarized: `prompt` is a string copy of the first turn and
        # chosen/rejected are whole conversations): the shared leading turns are the prompt, as `trl dpo` finds them.
        pair = extract_prompt({"chosen": _messages(chosen, "assistant"), "rejected": _messages(rejected, "assistant")})
        prompt, chosen, rejected = pair["prompt"], pair["chosen"], pair["rejected"]
        if not prompt and isinstance(row.get("prompt"), str):
            prompt = _messages(row["prompt"], "user")
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
