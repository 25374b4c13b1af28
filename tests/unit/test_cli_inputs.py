"""train_hf.py's inputs that are checked before the run begins: a bad --tokenizer or --hellaswag_file is one error and
leaves an output_dir that held nothing as it was (absent); the global-batch error suggests two different sizes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edugpt.errors import EduGPTError
from edugpt.train.pretrain import apply_tokens_per_step


def test_tokens_per_step_below_one_micro_batch_suggests_two_different_sizes():
    args = SimpleNamespace(world_size=1, per_device_train_batch_size=4, gradient_accumulation_steps=1)
    with pytest.raises(EduGPTError, match=r"tokens_per_step 100 cannot be split .* = 1,024 tokens; set tokens_per_step "
                                          r"to a multiple of 1024 \(e.g. 1024 or 2048\)"):
        apply_tokens_per_step(100, args, seq_len=256)


def test_a_non_positive_hellaswag_limit_is_refused_while_parsing():
    from edugpt.config.arguments import PretrainArguments

    with pytest.raises(EduGPTError, match="hellaswag_limit must be a positive number or null, got 0"):
        PretrainArguments(hellaswag_limit=0)
