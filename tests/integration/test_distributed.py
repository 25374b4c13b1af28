"""Beyond one process, on CPU over gloo: DDP, FSDP2 and "2 nodes x 1 process" give the one-process numbers.

Real `accelerate launch` runs of train_hf.py (through tests/distributed_run.py, which adds FSDP on CPU and faults on
one process) with the shipped accelerate configs, shrunk to 2 processes. Every run trains at the baseline's global
batch (4 blocks of 64 tokens per step) given as `--tokens_per_step 256`: 2 processes x 2 blocks x 1 accumulation
step here, 1 process x 4 blocks in the baseline, 1 process x 2 blocks x 2 steps in the resume below.

Tolerances: the losses agree to 1e-5 (fp32 at ~10.5 is 1e-6 a unit; the sums run in another order). So does the
gradient norm under DDP; under FSDP2 it drifts to ~2e-4 relative over 8 steps while the losses stay within 1e-6:
torch's own FSDP2 loop (fully_shard + AdamW, no Trainer) drifts the same way on this model, so the tolerance there
is 1e-3 relative.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from factories import ROOT, load_train_main, tiny_args, train_records

from edugpt.errors import EduGPTError
from edugpt.run.checkpoints import checkpoint_problem
from edugpt.run.rundir import MARKER, list_checkpoints

SMOKE = "edugpt/assets/eval/python_docs_hellaswag_format_smoke.jsonl"
# The baseline's recipe (factories.TINY: 4 blocks per step, samples at steps 0, 4 and 8, HellaSwag on 12 items at steps
# 4 and 8) on 2 processes.
TWO_PROCESSES = ["--per_device_train_batch_size", "2", "--tokens_per_step", "256",
                 "--hellaswag_steps", "4", "--hellaswag_limit", "12", "--hellaswag_file", SMOKE]
ACCELERATE = ROOT / "configs" / "accelerate"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launch:
    """One `accelerate launch` of tests/distributed_run.py, output to a log file (several run at once)."""

    def __init__(self, config: str, args: list[str], log: Path, env: dict | None = None, machine: int | None = None,
                 port: int | None = None):
        overrides = ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(port or free_port())]
        if machine is not None:  # one of two "nodes", each with one process, meeting on 127.0.0.1
            overrides += ["--num_machines", "2", "--machine_rank", str(machine), "--main_process_ip", "127.0.0.1"]
        command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(ACCELERATE / config),
                   *overrides, str(ROOT / "tests" / "distributed_run.py"), *args]
        self.log = log
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})

    def wait(self) -> str:
        self.proc.wait(timeout=600)
        return self.log.read_text()


def two_nodes(config: str, args: list[str], logs: Path, name: str, env: dict | None = None) -> list[Launch]:
    port = free_port()
    return [Launch(config, args, logs / f"{name}-node{rank}.log", env, machine=rank, port=port) for rank in (0, 1)]


@pytest.fixture(scope="module")
def layouts(baseline, data_dir, tmp_path_factory):
    """All launches at once (8 processes on the CPU), then the 2-node run's resume:
    - ddp: 2 processes (ddp_8gpu.yaml), process 1 gets SIGTERM at step 4, so both stop at step 5;
    - fsdp: 2 processes under FSDP2 (fsdp_8gpu.yaml), 8 steps, HellaSwag on 13 items (7 + 6, one process padded),
      per-item scores written out;
    - nodes: 2 nodes x 1 process under FSDP2 (fsdp_multinode.yaml), node 0 gets SIGTERM at step 4; then the same
      two commands again resume it to step 8;
    - nan: 2 processes, process 1's loss turns NaN at step 3.
    """
    root = tmp_path_factory.mktemp("layouts")
    runs = {name: root / name for name in ("ddp", "fsdp", "nodes", "nan")}
    items = root / "fsdp-hellaswag-items.json"
    first = {
        "ddp": [Launch("ddp_8gpu.yaml", tiny_args(data_dir, runs["ddp"], *TWO_PROCESSES), root / "ddp.log",
                       {"EDUGPT_TEST_SIGTERM": "1:4"})],
        "fsdp": [Launch("fsdp_8gpu.yaml", tiny_args(data_dir, runs["fsdp"], *TWO_PROCESSES, "--hellaswag_limit", "13"),
                        root / "fsdp.log", {"EDUGPT_TEST_HELLASWAG_ITEMS": str(items)})],
        "nodes": two_nodes("fsdp_multinode.yaml", tiny_args(data_dir, runs["nodes"], *TWO_PROCESSES), root, "nodes",
                           {"EDUGPT_TEST_SIGTERM": "0:4"}),
        "nan": [Launch("cpu_ddp_2proc.yaml", tiny_args(data_dir, runs["nan"], *TWO_PROCESSES, "--hellaswag_steps", "0"),
                       root / "nan.log", {"EDUGPT_TEST_NAN": "1:3"})],
    }
    outcome = {name: [(launch.proc.wait(timeout=600), launch.wait()) for launch in launches]
               for name, launches in first.items()}
    stopped = {name: [p.name for p in list_checkpoints(runs[name])] for name in ("ddp", "nodes")}
    stopped["nodes_final_model"] = (runs["nodes"] / "model.safetensors").exists()
    resumed = two_nodes("fsdp_multinode.yaml", tiny_args(data_dir, runs["nodes"], *TWO_PROCESSES), root, "resume")
    outcome["nodes-resume"] = [(launch.proc.wait(timeout=600), launch.wait()) for launch in resumed]
    return {"runs": runs, "outcome": outcome, "stopped": stopped, "items": items, "baseline": baseline[0]}


def assert_close_records(expected, actual, steps, *, grad_norm_rel=1e-5, exact=False):
    """Per-step train loss, gradient norm and learning rate of two runs' metrics.jsonl."""
    a, b = train_records(expected), train_records(actual)
    for step in steps:
        if exact:
            assert all(a[step][k] == b[step][k] for k in ("loss", "grad_norm", "learning_rate")), (step, a[step], b[step])
            continue
        assert abs(a[step]["loss"] - b[step]["loss"]) < 1e-5, (step, a[step], b[step])
        assert math.isclose(a[step]["grad_norm"], b[step]["grad_norm"], rel_tol=grad_norm_rel), (step, a[step], b[step])
        assert a[step]["learning_rate"] == b[step]["learning_rate"], step


