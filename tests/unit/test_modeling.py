"""GPT-2 config from arguments, parameter count, FLOPs per token, GPU peak FLOP/s, checkpoint shape checks."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2LMHeadModel

from edugpt.config.arguments import ModelArguments
from edugpt.errors import EduGPTError
from edugpt.model.gpt2 import (
    current_peak_flops,
    flops_per_token,
    gpt2_config,
    parameter_count,
    peak_flops,
    require_compatible_checkpoint,
)


@pytest.mark.parametrize("shape", [dict(n_layer=2, n_head=2, n_embd=32, n_positions=64),
                                   dict(n_layer=16, n_head=16, n_embd=1024, n_positions=1024)])
def test_parameter_count_matches_the_instantiated_model(shape):
    config = gpt2_config(ModelArguments(**shape))
    with torch.device("meta"):  # no memory for the 270M model's weights
        model = GPT2LMHeadModel(config)
    assert parameter_count(config) == model.num_parameters()  # tied LM head counted once


def test_270m_model_numbers():
    config = gpt2_config(ModelArguments())  # the defaults are configs/gpt2_270m.yaml's shape
    shape = (config.n_layer, config.n_head, config.n_embd, config.n_positions, config.vocab_size)
    assert shape == (16, 16, 1024, 1024, 50257)
    assert parameter_count(config) == 254_053_376
    # 6 * (254.05M - 1M position embedding) + 12 * 16 layers * 1024 * 1024 tokens
    assert flops_per_token(config, 1024) == 6 * 253_004_800 + 12 * 16 * 1024 * 1024
    assert config.eos_token_id == config.bos_token_id == 50256


def test_config_uses_sdpa_and_dropout_from_arguments():
    config = gpt2_config(ModelArguments(n_layer=2, n_head=2, n_embd=32, dropout=0.1, attn_implementation="eager"))
    assert config.resid_pdrop == config.embd_pdrop == config.attn_pdrop == 0.1
    assert config._attn_implementation == "eager"
    assert gpt2_config(ModelArguments(n_layer=2, n_head=2, n_embd=32))._attn_implementation == "sdpa"


def test_n_embd_not_divisible_by_n_head_is_a_user_error():
    with pytest.raises(EduGPTError, match=r"n_embd \(100\) is not divisible by n_head \(3\)"):
        ModelArguments(n_embd=100, n_head=3)


@pytest.mark.parametrize(("name", "flops"), [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA GH200 480GB", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L40S", 362e12),
    ("NVIDIA L4", 121e12), ("Some Future GPU", None), (None, None),
])
def test_peak_flops_by_gpu_name(name, flops):
    assert peak_flops(name) == flops


def test_peak_flops_override_wins_and_cpu_has_none():
    assert current_peak_flops(123e12) == 123e12
    if not torch.cuda.is_available():
        assert current_peak_flops() is None


def test_checkpoint_with_another_shape_is_rejected(tiny_model_dir):
    same = gpt2_config(ModelArguments(n_layer=2, n_head=2, n_embd=32, n_positions=128))
    require_compatible_checkpoint(tiny_model_dir, same)
    wider = gpt2_config(ModelArguments(n_layer=2, n_head=2, n_embd=64, n_positions=128))
    with pytest.raises(EduGPTError, match="n_embd 32 vs 64"):
        require_compatible_checkpoint(tiny_model_dir, wider)


def test_checkpoint_without_config_is_rejected(tmp_path):
    with pytest.raises(EduGPTError, match="missing or unreadable"):
        require_compatible_checkpoint(tmp_path, gpt2_config(ModelArguments(n_layer=2, n_head=2, n_embd=32)))
    (tmp_path / "config.json").write_text(json.dumps({"n_layer": 2}))
    with pytest.raises(EduGPTError, match="different shape"):
        require_compatible_checkpoint(tmp_path, gpt2_config(ModelArguments(n_layer=2, n_head=2, n_embd=32)))

