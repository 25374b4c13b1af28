"""GPT-2 config from arguments, parameter count, FLOPs per token, GPU peak FLOP/s, checkpoint shape checks."""

from __future__ import annotations

import pytest
import torch

from edugpt.config.arguments import ModelArguments


def cross_entropy_per_token(model, blocks) -> float:
    """Mean next-token cross-entropy over `blocks` (int64, rows x T), computed here in float64: T-1 targets a row."""
    import torch.nn.functional as F

    with torch.no_grad():
        logits = model(input_ids=blocks).logits.double()
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), blocks[:, 1:].reshape(-1)).item()


@pytest.mark.slow
def test_logged_losses_are_the_mean_cross_entropy_per_predicted_token(data_dir, tmp_path):
    """Trainer's train and eval losses, recomputed without Trainer. A block of T tokens has T-1 targets; GPT-2's
    `loss_type` is None unless edugpt names it, and then Trainer divides by T and every loss reads (T-1)/T low."""
    import numpy as np
    from transformers import TrainingArguments

    from edugpt.config.arguments import DataArguments, PretrainArguments, RunArguments
    from edugpt.train.pretrain import CompactRandomSampler, start_pretraining

    args = TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none", max_steps=1,
                             per_device_train_batch_size=2, per_device_eval_batch_size=2, logging_steps=1,
                             eval_strategy="steps", eval_steps=1, save_strategy="no", learning_rate=1e-3, seed=7)
    run, pretraining = start_pretraining(ModelArguments(n_layer=2, n_head=2, n_embd=32, n_positions=64),
                                         DataArguments(dataset_dir=str(data_dir), eval_max_batches=2,
                                                       tokens_per_step=4 * 64),
                                         PretrainArguments(sample_steps=0), RunArguments(), args)
    with run:
        trainer, data = pretraining.trainer, pretraining.data
        assert args.gradient_accumulation_steps == 2  # 256 tokens per step from micro-batches of 2 x 64
        model = trainer.model
        initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        validation = torch.from_numpy(np.stack(trainer.eval_dataset["input_ids"]).astype(np.int64))
        assert validation.shape == (4, 64)
        expected_eval = cross_entropy_per_token(model.eval(), validation)
        assert abs(trainer.evaluate()["eval_loss"] - expected_eval) < 1e-6

        trainer.train()
        logged = next(r["loss"] for r in trainer.state.log_history if "loss" in r)
        first_step = list(CompactRandomSampler(len(data.train), seed=7, batch=4))[:4]  # the blocks of step 1
        blocks = torch.from_numpy(np.stack(data.train[first_step]["input_ids"]).astype(np.int64))
        model.load_state_dict(initial)  # the weights step 1 computed its loss with
        assert abs(logged - cross_entropy_per_token(model.eval(), blocks)) < 1e-6
