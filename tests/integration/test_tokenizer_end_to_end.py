""""""

import pytest


@pytest.mark.slow
def test_pretraining_saves_a_hub_ready_tokenizer(baseline):
    import json

    output_dir, _ = baseline
    for folder in (output_dir, *sorted(output_dir.glob("checkpoint-*"))):
        saved = json.loads((folder / "tokenizer_config.json").read_text())
        assert saved["model_max_length"] == 64 == json.loads((folder / "config.json").read_text())["n_positions"]
        assert saved["pad_token"] == "<|endoftext|>" and not {"is_local", "local_files_only"} & set(saved), folder


def pipeline_outcome(model_dir, prompt, **kwargs):
    """What `pipeline("text-generation")` does with `prompt`: ("ok", new text) or (exception name, None), plus the
    warnings transformers logged."""
    import logging

    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_logging.add_handler(handler)
    try:
        pipe = pipeline("text-generation", model=str(model_dir))
        try:
            text = pipe(prompt, max_new_tokens=4, do_sample=False, return_full_text=False, **kwargs)[0]
            result = ("ok", text["generated_text"])
        except Exception as err:  # the outcome is what is compared
            result = (type(err).__name__, None)
    finally:
        hf_logging.remove_handler(handler)
    return result, [r.getMessage() for r in records if r.levelno >= logging.WARNING]


@pytest.mark.slow
def test_an_over_long_prompt_behaves_as_with_hub_gpt2(baseline, tmp_path):
    """openai-community/gpt2 saves model_max_length = n_positions (1024) and no pad token. With transformers 5.24 its
    pipeline on a prompt longer than the context warns (the tokenizer) and then fails in the position embedding; ours
    does exactly the same at its own context, and `handle_long_generation="hole"` (which needs the right
    model_max_length) cuts the prompt from the left and generates."""
    import json
    import shutil

    output_dir, _ = baseline
    hub_like = tmp_path / "hub-like"
    shutil.copytree(output_dir, hub_like, ignore=shutil.ignore_patterns("checkpoint-*", "images"))
    config = json.loads((hub_like / "tokenizer_config.json").read_text())
    config.pop("pad_token")  # Hub GPT-2's tokenizer_config: model_max_length = context, nothing else of ours
    (hub_like / "tokenizer_config.json").write_text(json.dumps(config))
    for name in ("config.json", "generation_config.json"):  # and no pad id in its model configs
        model_config = json.loads((hub_like / name).read_text())
        model_config.pop("pad_token_id", None)
        (hub_like / name).write_text(json.dumps(model_config))

    long_prompt = " the" * 70  # 70 tokens > the 64-position context
    ours, warnings = pipeline_outcome(output_dir, long_prompt)
    assert ours == pipeline_outcome(hub_like, long_prompt)[0] and ours[0] != "ok"
    assert any("longer than the specified maximum sequence length for this model (70 > 64)" in w for w in warnings)
    (status, text), _ = pipeline_outcome(output_dir, long_prompt, handle_long_generation="hole")
    assert status == "ok" and isinstance(text, str)
    (status, _), _ = pipeline_outcome(output_dir, " the" * 20)  # a prompt that fits: no change
    assert status == "ok"