def records_with(run_dir: Path, key: str) -> dict[int, dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if key in r}


def assert_same_evaluations(expected, actual, steps, *, hellaswag=True):
    """Validation loss to 1e-5 and in-loop HellaSwag acc / acc_norm exactly, at `steps`."""
    a, b = records_with(expected, "eval_loss"), records_with(actual, "eval_loss")
    for step in steps:
        assert abs(a[step]["eval_loss"] - b[step]["eval_loss"]) < 1e-5, (step, a[step], b[step])
    if hellaswag:
        a, b = records_with(expected, "hellaswag/acc"), records_with(actual, "hellaswag/acc")
        for step in steps:
            for key in ("hellaswag/acc", "hellaswag/acc_norm"):
                assert a[step][key] == b[step][key], (step, key, a[step], b[step])


@pytest.mark.slow
def test_every_layout_gives_the_one_process_numbers(layouts):
    base, runs, outcome = layouts["baseline"], layouts["runs"], layouts["outcome"]
    assert all(code == 0 for name in ("ddp", "fsdp", "nodes", "nodes-resume") for code, _ in outcome[name])
    _, log = outcome["ddp"][0]
    assert "global batch: 256 tokens per optimizer step = 2 process(es) x 2 blocks x 1 accumulation steps" in log
    # DDP: steps 1-5 (it was stopped there; its resume on one process is the next test), evaluations at step 4.
    assert_close_records(base, runs["ddp"], range(1, 6))
    assert_same_evaluations(base, runs["ddp"], [4])
    # FSDP2 on one node: all 8 steps (HellaSwag there scores 13 items: compared item by item below).
    assert_close_records(base, runs["fsdp"], range(1, 9), grad_norm_rel=1e-3)
    assert_same_evaluations(base, runs["fsdp"], [4, 8], hellaswag=False)
    # 2 nodes x 1 process under FSDP2, stopped at step 5 and resumed: all 8 steps and both evaluations.
    assert_close_records(base, runs["nodes"], range(1, 9), grad_norm_rel=1e-3)
    assert_same_evaluations(base, runs["nodes"], [4, 8])
    # Samples (seeded top-k; generated by every process, through the sharded model under FSDP2) are the same text.
    assert (runs["fsdp"] / "samples.md").read_text() == (runs["nodes"] / "samples.md").read_text() \
        == (base / "samples.md").read_text()


