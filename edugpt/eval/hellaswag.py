"""HellaSwag inside training, scored by lm-eval itself: `HellaSwagCallback` wraps the in-memory model in lm-eval's
`HFLM` and runs lm-eval's `evaluate()` on the same task object lm-eval would build, which gives, item by item, what

    lm_eval --model hf --model_args pretrained=RUN/checkpoint-N --tasks hellaswag --limit L --batch_size B

gives on the checkpoint saved at that step (tests/integration/test_evaluation.py proves it on a tiny model). Use the
same batch size on both sides for bit-identical log-likelihoods: a different batch pads differently, which can move
the last float bits (not, in practice, acc).

Offline, HellaSwag comes from a local jsonl file in HellaSwag's schema through the `hellaswag_local` task in
`edugpt/eval/tasks/` (lm-eval's hellaswag definition with a local data source; edugpt.eval.task_catalog).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random

import numpy as np
import torch
from transformers import TrainerCallback

from edugpt.errors import EduGPTError
from edugpt.eval.task_catalog import hub_hellaswag_task, local_hellaswag_config
from edugpt.train.trainer_hooks import shard_prebuilt_hflm, swap_lm_eval_tqdm

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def preserved_training_state(model: torch.nn.Module):
    """Restore RNG streams, every module's train/eval flag and grad mode afterwards: evaluation must leave no trace."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    modes = [(module, module.training) for module in model.modules()]
    grad_enabled = torch.is_grad_enabled()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        for module, training in modes:
            module.training = training
        torch.set_grad_enabled(grad_enabled)


