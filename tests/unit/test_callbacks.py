"""Callbacks: throughput/MFU, metrics.jsonl, samples table (RNG- and mode-neutral), plots, SIGTERM, non-finite guard."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerControl, TrainerState, TrainingArguments

from edugpt.report.plots import plot_hellaswag, plot_losses
from edugpt.run.rundir import MetricsLog
from edugpt.train import callbacks as cb
from edugpt.train import guards, samples


def state_at(step, tokens=0):
    state = TrainerState()
    state.global_step, state.num_input_tokens_seen, state.max_steps = step, tokens, 100
    return state


@pytest.fixture(scope="module")
def args(tmp_path_factory):
    return TrainingArguments(output_dir=str(tmp_path_factory.mktemp("out")), use_cpu=True, report_to="none")


@pytest.fixture
def tiny_model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


class FakeClock:
    """time.perf_counter for the callbacks module, moved by hand: the arithmetic is tested, not this machine's speed."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_throughput_counts_training_time_only_and_adds_mfu(args, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(cb.time, "perf_counter", clock)
    callback = cb.ThroughputCallback(flops_per_token=1e6, peak_flops=1e10, world_size=2)
    state, control = state_at(0), TrainerControl()
    callback.on_train_begin(args, state, control)
    for _ in range(2):
        clock.now += 0.25  # the step: data, forward, backward, optimizer
        state.num_input_tokens_seen += 500
        callback.on_step_end(args, state, control)
        callback.clock.on_step_end(args, state, control)  # the step's callbacks are done
        clock.now += 3.0  # an evaluation after the step: not counted
        callback.clock.on_evaluate(args, state, control)
    logs = {"loss": 1.0, "train_tokens_per_second": 150.0, "train_runtime": 6.5}  # Trainer's cumulative figure
    callback.on_log(args, state, control, logs=logs)
    assert logs["tokens_per_second"] == 2000.0
    assert logs["mfu"] == 2000 * 1e6 / (1e10 * 2)
    assert "train_tokens_per_second" not in logs and "train_runtime" not in logs  # one throughput in the records
    eval_logs = {"eval_loss": 2.0}
    callback.on_log(args, state, control, logs=eval_logs)
    assert eval_logs == {"eval_loss": 2.0}


def test_no_mfu_without_a_known_peak(args):
    callback = cb.ThroughputCallback(flops_per_token=1e6, peak_flops=None)
    state, control = state_at(0), TrainerControl()
    callback.on_train_begin(args, state, control)
    state.num_input_tokens_seen = 100
    callback.on_step_end(args, state, control)
    logs = {"loss": 1.0}
    callback.on_log(args, state, control, logs=logs)
    assert logs["tokens_per_second"] > 0 and "mfu" not in logs