@pytest.mark.slow
def test_sigterm_on_one_process_stops_every_process_at_one_step_with_one_checkpoint(layouts):
    outcome, runs, stopped = layouts["outcome"], layouts["runs"], layouts["stopped"]
    ddp_log = outcome["ddp"][0][1]
    nodes_logs = [log for _, log in outcome["nodes"]]
    assert [code for code, _ in outcome["ddp"] + outcome["nodes"]] == [0, 0, 0]
    for signalled, logs in ((1, [ddp_log]), (0, nodes_logs)):
        text = "\n".join(logs)
        assert f"process {signalled}: stopping at step 5 (SIGTERM received here)" in text
        assert f"process {1 - signalled}: stopping at step 5 (SIGTERM received by another process)" in text
    # save_steps 2 made checkpoint-4; the stop made checkpoint-5, complete, and no final model.
    assert stopped["ddp"] == stopped["nodes"] == ["checkpoint-4", "checkpoint-5"] and not stopped["nodes_final_model"]
    assert checkpoint_problem(runs["ddp"] / "checkpoint-5") is None
    assert max(train_records(runs["ddp"])) == 5 and not (runs["ddp"] / "model.safetensors").exists()


@pytest.mark.slow
def test_a_run_resumes_bit_exact_on_the_same_layout(layouts):
    """2 nodes x 1 process under FSDP2, stopped at step 5 and resumed, against the uninterrupted FSDP2 run on one
    node: the same computation, so the same bits."""
    runs, outcome = layouts["runs"], layouts["outcome"]
    assert "resuming from" in outcome["nodes-resume"][0][1] and "checkpoint-5" in outcome["nodes-resume"][0][1]
    assert_close_records(runs["fsdp"], runs["nodes"], range(1, 9), exact=True)
    a, b = records_with(runs["fsdp"], "eval_loss"), records_with(runs["nodes"], "eval_loss")
    assert [a[s]["eval_loss"] for s in (4, 8)] == [b[s]["eval_loss"] for s in (4, 8)]


@pytest.mark.slow
def test_a_checkpoint_resumes_on_another_number_of_processes(layouts, data_dir, tmp_path):
    """The DDP run stopped at step 5 on 2 processes; one process continues it (2 blocks x 2 accumulation steps for
    the same 256 tokens a step) with the same data and optimizer state: steps 6-8 are the baseline's."""
    output_dir = tmp_path / "run"
    shutil.copytree(layouts["runs"]["ddp"], output_dir)
    load_train_main()(tiny_args(data_dir, output_dir, *TWO_PROCESSES))
    assert_close_records(layouts["baseline"], output_dir, range(1, 9))
    assert_same_evaluations(layouts["baseline"], output_dir, [4, 8])
    assert json.loads((output_dir / MARKER).read_text())["settings"]["layout"] == {"processes": 1, "fsdp": None}


@pytest.mark.slow
def test_an_fsdp_checkpoint_is_not_resumed_without_fsdp(layouts, data_dir, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(layouts["runs"]["fsdp"], output_dir)
    for name in ("checkpoint-8", MARKER, "model.safetensors"):  # as if stopped after checkpoint-6
        path = output_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    before = {p: p.read_bytes() for p in output_dir.rglob("*") if p.is_file() and p.name != ".edugpt.lock"}
    with pytest.raises(EduGPTError, match=r"cannot resume from .*checkpoint-6: it was written by 2 processes under "
                                          r"FSDP2 and this run has 1 process without FSDP"):
        load_train_main()(tiny_args(data_dir, output_dir, *TWO_PROCESSES))
    assert {p: p.read_bytes() for p in output_dir.rglob("*") if p.is_file() and p.name != ".edugpt.lock"} == before


@pytest.mark.slow
def test_fsdp_checkpoints_are_plain_hf_folders_and_sharded_hellaswag_is_lm_evals_item_by_item(layouts):
    """Under FSDP2 each process scored about half the items through the sharded model; process 0's gathered
    scores are, item by item, what lm-eval gives on the checkpoint saved at that step, loaded by HFLM (what
    `lm_eval --model hf` runs) in one process."""
    import torch
    from transformers import AutoModelForCausalLM

    from edugpt.eval.harness import evaluate_checkpoint
    from edugpt.eval.hellaswag import per_item_scores

    run = layouts["runs"]["fsdp"]
    checkpoint = run / "checkpoint-8"
    assert {"pytorch_model_fsdp.bin", "optimizer.bin", "model.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    assert checkpoint_problem(checkpoint) is None and checkpoint_problem(run, require_trainer_state=False) is None
    saved, final = AutoModelForCausalLM.from_pretrained(checkpoint), AutoModelForCausalLM.from_pretrained(run)
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), final.state_dict().values()))

    logged = json.loads(layouts["items"].read_text())["8"]
    assert logged["items_per_process"] == [7, 6]
    assert "HellaSwag at step 8: 13 items scored by 2 processes (7 + 6)" in layouts["outcome"]["fsdp"][0][1]
    assert "12 items scored by 2 processes (6 + 6)" in layouts["outcome"]["ddp"][0][1]
    results = evaluate_checkpoint(str(checkpoint), ["hellaswag"], limit=13, batch_size=4, hellaswag_file=SMOKE,
                                  device="cpu", log_samples=True)
    single = per_item_scores(results, "hellaswag_local")
    assert [i["doc_id"] for i in logged["items"]] == [i["doc_id"] for i in single] == list(range(13))
    for sharded, alone in zip(logged["items"], single):
        assert (sharded["acc"], sharded["acc_norm"]) == (alone["acc"], alone["acc_norm"])
        # Other batch neighbours, so the last float bits of a summed log-likelihood may move.
        assert sharded["loglikelihoods"] == pytest.approx(alone["loglikelihoods"], rel=1e-6, abs=1e-5)