@contextlib.contextmanager
def quiet_lm_eval():
    """Keep an in-training evaluation to its one log record: lm-eval warns about pre-built models and custom datasets
    on every call, the tokenizer about long inputs, `datasets` draws a bar for each `process_docs` map, and lm-eval
    draws three bars of its own, which break Trainer's progress bar. lm-eval's `evaluate()` has no switch for its bars,
    so the `tqdm` its modules call is swapped for a disabled one while this block runs."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from tqdm.auto import tqdm

    def silent_tqdm(*args, **kwargs):
        return tqdm(*args, **{**kwargs, "disable": True})

    # HFLM cuts every request to the model's context itself, from the left; the tokenizer's "longer than the specified
    # maximum sequence length" warning about the uncut text is moot here.
    quieted = [logging.getLogger("lm_eval"), logging.getLogger("transformers.tokenization_utils_base")]
    levels = [logger.level for logger in quieted]
    bars_were_off = are_progress_bars_disabled()
    restore_tqdm = swap_lm_eval_tqdm(silent_tqdm)
    for logger in quieted:
        logger.setLevel(logging.ERROR)
    disable_progress_bars()
    try:
        yield
    finally:
        restore_tqdm()
        for logger, level in zip(quieted, levels):
            logger.setLevel(level)
        if not bars_were_off:
            enable_progress_bars()


def score_task(model, tokenizer, task, *, limit: int | None, batch_size: int, accelerator=None) -> dict | None:
    """Score an in-memory causal LM on one lm-eval task exactly as `lm_eval` would; returns lm-eval's results dict.

    This is `simple_evaluate` minus what does not change the numbers and would cost seconds per call (seeding the
    global RNGs, collecting environment info, bootstrap stderrs). HFLM batches the requests and keeps only each
    continuation's summed log-likelihood, so memory holds one batch of logits at a time. HFLM gives `tokenizer` a pad
    token if it has none: pass a copy of the run's tokenizer.

    With a multi-process `accelerator` (the Trainer's) every process must call this: lm-eval's own data parallelism
    then shards the items (process p scores items p, p+P, ...), pads every process to the same number of requests
    and gathers the scores, which only process 0 gets (the others get None). HFLM treats a pre-built model as
    single-process, so its rank, world size and accelerator are set here. Each process runs the same number of
    forward passes, which a sharded (FSDP) model needs: every forward gathers the parameters with the other
    processes. For that, requests sharing a context are not merged into one row (HFLM's `logits_cache`), since the
    merges would differ between processes; the scores are the same.
    """
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    sharded = accelerator is not None and accelerator.num_processes > 1
    with quiet_lm_eval(), preserved_training_state(model):
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, logits_cache=not sharded)
        if sharded:
            shard_prebuilt_hflm(lm, accelerator)
        if task.get_config("num_fewshot") is None:  # what simple_evaluate does for 0-shot tasks
            task.set_config(key="num_fewshot", value=0)
        return evaluate(lm=lm, task_dict={"tasks": {task.config.task: task}}, limit=limit, bootstrap_iters=0,
                        log_samples=True)


def per_item_scores(results: dict, task_name: str) -> list[dict]:
    """doc_id, acc, acc_norm and the choices' log-likelihoods of every scored item (small: no logits)."""
    items = []
    for sample in sorted(results["samples"][task_name], key=lambda s: s["doc_id"]):
        items.append({
            "doc_id": sample["doc_id"],
            "acc": float(sample["acc"]),
            "acc_norm": float(sample["acc_norm"]),
            "loglikelihoods": [float(resp[0]) for resp in sample["filtered_resps"]],
        })
    return items


class HellaSwagCallback(TrainerCallback):
    """Every `every_steps` steps, score the in-memory model on the first `limit` HellaSwag items (None: all) with
    lm-eval's own HFLM and task; `trainer.log` `hellaswag/acc` and `hellaswag/acc_norm` (console, report_to,
    metrics.jsonl).

    `hellaswag_file` selects a local HellaSwag-format jsonl (task `hellaswag_local`); without it lm-eval's Hub
    `hellaswag` task is used, and an offline run fails here, before training starts. The items are loaded once.
    Scoring runs under `preserved_training_state`, so the training trajectory is the same with or without it.
    `batch_size` defaults to the run's `per_device_eval_batch_size`.

    Under several processes the items are shared out (`score_task`): each process scores about 1/P of them, through
    its own replica under DDP or through the sharded module under FSDP (no process ever holds the whole model), and
    process 0 gathers the scores, item for item the ones a single process gets. Process 0 logs, and tells the others.
    """

    def __init__(self, trainer, every_steps: int, limit: int | None, hellaswag_file: str | None = None,
                 batch_size: int | None = None):
        if every_steps <= 0 or (limit is not None and limit <= 0):
            raise EduGPTError(
                f"HellaSwag every {every_steps} steps on {limit} items: both must be positive (hellaswag_steps, "
                "hellaswag_limit); set hellaswag_steps 0 to turn HellaSwag off, hellaswag_limit null for all items."
            )
        self.trainer = trainer
        self.every_steps = every_steps
        self.limit = limit
        self.batch_size = batch_size or trainer.args.per_device_eval_batch_size
        # HFLM sets a pad token on the tokenizer it is given: hand it a copy so the run's saved tokenizer is unchanged.
        self.tokenizer = copy.deepcopy(trainer.processing_class) if trainer.processing_class is not None else None
        if self.tokenizer is None:
            from edugpt.model.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer("gpt2")
        with quiet_lm_eval():
            if hellaswag_file is not None:
                from lm_eval.api.task import ConfigurableTask

                self.task = ConfigurableTask(config=local_hellaswag_config(hellaswag_file, max_items=limit))
            else:
                self.task = hub_hellaswag_task(max_items=limit)
        self.last_items: list[dict] = []  # per-item scores of the latest evaluation (process 0), for tests and debugging
        self.items_per_process: list[int] = []  # how many items each process scored in the latest evaluation

    def evaluate(self, model) -> dict[str, float]:
        from accelerate.utils import broadcast_object_list, gather_object

        accelerator = self.trainer.accelerator
        results = score_task(model, self.tokenizer, self.task, limit=self.limit, batch_size=self.batch_size,
                             accelerator=accelerator)
        scored_here = len({instance.doc_id for instance in self.task.instances})
        name = self.task.config.task
        scores = None
        if results is not None:
            self.last_items = per_item_scores(results, name)
            metrics = results["results"][name]
            scores = {"hellaswag/acc": metrics["acc,none"], "hellaswag/acc_norm": metrics["acc_norm,none"]}
        if accelerator.num_processes == 1:
            self.items_per_process = [scored_here]
            return scores
        self.items_per_process = gather_object([scored_here])
        return broadcast_object_list([scores], from_process=0)[0]

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_steps == 0:
            scores = self.evaluate(model if model is not None else self.trainer.model)
            if len(self.items_per_process) > 1 and state.is_world_process_zero:
                logger.info("HellaSwag at step %d: %d items scored by %d processes (%s)", state.global_step,
                            sum(self.items_per_process), len(self.items_per_process),
                            " + ".join(map(str, self.items_per_process)))
            # Trainer.log -> on_log clears control.should_log, which would drop this step's train-loss record.
            should_log = control.should_log
            self.trainer.log(scores)
            control.should_log = should_log