def test_throughput_goes_first_and_its_clock_last(tiny_model, args, tmp_path):
    from transformers import Trainer

    seen = []

    class Recorder(cb.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    trainer = Trainer(model=tiny_model, args=args)
    throughput = cb.ThroughputCallback(1e6, None)
    cb.install_callbacks(trainer, Recorder(), throughput)
    assert trainer.callback_handler.callbacks[0] is throughput
    assert trainer.callback_handler.callbacks[-1] is throughput.clock
    throughput.on_train_begin(args, trainer.state, trainer.control)
    trainer.state.num_input_tokens_seen = 64
    throughput.on_step_end(args, trainer.state, trainer.control)
    trainer.log({"loss": 1.0})
    assert "tokens_per_second" in seen[-1]  # added before the other callbacks (console, report_to) saw the record


def test_metrics_jsonl_records_have_step_and_tokens_and_resume_truncates(args, tmp_path):
    metrics = MetricsLog(tmp_path / "metrics.jsonl")
    callback = cb.MetricsJsonlCallback(metrics)
    for step in (1, 2, 3):
        callback.on_log(args, state_at(step, step * 64), TrainerControl(), logs={"loss": 5.0 - step})
    with open(metrics.path, "a") as f:
        f.write('{"step": 4, "tok')  # torn line of a killed run
    assert [(r["step"], r["tokens"], r["loss"]) for r in metrics.read()] == [(1, 64, 4.0), (2, 128, 3.0), (3, 192, 2.0)]
    callback.on_train_begin(args, state_at(2), TrainerControl())  # resumed from checkpoint-2
    assert [r["step"] for r in metrics.read()] == [1, 2]
    disabled = MetricsLog(tmp_path / "other.jsonl", enabled=False)
    disabled.append({"step": 1})
    assert not disabled.path.exists()


def test_a_fresh_start_in_the_same_output_dir_does_not_append_to_old_records(args, tmp_path):
    """Killed before its first checkpoint, the run starts again at step 0: the old attempt's records must go (the
    file is in the run's record, as every run keeps one: only a metrics.jsonl the run wrote is removed)."""
    from edugpt.run import record

    record.start(tmp_path)
    metrics = MetricsLog(tmp_path / "metrics.jsonl")
    callback = cb.MetricsJsonlCallback(metrics)
    for step in (10, 20, 30, 40):
        callback.on_log(args, state_at(step), TrainerControl(), logs={"loss": 9.0})
    callback.on_train_begin(args, state_at(0), TrainerControl())
    for step in (10, 20):
        callback.on_log(args, state_at(step), TrainerControl(), logs={"loss": 5.0})
    assert [(r["step"], r["loss"]) for r in metrics.read()] == [(10, 5.0), (20, 5.0)]


def test_samples_do_not_disturb_rng_or_model_mode_and_fill_the_table(tiny_model, gpt2_tokenizer, args, tmp_path):
    metrics = MetricsLog(tmp_path / "metrics.jsonl")
    callback = samples.SamplesCallback(gpt2_tokenizer, ["Once upon a time"], every_steps=5, max_new_tokens=6, top_k=50,
                                  seed=7, samples_path=tmp_path / "samples.md", metrics=metrics)
    tiny_model.train()
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    callback.on_train_begin(args, state_at(0), TrainerControl(), model=tiny_model)
    callback.on_step_end(args, state_at(3), TrainerControl(), model=tiny_model)  # not a sample step
    callback.on_step_end(args, state_at(5), TrainerControl(), model=tiny_model)
    callback.on_train_end(args, state_at(5), TrainerControl(), model=tiny_model)  # already sampled at 5
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert tiny_model.training

    rows = (tmp_path / "samples.md").read_text().splitlines()
    assert rows[:2] == ["| Step | Output |", "|------|--------|"]
    assert [row.split("|")[1].strip() for row in rows[2:]] == ["0", "5"]
    assert all(row.startswith("| ") and row.endswith(" |") and "Once upon a time" in row for row in rows[2:])
    records = metrics.read()
    assert [(r["step"], r["sample/prompt"]) for r in records] == [(0, "Once upon a time"), (5, "Once upon a time")]
    # Same weights, same seed: the same continuation, whatever the training RNG did in between.
    assert records[0]["sample/text"] == records[1]["sample/text"]
    assert len(gpt2_tokenizer(records[0]["sample/text"]).input_ids) == 4 + 6


def test_samples_on_resume_keep_earlier_rows_only(gpt2_tokenizer, args, tmp_path):
    path = tmp_path / "samples.md"
    path.write_text(samples.SAMPLES_HEADER + "| 0 | a |\n| 5 | b |\n| 10 | c |\n")
    callback = samples.SamplesCallback(gpt2_tokenizer, ["x"], 5, 4, 0, 0, path, MetricsLog(tmp_path / "m.jsonl"))
    callback.on_train_begin(args, state_at(5), TrainerControl(), model=None)
    assert path.read_text() == samples.SAMPLES_HEADER + "| 0 | a |\n| 5 | b |\n"


def test_markdown_cell_keeps_the_table_intact():
    assert samples.markdown_cell("a|b\nc  <|endoftext|>") == "a\\|b c &lt;\\|endoftext\\|&gt;"


def test_non_finite_loss_or_grad_norm_stops_without_saving(args):
    guard = guards.NonFiniteLossCallback()
    control = TrainerControl(should_save=True)
    guard.on_log(args, state_at(3), control, logs={"loss": 2.0, "grad_norm": 1.0})
    assert guard.failure is None and not control.should_training_stop
    guard.on_log(args, state_at(4), control, logs={"loss": 2.0, "grad_norm": float("nan")})
    assert "grad norm became nan at step 4" in guard.failure
    assert control.should_training_stop and not control.should_save


def test_non_finite_weights_are_never_checkpointed(tiny_model, args):
    guard = guards.NonFiniteLossCallback()
    control = TrainerControl(should_save=True)
    guard.on_step_end(args, state_at(2), control, model=tiny_model)
    assert guard.failure is None and control.should_save
    with torch.no_grad():
        next(tiny_model.parameters())[0, 0] = float("inf")
    guard.on_step_end(args, state_at(3), control, model=tiny_model)
    assert "weights became non-finite at step 3" in guard.failure and not control.should_save


def test_sigterm_sets_save_and_stop_at_the_step_end_then_restores_the_handler(args):
    callback = guards.SigtermCallback()
    previous = signal.getsignal(signal.SIGTERM)
    callback.on_train_begin(args, state_at(0), TrainerControl())
    os.kill(os.getpid(), signal.SIGTERM)
    assert callback.received
    control = TrainerControl()
    callback.on_step_end(args, state_at(7), control)
    assert control.should_save and control.should_training_stop and callback.stopped_at == 7
    callback.on_train_end(args, state_at(7), control)
    assert signal.getsignal(signal.SIGTERM) == previous


def test_plots_draw_losses_and_hellaswag_from_records(tmp_path):
    records = [{"step": s, "tokens": s * 2048, "loss": 10 - math.log(s)} for s in range(1, 51)]
    records += [{"step": s, "tokens": s * 2048, "eval_loss": 10.2 - math.log(s)} for s in (10, 20, 50)]
    assert plot_losses(records, tmp_path / "images" / "train-loss.png").stat().st_size > 10_000
    assert plot_hellaswag(records, tmp_path / "images" / "hellaswag.png") is None
    records += [{"step": s, "tokens": s * 2048, "hellaswag/acc": 0.25 + s / 1000, "hellaswag/acc_norm": 0.26}
                for s in (25, 50)]
    assert plot_hellaswag(records, tmp_path / "images" / "hellaswag.png").stat().st_size > 10_000
    assert plot_losses([], tmp_path / "none.png") is None


def test_plot_callback_redraws_on_eval_and_hellaswag(args, tmp_path):
    metrics = MetricsLog(tmp_path / "metrics.jsonl")
    for record in ({"step": 1, "tokens": 64, "loss": 9.0}, {"step": 2, "tokens": 128, "eval_loss": 8.5}):
        metrics.append(record)
    callback = cb.PlotCallback(tmp_path, metrics)
    callback.on_evaluate(args, state_at(2), TrainerControl())
    assert (tmp_path / "images" / "train-loss.png").exists() and not (tmp_path / "images" / "hellaswag.png").exists()
    metrics.append({"step": 2, "tokens": 128, "hellaswag/acc": 0.26, "hellaswag/acc_norm": 0.27})
    callback.on_log(args, state_at(2), TrainerControl(), logs={"hellaswag/acc": 0.26, "hellaswag/acc_norm": 0.27})
    assert (tmp_path / "images" / "hellaswag.png").exists()


def nan_train(model, tmp_path, poisoned_steps, max_steps, guard, **training):
    """Train `model` in-process for `max_steps` steps (batch 2 x 16 tokens) with a NaN embedding output, hence a NaN
    loss and NaN gradients, on the forward passes of `poisoned_steps` (1-based; one forward per step here)."""
    from transformers import Trainer

    forwards = []

    def poison(module, inputs, output):
        forwards.append(1)
        return output * float("nan") if len(forwards) in poisoned_steps else output

    model.get_input_embeddings().register_forward_hook(poison)
    rows = torch.randint(0, 50257, (2 * max_steps, 16), generator=torch.Generator().manual_seed(0))
    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=True, max_steps=max_steps,
        per_device_train_batch_size=2, learning_rate=1e-3, weight_decay=0.1, logging_steps=1, seed=0, **training,
    )
    trainer = Trainer(model=model, args=args, train_dataset=[{"input_ids": r, "labels": r} for r in rows])
    snapshots = {}

    class Snapshots(cb.TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            snapshots[state.global_step] = model.transformer.h[0].mlp.c_fc.weight.detach().clone()

    metrics = MetricsLog(tmp_path / "metrics.jsonl")
    cb.install_callbacks(trainer, cb.MetricsJsonlCallback(metrics), guard, Snapshots())
    trainer.train()
    return trainer, snapshots, [r for r in metrics.read() if "loss" in r]


@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_torch_fused"])  # foreach and fused AdamW
def test_skip_mode_drops_exactly_the_non_finite_step_and_trains_on(tiny_model, tmp_path, caplog, optim):
    guard = guards.NonFiniteLossCallback("skip", max_skipped_steps=2)
    with caplog.at_level("WARNING", logger="edugpt.train.guards"):
        trainer, snapshots, records = nan_train(tiny_model, tmp_path, {3}, 6, guard, optim=optim, save_strategy="no")
    assert guard.failure is None and guard.skipped_steps == [3] and trainer.state.global_step == 6
    assert "non-finite gradients at step 3: skipped its update" in caplog.text
    assert all(torch.isfinite(p).all() for p in tiny_model.parameters())
    # Step 3 changed nothing, not even weight decay; every other step trained. AdamW counted 5 steps.
    assert torch.equal(snapshots[3], snapshots[2])
    assert all(not torch.equal(snapshots[s], snapshots[s - 1]) for s in (2, 4, 5, 6))
    assert {int(state["step"]) for state in trainer.optimizer.state.values()} == {5}
    assert [r["skipped_nonfinite_steps"] for r in records] == [0, 0, 1, 0, 0, 0]  # in metrics.jsonl
    assert math.isnan(records[2]["grad_norm"]) and math.isnan(records[2]["loss"])  # not Trainer's stand-in 0.0
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records[3:])


