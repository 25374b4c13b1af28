"""edugpt.run.decide: every rule of resume / restore / already finished / start / start over / refuse, as a table of
cases over fake folder views (no files, no training: milliseconds each). The same rules on real runs:
tests/integration/test_lifecycle.py, tests/integration/test_faults.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from edugpt.errors import EduGPTError
from edugpt.run.decide import CheckpointView, FolderView, ResumeRequest, decide, resume_request, starts_over

RUN = Path("/runs/x")
SETTINGS = {"learning_rate": 0.001, "seed": 0, "layout": {"processes": 1, "fsdp": None}}
LAYOUT = {"processes": 2, "fsdp": None}


def checkpoint(step: int, *, reached_end: bool = False, settings: dict | None = SETTINGS, problem: str | None = None,
               folder: Path = RUN) -> CheckpointView:
    return CheckpointView(folder / f"checkpoint-{step}", step, problem, settings, LAYOUT, reached_end)


EXPLICIT = Path("/old/checkpoint-4")
OTHER_SETTINGS = {**SETTINGS, "learning_rate": 0.002}


def explicit(**kw) -> CheckpointView:
    return checkpoint(4, folder=EXPLICIT.parent, **kw)


# (id, folder view, request, resume_with_changes, expected: {field: value} of the Decision)
DECISIONS = [
    ("new folder: start from step 0", FolderView(RUN), ResumeRequest(), False,
     {"checkpoint": None, "finished": False, "restore_from": None, "changes": {}, "needs_training": True}),
    ("a run: resume from its newest valid checkpoint", FolderView(RUN, True, checkpoint(4)), ResumeRequest(), False,
     {"checkpoint": RUN / "checkpoint-4", "checkpoint_layout": LAYOUT, "needs_training": True, "warnings": []}),
    ("a run without a valid checkpoint: start over from step 0", FolderView(RUN, True), ResumeRequest(), False,
     {"checkpoint": None, "needs_training": True}),
    ("a whole final model: finished", FolderView(RUN, True, checkpoint(8, reached_end=True), "whole", SETTINGS),
     ResumeRequest(), False, {"finished": True, "restore_from": None, "needs_training": False}),
    ("a whole final model without checkpoints: finished", FolderView(RUN, True, None, "whole", SETTINGS),
     ResumeRequest(), False, {"finished": True, "checkpoint": None, "needs_training": False}),
    ("final model missing, last-step checkpoint: restore", FolderView(RUN, True, checkpoint(8, reached_end=True)),
     ResumeRequest(), False,
     {"restore_from": RUN / "checkpoint-8", "needs_training": False,
      "warnings": [f"the final model in {RUN} is missing; restoring it from {RUN / 'checkpoint-8'}"]}),
    ("final model damaged, last-step checkpoint: restore",
     FolderView(RUN, True, checkpoint(8, reached_end=True), "damaged"), ResumeRequest(), False,
     {"restore_from": RUN / "checkpoint-8",
      "warnings": [f"the final model in {RUN} is damaged; restoring it from {RUN / 'checkpoint-8'}"]}),
    ("final model damaged, checkpoint before the end: resume", FolderView(RUN, True, checkpoint(4), "damaged"),
     ResumeRequest(), False, {"checkpoint": RUN / "checkpoint-4", "restore_from": None, "needs_training": True}),
    ("changed settings allowed: resume with them", FolderView(RUN, True, checkpoint(4, settings=OTHER_SETTINGS)),
     ResumeRequest(), True,
     {"checkpoint": RUN / "checkpoint-4", "changes": {"learning_rate": (0.002, 0.001)},
      "warnings": [f"resuming from {RUN / 'checkpoint-4'} with changed settings: learning_rate"]}),
    ("changed settings on a finished run: train on",
     FolderView(RUN, True, checkpoint(8, reached_end=True), "whole", OTHER_SETTINGS), ResumeRequest(), True,
     {"finished": False, "checkpoint": RUN / "checkpoint-8", "needs_training": True,
      "changes": {"learning_rate": (0.002, 0.001)}}),
    ("changed settings instead of a restore: train on",
     FolderView(RUN, True, checkpoint(8, reached_end=True, settings=OTHER_SETTINGS)), ResumeRequest(), True,
     {"restore_from": None, "needs_training": True}),
    ("a marker without settings: nothing compared", FolderView(RUN, True, checkpoint(4, settings=None)),
     ResumeRequest(), False, {"changes": {}, "checkpoint": RUN / "checkpoint-4"}),
    ("another layout is not a changed setting",
     FolderView(RUN, True, checkpoint(4, settings={**SETTINGS, "layout": LAYOUT})), ResumeRequest(), False,
     {"changes": {}}),
    ("a key only one side has is not compared", FolderView(RUN, True, checkpoint(4, settings={"optim": "sgd"})),
     ResumeRequest(), False, {"changes": {}}),
    ("--resume_from_checkpoint last: the newest valid checkpoint", FolderView(RUN, True, checkpoint(4)),
     resume_request("last"), False, {"checkpoint": RUN / "checkpoint-4"}),
    ("--resume_from_checkpoint true on a finished run: finished", FolderView(RUN, True, None, "whole", SETTINGS),
     resume_request("true"), False, {"finished": True}),
    ("--resume_from_checkpoint true with a restore: restore", FolderView(RUN, True, checkpoint(8, reached_end=True)),
     resume_request("true"), False, {"restore_from": RUN / "checkpoint-8"}),
    ("PATH into a new folder: resume from it", FolderView(RUN, explicit=explicit()), resume_request(str(EXPLICIT)),
     False, {"checkpoint": EXPLICIT, "checkpoint_layout": LAYOUT, "needs_training": True}),
    ("PATH of the run's own latest checkpoint", FolderView(RUN, True, explicit=checkpoint(4),
                                                           recorded=(("checkpoint-2", 2, False), ("checkpoint-4", 4, True))),
     resume_request(str(RUN / "checkpoint-4")), False, {"checkpoint": RUN / "checkpoint-4"}),
    ("PATH with only earlier checkpoints in the folder",
     FolderView(RUN, True, explicit=explicit(), recorded=(("checkpoint-2", 2, False),)),
     resume_request(str(EXPLICIT)), False, {"checkpoint": EXPLICIT}),
    ("PATH with changed settings allowed", FolderView(RUN, explicit=explicit(settings=OTHER_SETTINGS)),
     resume_request(str(EXPLICIT)), True, {"checkpoint": EXPLICIT, "changes": {"learning_rate": (0.002, 0.001)}}),
]


@pytest.mark.parametrize(("folder", "request_", "with_changes", "expected"),
                         [case[1:] for case in DECISIONS], ids=[case[0] for case in DECISIONS])
def test_decide(folder, request_, with_changes, expected):
    decision = decide(folder, request_, SETTINGS, resume_with_changes=with_changes)
    assert {name: getattr(decision, name) for name in expected} == expected


# (id, folder view, request, resume_with_changes, the error's text: a regular expression)
REFUSALS = [
    ("changed settings", FolderView(RUN, True, checkpoint(4, settings=OTHER_SETTINGS)), ResumeRequest(), False,
     r"^cannot resume from /runs/x/checkpoint-4: the run's settings changed \(learning_rate: 0\.002 in the checkpoint, "
     r"0\.001 now\)\. Use the checkpoint's values, a new output_dir, or --resume_with_changes"),
    ("changed settings of a finished run", FolderView(RUN, True, None, "whole", OTHER_SETTINGS), ResumeRequest(),
     False, r"^cannot resume from /runs/x: the run's settings changed"),
    ("--resume_from_checkpoint last with nothing to resume", FolderView(RUN, True), resume_request("last"), False,
     r"^--resume_from_checkpoint last asks to resume, but output_dir '/runs/x' holds no valid checkpoint of this run; "
     r"leave the option out to start from step 0, or pass a checkpoint-N folder\.$"),
    ("--resume_from_checkpoint True in a new folder", FolderView(RUN), resume_request(True), False,
     r"^--resume_from_checkpoint True asks to resume"),
    ("PATH that is not whole", FolderView(RUN, explicit=explicit(problem="no edugpt-complete.json")),
     resume_request(str(EXPLICIT)), False,
     r"^--resume_from_checkpoint '/old/checkpoint-4' is not a usable checkpoint \(no edugpt-complete\.json\); pass a "
     r"complete checkpoint-N folder\.$"),
    ("PATH behind later checkpoints",
     FolderView(RUN, True, explicit=explicit(), recorded=(("checkpoint-4", 4, False), ("checkpoint-6", 6, False))),
     resume_request(str(EXPLICIT)), False,
     r"^output_dir '/runs/x' already holds checkpoint-4, checkpoint-6, which training from checkpoint-4 would "
     r"overwrite; resume into a new output_dir \(they are kept\), or pass --overwrite_output_dir"),
    ("PATH of another name: every checkpoint is later",
     FolderView(RUN, True, explicit=CheckpointView(Path("/old/best"), None, None, SETTINGS),
                recorded=(("checkpoint-2", 2, False),)),
     resume_request("/old/best"), False, r"already holds checkpoint-2, which training from best would overwrite"),
    ("PATH into a folder with a final model", FolderView(RUN, True, final="whole", explicit=explicit()),
     resume_request(str(EXPLICIT)), False, r"already holds a final model, which training from checkpoint-4"),
    ("PATH into a folder with a damaged final model", FolderView(RUN, True, final="damaged", explicit=explicit()),
     resume_request(str(EXPLICIT)), False, r"already holds a final model"),
    ("PATH with changed settings", FolderView(RUN, explicit=explicit(settings=OTHER_SETTINGS)),
     resume_request(str(EXPLICIT)), False, r"^cannot resume from /old/checkpoint-4: the run's settings changed"),
]


@pytest.mark.parametrize(("folder", "request_", "with_changes", "message"),
                         [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS])
def test_decide_refuses(folder, request_, with_changes, message):
    with pytest.raises(EduGPTError, match=message):
        decide(folder, request_, SETTINGS, resume_with_changes=with_changes)


BASE = Path("/models/base")
# (id, folder view, overwrite_output_dir, True / False / the error's text)
START_OVER = [
    ("a new folder is not started over", FolderView(RUN, root=RUN), True, False),
    ("a run without --overwrite_output_dir is resumed", FolderView(RUN, True, root=RUN), False, False),
    ("a run with --overwrite_output_dir", FolderView(RUN, True, root=RUN,
                                                     inputs=(("--model_name_or_path", BASE, BASE),)), True, True),
    ("not when the checkpoint to resume lies in it",
     FolderView(RUN, True, root=RUN, inputs=(("--resume_from_checkpoint", Path("x/checkpoint-2"), RUN / "checkpoint-2"),)),
     True, r"^--overwrite_output_dir would delete x/checkpoint-2, the --resume_from_checkpoint this run loads; pass a "
           r"new output_dir \(or copy that model out of this one first\)\.$"),
    ("not when the base model is the folder itself",
     FolderView(RUN, True, root=RUN, inputs=(("--model_name_or_path", Path("x"), RUN),)), True,
     r"would delete x, the --model_name_or_path this run loads"),
]


@pytest.mark.parametrize(("folder", "overwrite", "expected"), [case[1:] for case in START_OVER],
                         ids=[case[0] for case in START_OVER])
def test_starts_over(folder, overwrite, expected):
    if isinstance(expected, str):
        with pytest.raises(EduGPTError, match=expected):
            starts_over(folder, ResumeRequest(), overwrite)
    else:
        assert starts_over(folder, ResumeRequest(), overwrite) is expected


@pytest.mark.parametrize(("value", "last", "path"), [
    (None, False, None), ("true", True, None), ("True", True, None), (True, True, None), ("LAST", True, None),
    ("last", True, None), ("runs/x/checkpoint-2", False, Path("runs/x/checkpoint-2")), ("lastly", False, Path("lastly")),
])
def test_resume_request_reads_true_last_and_paths(value, last, path):
    request = resume_request(value)
    assert (request.value, request.last, request.path) == (value, last, path)
