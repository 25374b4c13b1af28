"""train_hf.py as tests/integration/test_distributed.py launches it: `accelerate launch ... tests/distributed_run.py ARGS`.

Everything train_hf.py does, plus what a test needs and a user never does:

- FSDP on CPU. accelerate shards only on accelerators: an FSDP config on a CPU-only machine runs as plain DDP
  (MULTI_CPU) without a word (edugpt warns). torch's FSDP2 itself runs on CPU over gloo, so when the launch asks for
  FSDP (accelerate sets ACCELERATE_USE_FSDP) this turns accelerate's state into FSDP before the Trainer is built;
  from there on Trainer and accelerate take their own FSDP2 code paths (fully_shard per GPT2Block, sharded
  optimizer, pytorch_model_fsdp.bin / optimizer.bin checkpoints, full state dict for the final model).
- Faults on one process: EDUGPT_TEST_SIGTERM=RANK:STEP sends process RANK a SIGTERM at the end of step STEP (after
  that step's own SIGTERM check, so all processes stop at STEP+1); EDUGPT_TEST_NAN=RANK:STEP makes that process's
  loss NaN from step STEP on.
- EDUGPT_TEST_HELLASWAG_ITEMS=PATH: process 0 writes each in-loop HellaSwag evaluation's per-item scores and the
  number of items each process scored there, as {step: {"items": [...], "items_per_process": [...]}}.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fsdp_on_cpu() -> None:
    from accelerate import state as accelerate_state
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    original = accelerate_state.AcceleratorState.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU:
            self.fsdp_plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()  # read from the launch env
            self.distributed_type = DistributedType.FSDP
            accelerate_state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    accelerate_state.AcceleratorState.__init__ = init


def rank_and_step(name: str) -> tuple[int, int] | None:
    value = os.environ.get(name)
    return tuple(int(part) for part in value.split(":")) if value else None


def with_test_hooks(build_trainer):
    from transformers import TrainerCallback

    from edugpt.eval.hellaswag import HellaSwagCallback
    from edugpt.train.trainer_hooks import trainer_callbacks

    sigterm, nan = rank_and_step("EDUGPT_TEST_SIGTERM"), rank_and_step("EDUGPT_TEST_NAN")
    items_path = os.environ.get("EDUGPT_TEST_HELLASWAG_ITEMS")

    def build(run, *args, **kwargs):
        pretraining = build_trainer(run, *args, **kwargs)
        trainer = pretraining.trainer
        rank = trainer.args.process_index
        hellaswag = next((c for c in trainer_callbacks(trainer) if isinstance(c, HellaSwagCallback)), None)
        poisoned = {"on": False}

        def poison(module, inputs, output):
            if poisoned["on"] and output.loss is not None:
                output.loss = output.loss * float("nan")
            return output

        if nan and nan[0] == rank:
            trainer.model.register_forward_hook(poison)

        class TestHooks(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                poisoned["on"] = bool(nan) and state.global_step + 1 >= nan[1]

            def on_step_end(self, args, state, control, **kwargs):
                if sigterm and sigterm == (rank, state.global_step):
                    os.kill(os.getpid(), signal.SIGTERM)
                if items_path and hellaswag is not None and rank == 0 and state.global_step % hellaswag.every_steps == 0:
                    path = Path(items_path)
                    scores = json.loads(path.read_text()) if path.exists() else {}
                    scores[str(state.global_step)] = {"items": hellaswag.last_items,
                                                      "items_per_process": hellaswag.items_per_process}
                    path.write_text(json.dumps(scores))

        trainer.add_callback(TestHooks())
        return pretraining

    return build


def main() -> None:
    import edugpt.train.pretrain
    from edugpt.config.cli import run

    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        fsdp_on_cpu()
    edugpt.train.pretrain.build_trainer = with_test_hooks(edugpt.train.pretrain.build_trainer)
    spec = importlib.util.spec_from_file_location("train_hf", ROOT / "train_hf.py")
    train_hf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_hf)
    run(train_hf.main)


if __name__ == "__main__":
    main()