@pytest.mark.slow
def test_a_non_finite_loss_on_one_process_stops_every_process(layouts):
    (code, log), run = layouts["outcome"]["nan"][0], layouts["runs"]["nan"]
    assert code != 0
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all("became nan at step 3" in line for line in errors), log[-3000:]
    assert max(train_records(run)) == 3 and [p.name for p in list_checkpoints(run)] == ["checkpoint-2"]
    assert not (run / "model.safetensors").exists()


def test_the_slurm_script_starts_one_accelerate_launch_per_node_and_requeues_a_stopped_run(tmp_path):
    """scripts/slurm_train.sbatch with stand-ins for Slurm's srun/scontrol and for accelerate (no cluster here):
    each node gets its own machine rank and the job's first host as the rendezvous; a run that stopped at a
    checkpoint (no final completion marker) is requeued, a finished one is not."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    stand_ins = {
        # srun runs its command once per node, as Slurm does, with that node's SLURM_NODEID.
        "srun": 'shift; for node in $(seq 0 $((SLURM_JOB_NUM_NODES - 1))); do SLURM_NODEID=$node "$@" || exit; done',
        "scontrol": 'if [ "$1" = show ]; then printf "gpu-a17\\ngpu-a18\\n"; else echo "scontrol $*" >> "$CALLS"; fi',
        "accelerate": 'echo "accelerate $*" >> "$CALLS"',
    }
    for name, body in stand_ins.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), "RUN_DIR": str(run_dir),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu-a[17-18]"}
    for finished in (False, True):
        calls.write_text("")
        if finished:
            (run_dir / MARKER).write_text("{}")
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "slurm_train.sbatch"), "--max_steps", "10"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        lines = calls.read_text().splitlines()
        launches = [line for line in lines if line.startswith("accelerate")]
        assert len(launches) == 2
        for rank, line in enumerate(launches):
            assert (f"--config_file configs/accelerate/ddp_multinode.yaml --num_machines 2 --num_processes 16 "
                    f"--machine_rank {rank} --main_process_ip gpu-a17 --main_process_port 29500 train_hf.py "
                    f"--config configs/gpt2_270m.yaml --dataset_dir data/prepared/edu10B --output_dir {run_dir} "
                    "--max_steps 10") in line
        assert ("scontrol requeue 4242" in lines) is not finished


@pytest.mark.parametrize(("saved", "now", "refused"), [
    ({"processes": 2, "fsdp": None}, {"processes": 1, "fsdp": None}, False),  # DDP -> 1 process: same blocks per step
    ({"processes": 16, "fsdp": 2}, {"processes": 8, "fsdp": 2}, False),  # FSDP2 on fewer GPUs: full state re-sharded
    ({"processes": 2, "fsdp": 2}, {"processes": 2, "fsdp": None}, True),
    ({"processes": 2, "fsdp": None}, {"processes": 2, "fsdp": 2}, True),
    ({"processes": 8, "fsdp": 1}, {"processes": 8, "fsdp": 2}, True),
    (None, {"processes": 1, "fsdp": None}, False),
])
def test_which_layout_changes_a_resume_accepts(saved, now, refused):
    from edugpt.run.settings import layout_problem

    problem = layout_problem(saved, now)
    assert (problem is not None) is refused
    if refused:
        assert problem.startswith(f"it was written by {saved['processes']} processes")


def test_a_checkpoint_without_a_marker_of_this_format_has_no_layout(tmp_path):
    """The layout is read from the marker only (every marker of this format records it), never guessed from file
    names: a checkpoint without such a marker is not whole, so it is never resumed from."""
    from edugpt.run.settings import checkpoint_layout

    for name in ("model.safetensors", "rng_state_0.pth", "rng_state_1.pth", "pytorch_model_fsdp.bin"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / MARKER).write_text(json.dumps({"files": {}, "settings": {"layout": {"processes": 2, "fsdp": 2}}}))
    assert checkpoint_layout(tmp_path) is None and "has format None" in checkpoint_problem(tmp_path)