def test_skip_mode_stops_after_too_many_skips_in_a_row_without_saving_that_step(tiny_model, tmp_path):
    guard = guards.NonFiniteLossCallback("skip", max_skipped_steps=2)
    trainer, _, _ = nan_train(tiny_model, tmp_path, set(range(2, 10)), 8, guard, save_steps=1)
    assert guard.failure == ("the gradients were non-finite on 3 optimizer steps in a row (more than "
                             "max_skipped_steps 2) up to step 4")
    assert guard.skipped_steps == [2, 3, 4] and trainer.state.global_step == 4
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert all(torch.isfinite(p).all() for p in tiny_model.parameters())


def test_a_non_finite_loss_of_a_step_that_was_not_skipped_still_stops(args):
    guard = guards.NonFiniteLossCallback("skip")
    control = TrainerControl()
    guard.on_log(args, state_at(4), control, logs={"loss": float("inf"), "grad_norm": 1.0})
    assert "training loss became inf at step 4" in guard.failure and control.should_training_stop


def test_nonfinite_loss_option_is_validated():
    from edugpt.config.arguments import PretrainArguments
    from edugpt.errors import EduGPTError

    assert PretrainArguments(nonfinite_loss="skip").max_skipped_steps == 10
    with pytest.raises(EduGPTError, match="nonfinite_loss must be 'stop' or 'skip', got 'ignore'"):
        PretrainArguments(nonfinite_loss="ignore")
    with pytest.raises(EduGPTError, match="max_skipped_steps must be >= 0"):
        PretrainArguments(max_skipped_steps=-1)


