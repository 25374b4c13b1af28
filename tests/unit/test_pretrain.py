"""Loading a prepared dataset for training: manifest validation, the uint16 -> int64 collator, eval bounding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edugpt.config.arguments import ModelArguments
from edugpt.corpus import synthetic
from edugpt.errors import EduGPTError
from edugpt.model.gpt2 import gpt2_config
from edugpt.train.pretrain import bound_eval_split, collate_blocks, load_prepared, read_manifest

SEQ = 16
CONFIG = gpt2_config(ModelArguments(n_layer=1, n_head=1, n_embd=8, n_positions=32))


def write_prepared(path, train_blocks=6, val_blocks=2, seq_len=SEQ, **manifest_overrides):
    """A directory in the data contract's format, written by prepare_data.py's own writer
    (`edugpt.corpus.synthetic.write_prepared`)."""
    tokens = np.arange((train_blocks + val_blocks) * seq_len, dtype=np.int64) % 50257
    tokens[seq_len - 1] = 50256  # an <|endoftext|> inside the first block
    blocks = tokens.astype(np.uint16).reshape(-1, seq_len)
    return synthetic.write_prepared(path, {"train": blocks[:train_blocks], "validation": blocks[train_blocks:]},
                               **manifest_overrides)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_prepared(tmp_path_factory.mktemp("prepared") / "data")


def test_load_prepared_returns_numpy_rows_of_uint16_data(prepared):
    data = load_prepared(prepared, CONFIG)
    assert data.seq_len == SEQ and len(data.train) == 6 and len(data.validation) == 2
    row = data.train[0]["input_ids"]
    assert isinstance(row, np.ndarray) and row.shape == (SEQ,) and row[SEQ - 1] == 50256
    assert data.train.features["input_ids"].feature.dtype == "uint16"  # 2 bytes/token on disk
    assert data.manifest["created_by"] == "prepare_data.py"


def test_collator_makes_int64_labels_equal_to_inputs_keeping_eos(prepared):
    data = load_prepared(prepared, CONFIG)
    batch = collate_blocks([data.train[0], data.train[1]])
    assert batch["input_ids"].dtype == batch["labels"].dtype == __import__("torch").int64
    assert batch["input_ids"].shape == (2, SEQ)
    assert batch["labels"].equal(batch["input_ids"])
    assert batch["labels"][0, SEQ - 1].item() == 50256  # eos is a target, not masked to -100
    assert (batch["labels"] >= 0).all()


def test_eval_split_is_whole_batches_shared_by_all_devices(prepared):
    validation = load_prepared(write_prepared(prepared.parent / "big", train_blocks=2, val_blocks=22), CONFIG).validation
    assert len(bound_eval_split(validation, None, 4)) == 20  # whole batches only: exact when sharded across processes
    assert len(bound_eval_split(validation, 2, 4)) == 8  # the same rows on any number of processes
    assert len(bound_eval_split(validation, 100, 4)) == 20
    assert len(bound_eval_split(validation, None, 32)) == 22  # smaller than one batch: all of it
    assert bound_eval_split(validation, 2, 4)[0]["input_ids"].tolist() == validation[0]["input_ids"].tolist()


def test_missing_and_foreign_directories_are_user_errors(tmp_path):
    with pytest.raises(EduGPTError, match="dataset_dir is not set"):
        read_manifest(None)
    with pytest.raises(EduGPTError, match="does not exist"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(EduGPTError, match="no manifest.json, so it was not made by prepare_data.py"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(EduGPTError, match="expected 'edugpt-prepared-v2'"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(EduGPTError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_manifest_without_dataset_is_a_user_error(tmp_path, prepared):
    (tmp_path / "manifest.json").write_text((prepared / "manifest.json").read_text())
    with pytest.raises(EduGPTError, match="no saved dataset"):
        load_prepared(tmp_path, CONFIG)


def test_vocab_and_seq_len_mismatches_are_user_errors(tmp_path, prepared):
    with pytest.raises(EduGPTError, match="seq_len 32 does not match the data's blocks of 16"):
        load_prepared(prepared, CONFIG, seq_len=32)
    short = gpt2_config(ModelArguments(n_layer=1, n_head=1, n_embd=8, n_positions=8))
    with pytest.raises(EduGPTError, match="n_positions is 8"):
        load_prepared(prepared, short)
    small_vocab = gpt2_config(ModelArguments(n_layer=1, n_head=1, n_embd=8, n_positions=32, vocab_size=1000))
    with pytest.raises(EduGPTError, match="50257-token vocabulary"):
        load_prepared(prepared, small_vocab)
    other = write_prepared(tmp_path / "other", tokenizer={"name": "llama", "vocab_size": 32000, "eos_token_id": 2})
    with pytest.raises(EduGPTError, match="end-of-text id is 2"):
        load_prepared(other, CONFIG)


def test_block_count_or_dtype_not_matching_the_manifest_is_rejected(tmp_path):
    lying = write_prepared(tmp_path / "lying")
    manifest = json.loads((lying / "manifest.json").read_text())
    manifest["splits"]["train"]["blocks"] = 99
    (lying / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EduGPTError, match="has 6 blocks but the manifest says 99"):
        load_prepared(lying, CONFIG)
    wrong_len = write_prepared(tmp_path / "wrong", seq_len=8)
    manifest = json.loads((wrong_len / "manifest.json").read_text())
    manifest["seq_len"] = 16
    (wrong_len / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EduGPTError, match="does not hold uint16 blocks of 16 tokens"):
        load_prepared(wrong_len, CONFIG)


def test_compact_sampler_is_a_seeded_permutation_per_epoch():
    from edugpt.train.pretrain import CompactRandomSampler

    sampler = CompactRandomSampler(100_000, seed=1337)
    first = list(sampler)
    assert sorted(first) == list(range(100_000)) and first != sorted(first)
    assert list(CompactRandomSampler(100_000, seed=1337)) == first  # same (seed, epoch): same order, no global RNG
    sampler.set_epoch(1)
    assert list(sampler) != first and len(sampler) == 100_000
    # Whole global batches: an epoch of 100,000 blocks in steps of 64 is 1,562 steps; the last 32 of its order rest.
    batched = CompactRandomSampler(100_000, seed=1337, batch=64)
    assert len(batched) == 99_968 and list(batched) == first[:99_968]


@pytest.mark.parametrize(("tokens", "processes", "expected"), [(256, 1, 4), (256, 2, 2), (256, 4, 1), (512, 2, 4)])
def test_tokens_per_step_derives_gradient_accumulation(tokens, processes, expected, caplog):
    from types import SimpleNamespace

    from edugpt.train.pretrain import apply_tokens_per_step

    args = SimpleNamespace(world_size=processes, per_device_train_batch_size=2, gradient_accumulation_steps=1)
    with caplog.at_level("INFO", logger="edugpt.train.pretrain"):
        apply_tokens_per_step(tokens, args, seq_len=32)
    assert args.gradient_accumulation_steps == expected
    assert f"global batch: {tokens} tokens per optimizer step = {processes} process(es) x 2 blocks x {expected}" \
        in caplog.text


def test_an_impossible_or_contradicting_global_batch_is_a_user_error():
    from types import SimpleNamespace

    from edugpt.train.pretrain import apply_tokens_per_step

    args = SimpleNamespace(world_size=3, per_device_train_batch_size=2, gradient_accumulation_steps=1)
    with pytest.raises(EduGPTError, match=r"tokens_per_step 256 cannot be split into micro-batches of 3 process\(es\) "
                                          r"x 2 blocks x 32 tokens = 192 tokens; set tokens_per_step to a multiple of "
                                          r"192 \(e.g. 192 or 384\)"):
        apply_tokens_per_step(256, args, seq_len=32)
    args = SimpleNamespace(world_size=2, per_device_train_batch_size=2, gradient_accumulation_steps=4)
    with pytest.raises(EduGPTError, match="gradient_accumulation_steps 4 contradicts tokens_per_step 256, which gives 2"):
        apply_tokens_per_step(256, args, seq_len=32)
    apply_tokens_per_step(256, SimpleNamespace(world_size=2, per_device_train_batch_size=2,
                                               gradient_accumulation_steps=2), seq_len=32)  # agreeing: fine


def test_trainer_shuffles_with_the_compact_sampler(prepared, tmp_path):
    from transformers import TrainingArguments

    from edugpt.config.arguments import DataArguments, PretrainArguments, RunArguments
    from edugpt.train.pretrain import CompactRandomSampler, start_pretraining

    args = TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none", eval_strategy="no",
                             per_device_train_batch_size=4, max_steps=2)
    run, pretraining = start_pretraining(ModelArguments(n_layer=1, n_head=1, n_embd=8, n_positions=32),
                                         DataArguments(dataset_dir=str(prepared)), PretrainArguments(), RunArguments(),
                                         args)
    run.lock.release()
    assert isinstance(pretraining.trainer._get_train_sampler(), CompactRandomSampler)
    batch = next(iter(pretraining.trainer.get_train_dataloader()))
    assert batch["input_ids"].shape == (4, SEQ) and batch["labels"].equal(batch["input_ids"])


def test_skip_mode_without_the_nan_filter_is_refused(prepared, tmp_path):
    """Without logging_nan_inf_filter, Trainer's running loss stays NaN after one skipped step: refuse the combination."""
    from transformers import TrainingArguments

    from edugpt.config.arguments import DataArguments, PretrainArguments, RunArguments
    from edugpt.train.pretrain import start_pretraining

    args = TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none", eval_strategy="no",
                             logging_nan_inf_filter=False, max_steps=2)
    with pytest.raises(EduGPTError, match="nonfinite_loss 'skip' needs logging_nan_inf_filter"):
        start_pretraining(ModelArguments(n_layer=1, n_head=1, n_embd=8, n_positions=32),
                          DataArguments(dataset_dir=str(prepared)), PretrainArguments(nonfinite_loss="skip"),
                          RunArguments(), args)
    assert not (tmp_path / "run").exists()  # refused before anything was written
