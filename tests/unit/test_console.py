"""What a run prints: our one-line records and the libraries' warnings, not their INFO dumps of config objects."""

from __future__ import annotations

import logging

import pytest


def test_config_objects_are_not_dumped_even_when_transformers_logs_info(tmp_path, capfd):
    """transformers printed the whole GenerationConfig / GPT2Config (30-60 lines each) at INFO every time one was
    built, saved or loaded: 4 + 3 times before the first step. `--log_level info` (Trainer sets transformers'
    verbosity from it) brings transformers' INFO records back, never those dumps."""
    from transformers import AutoConfig, GenerationConfig, GPT2Config
    from transformers.utils import logging as hf_logging

    from edugpt.config.cli import setup_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging()
        hf_logging.set_verbosity_info()  # what Trainer does with --log_level info
        GPT2Config(n_layer=1).save_pretrained(tmp_path)
        GenerationConfig(max_new_tokens=5).save_pretrained(tmp_path)
        AutoConfig.from_pretrained(tmp_path)
        GenerationConfig.from_pretrained(tmp_path)
    finally:
        hf_logging.set_verbosity_warning()
        root.handlers[:], root.level = handlers, level
    err = capfd.readouterr().err
    assert "GPT2Config {" not in err and "GenerationConfig {" not in err, err


@pytest.mark.parametrize(("hub_rows", "max_docs", "batches"), [(2500, None, 3), (2500, 1200, 2), (None, 1200, 2)])
def test_the_streamed_prepare_bar_has_a_total_and_an_eta(tmp_path, capsys, hub_rows, max_docs, batches):
    """A streamed Hub dataset's bar counted batches with no end ("51 batch [00:20, 2.5 batch/s]"). Its total now comes
    from the Hub's row count (the dataset info the stream carries, as Hub READMEs declare it) and --max_docs."""
    import datasets

    from edugpt.config.arguments import PrepareDataArguments
    from edugpt.corpus.local import tokenized_batches

    texts = [f"document {i} about the Python interpreter" for i in range(hub_rows or max_docs)]
    stream = datasets.Dataset.from_dict({"text": texts}).to_iterable_dataset()
    if hub_rows:
        stream.info.splits = datasets.SplitDict({"train": datasets.SplitInfo("train", num_examples=hub_rows)})
    if max_docs:
        stream = stream.take(max_docs)
    args = PrepareDataArguments(dataset="you/corpus", output_dir=str(tmp_path / "out"), seq_len=64, num_proc=1,
                                max_docs=max_docs)
    assert len(list(tokenized_batches(stream, has_id=False, args=args))) == batches
    bar = capsys.readouterr().err.split("\r")[-1]
    assert f"{batches}/{batches} [" in bar and "<00:00" in bar, bar  # done/total [elapsed<remaining