def _resumable_trainer(model_dir, output_dir, **settings):
    from transformers import Trainer

    rows = torch.randint(0, 50257, (24, 16), generator=torch.Generator().manual_seed(0))
    args = TrainingArguments(output_dir=str(output_dir), use_cpu=True, report_to="none", disable_tqdm=True,
                             per_device_train_batch_size=2, logging_steps=1, save_steps=2, seed=0, **settings)
    return Trainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args,
                   train_dataset=[{"input_ids": r, "labels": r} for r in rows])


def _resume_with(model_dir, output_dir, **settings):
    """A real Trainer resumed from `output_dir`/checkpoint-2 with `settings`, as the lifecycle does it with
    --resume_with_changes (NewHyperparametersCallback attached); returns it trained."""
    trainer = _resumable_trainer(model_dir, output_dir, **settings)
    cb.install_callbacks(trainer, cb.NewHyperparametersCallback(trainer.args))
    trainer.train(resume_from_checkpoint=str(output_dir / "checkpoint-2"))
    return trainer


def test_resume_with_changes_puts_every_compared_setting_into_the_optimizer_and_the_schedule(tiny_model_dir, tmp_path):
    """Every key of settings.OPTIMIZER_KEYS and SCHEDULE_KEYS that changed takes effect after a real Trainer resume,
    weight decay too when the checkpoint had none (its decay group was saved with 0, like the no-decay group)."""
    from transformers.optimization import get_scheduler

    from edugpt.run.settings import OPTIMIZER_KEYS, SCHEDULE_KEYS

    _resumable_trainer(tiny_model_dir, tmp_path, max_steps=2, learning_rate=1e-3, optim="adamw_torch", weight_decay=0.0,
                       adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, lr_scheduler_type="linear",
                       warmup_steps=1).train()
    new = {"max_steps": 6, "learning_rate": 5e-4, "optim": "adamw_torch_fused", "weight_decay": 0.1, "adam_beta1": 0.8,
           "adam_beta2": 0.95, "adam_epsilon": 1e-6, "lr_scheduler_type": "cosine_with_min_lr",
           "lr_scheduler_kwargs": {"min_lr_rate": 0.1}, "warmup_steps": 3}
    assert set(new) | {"num_train_epochs"} == set(OPTIMIZER_KEYS + SCHEDULE_KEYS)  # (epochs: max_steps decides)
    trainer = _resume_with(tiny_model_dir, tmp_path, **new)

    decayed = set(trainer.get_decay_parameter_names(trainer.model))
    names = {id(p): name for name, p in trainer.model.named_parameters()}
    groups = trainer.optimizer.param_groups
    for group in groups:
        decays = {names[id(p)] in decayed for p in group["params"]}
        assert len(decays) == 1 and group["weight_decay"] == (0.1 if decays == {True} else 0.0)
        assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6 and group["initial_lr"] == 5e-4
        assert group["fused"] is True  # adamw_torch_fused, not the checkpoint's foreach AdamW
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.1]
    # The new schedule (type, kwargs, warmup, length) with the new peak, step for step after the resume: the learning
    # rate step s trained with (logged at s) is the schedule's value after s - 1 steps.
    reference = get_scheduler("cosine_with_min_lr", torch.optim.SGD([torch.zeros(1)], lr=5e-4), num_warmup_steps=3,
                              num_training_steps=6, scheduler_specific_kwargs={"min_lr_rate": 0.1})
    logged = {r["step"]: r["learning_rate"] for r in trainer.state.log_history if "learning_rate" in r and r["step"] > 2}
    assert sorted(logged) == [3, 4, 5, 6]
    for step, lr in logged.items():
        assert lr == pytest.approx(5e-4 * reference.lr_lambdas[0](step - 1), rel=1e-9), step


