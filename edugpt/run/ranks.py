"""Rank 0 decides, every rank learns the outcome: under several processes only rank 0 holds output_dir's lock and reads
the folder, and every rank gets the same result or the same error, so a refused run never leaves other ranks waiting
in a collective."""

from __future__ import annotations

from edugpt.errors import EduGPTError


def on_main_then_shared(training_args, decide):
    """Run `decide()` on rank 0 only and return its result on every rank; an EduGPTError (or a crash) there is
    raised on every rank, so no rank is left waiting in a collective for one that gave up."""
    state = training_args.distributed_state
    if state is None or state.num_processes == 1:
        return decide()
    from accelerate.utils import broadcast_object_list

    outcome = [None]
    if state.is_main_process:
        try:
            outcome = [("ok", decide())]
        except EduGPTError as err:
            outcome = [("error", str(err))]
        except BaseException as err:
            broadcast_object_list([("crash", f"{type(err).__name__} on rank 0")], from_process=0)
            raise
    broadcast_object_list(outcome, from_process=0)
    kind, value = outcome[0]
    if kind == "error":
        raise EduGPTError(value)
    if kind == "crash":
        raise RuntimeError(f"rank 0 failed while preparing output_dir ({value})")
    return value