def test_resume_with_another_optimizer_trains_on_with_fresh_optimizer_state(tiny_model_dir, tmp_path, caplog):
    _resumable_trainer(tiny_model_dir, tmp_path, max_steps=2, optim="adamw_torch").train()
    with caplog.at_level("WARNING", logger="edugpt.train.callbacks"):
        trainer = _resume_with(tiny_model_dir, tmp_path, max_steps=4, optim="adafactor")  # AdamW's moments: KeyError
    assert "optimizer state is another optimizer's; adafactor starts with fresh state" in caplog.text
    assert trainer.state.global_step == 4 and type(trainer.optimizer.optimizer).__name__ == "Adafactor"
    assert all("exp_avg_sq_row" in state or "exp_avg_sq" in state for state in trainer.optimizer.state.values())
    assert not any("exp_avg" in state for state in trainer.optimizer.state.values())


def test_a_multi_line_sample_is_one_console_line_written_around_the_progress_bar(gpt2_tokenizer, args, tmp_path,
                                                                                   capsys):
    """A sample's line breaks printed as they are broke Trainer's progress bar across several lines, and a log line
    was glued to the bar; the console now gets one line, written through tqdm (logging_redirect_tqdm: the bar is
    cleared first and drawn again after), while samples.md and metrics.jsonl keep the text as generated."""
    import logging
    import sys

    from tqdm.auto import tqdm

    class TwoLines(samples.SamplesCallback):
        def generate(self, model, prompt):
            return f"{prompt}\nsecond line\n\nthird"

    metrics = MetricsLog(tmp_path / "metrics.jsonl")
    callback = TwoLines(gpt2_tokenizer, ["Once upon a time"], 5, 4, 0, 0, tmp_path / "samples.md", metrics)
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr)  # the console handler setup_logging installs
    console.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    saved = root.handlers[:], root.level
    root.handlers[:], root.level = [console], logging.INFO
    bar = tqdm(total=10, file=sys.stderr)
    try:
        bar.update(3)
        callback.on_train_begin(args, state_at(0), TrainerControl(), model=None)
    finally:
        bar.close()
        root.handlers[:], root.level = saved
    err = capsys.readouterr().err
    assert "\redugpt.train.samples: sample at step 0: Once upon a time ⏎ second line ⏎  ⏎ third\n" in err, repr(err)
    assert "]edugpt" not in err  # not glued to the bar
    assert metrics.read()[0]["sample/text"] == "Once upon a time\nsecond line\n\nthird"
