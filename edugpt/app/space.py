"""The page of `edugpt.app.page` as a Hugging Face Space beside a published model: its curves, samples and a chat with the
model's main and each `step-N` branch.

    # offline: DIR/main/ ... as publish.py writes them, and DIR/space/, the Space's exact upload
    python publish.py runs/demo/sft --hub_model_id you/edugpt-demo-sft --space you/edugpt-demo-chat --dry_run DIR
    python publish.py runs/demo/sft --hub_model_id you/edugpt-demo-sft --space you/edugpt-demo-chat

`--space` is a flag of publish.py, not a command of its own: a Space is only as good as the model repo it reads, so
the same command pushes the model first (same token check, same dry run) and the Space second, pointing at it.

The Space holds exactly the files `plan_space` lists, nothing else:
- app.py: three lines starting `edugpt.app.page` on the model repo (`--hub_model_id`);
- edugpt/: the package modules the page imports (found by following edugpt/app/page.py's imports) and the chat template;
- requirements.txt: the libraries the page uses, pinned to the versions installed here, where its tests ran (gradio
  itself comes from the README's sdk_version, as Spaces install it);
- README.md: the Space's metadata (sdk: gradio, sdk_version, app_file, python_version, models).
They go up through edugpt.hub.publish's guarded path: staged as one folder (each file copied without following links and
scanned for tokens before it is written), then one `upload_folder` commit; a dry run is that folder.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.hub import publish
from edugpt.hub.plan import BranchUpload, PlannedFile
from edugpt.hub.pusher import PushError
from edugpt.hub.secrets import scrub
from edugpt.hub.stage import stage
from edugpt.io.net import require_repo_id

PACKAGE = Path(__file__).resolve().parents[1]
APP_FILE = "app.py"
REQUIREMENTS = "requirements.txt"
# The libraries the page runs on in a Space besides gradio (the Space's sdk): torch and transformers for the model,
# tokenizers and safetensors under them, jinja2 for the chat template, huggingface_hub for the model repo.
SPACE_LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors", "huggingface_hub", "jinja2")
# read by edugpt.model.chat (the page's chat); the model card's template is not: the page never writes a card
SPACE_DATA = ("templates/chat_template.jinja",)


@dataclass
class SpacePlan:
    space_id: str
    model_id: str
    upload: BranchUpload  # the files (by path in the Space) and its README as the "card"

    def files(self) -> list[str]:
        return sorted([*self.upload.files, "README.md"])


def package_modules(start: str = "edugpt.app.page") -> list[Path]:
    """The package's .py files `start` imports, directly or through each other, also inside functions (a module
    imported lazily is still needed when that function runs)."""
    found, todo = set(), [start]
    while todo:
        name = todo.pop()
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        if not path.is_file():
            path = PACKAGE.parent / name.replace(".", "/") / "__init__.py"
        if path in found or not path.is_file():
            continue
        found.add(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names if alias.name.split(".")[0] == "edugpt"]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "edugpt":
                todo += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    found |= {parent / "__init__.py" for path in found for parent in path.parents if PACKAGE in (parent, *parent.parents)}
    return sorted(found)


def requirements() -> str:
    """requirements.txt: SPACE_LIBRARIES at the versions installed here (a local build label such as +cpu dropped:
    PyPI has no such file)."""
    return "".join(f"{name}=={version(name).split('+')[0]}\n" for name in SPACE_LIBRARIES)


def app_source(model_id: str) -> str:
    return (f'"""The edugpt page for the model repo {model_id}: curves, samples, chat (edugpt/app/page.py)."""\n\n'
            "from edugpt.app.page import main\nfrom edugpt.config.cli import run\n\n"
            f"run(lambda: main([\"--hub_model_id\", {json.dumps(model_id)}]))\n")


def space_readme(space_id: str, model_id: str, license: str) -> str:
    from huggingface_hub import SpaceCard, SpaceCardData

    data = SpaceCardData(title=space_id.split("/")[-1][:30], sdk="gradio", sdk_version=version("gradio"),
                         app_file=APP_FILE, python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
                         license=license, models=[model_id], emoji="💬", colorFrom="blue", colorTo="indigo",
                         pinned=False, short_description="Curves, samples and a chat with an edugpt model")
    body = (f"# {space_id.split('/')[-1]}\n\nThe training curves, samples and a chat with "
            f"[{model_id}](https://huggingface.co/{model_id}): its `main` and each `step-N` branch (a checkpoint) "
            "answer side by side. Made by edugpt's `publish.py --space`; the page is `edugpt/app/page.py`, which also runs "
            "locally on a run directory: `python -m edugpt.app.page RUN`.\n")
    return str(SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _planned(path: Path) -> PlannedFile:
    st = os.lstat(path)
    return PlannedFile(path, st.st_size, (st.st_dev, st.st_ino))


def plan_space(space_id: str, model_id: str, source: Path, *, license: str = "mit") -> SpacePlan:
    """The Space's upload: app.py and requirements.txt written into `source` (a new folder of the caller's), the
    package's modules and chat template as they are, and the README. Nothing else is ever in it."""
    (source / APP_FILE).write_text(app_source(model_id), encoding="utf-8")
    (source / REQUIREMENTS).write_text(requirements(), encoding="utf-8")
    files = {APP_FILE: _planned(source / APP_FILE), REQUIREMENTS: _planned(source / REQUIREMENTS)}
    for path in [*package_modules(), *(PACKAGE / rel for rel in SPACE_DATA)]:
        files[f"edugpt/{path.relative_to(PACKAGE).as_posix()}"] = _planned(path)
    upload = BranchUpload("main", PACKAGE, files, space_readme(space_id, model_id, license),
                              message=f"The edugpt page for {model_id}", delete_patterns=["edugpt/*", "*.py"])
    return SpacePlan(space_id, model_id, upload)


def check_space(space_id: str, model_id: str | None, *, dry_run: bool) -> tuple[str, str]:
    """(Space id, model repo id), both whole ('owner/name'), or one EduGPTError; publish.py calls it before the model
    goes up. Without a dry run: a token, a reachable Hub, and the Hub's answer to who owns a bare 'name'."""
    if model_id is None:
        raise EduGPTError("--space shows a model repo: pass the run directory with --hub_model_id (the Space reads "
                          "that repo), not --hub_dataset_id.")
    require_repo_id(space_id)
    require_repo_id(model_id)
    if dry_run:
        return space_id, model_id
    return publish.require_push_ready(space_id), publish.require_push_ready(model_id)


def publish_space(space_id: str, model_id: str, *, dry_run: str | os.PathLike | None = None,
                  private: bool | None = None, license: str = "mit") -> str:
    """Stage the Space (every byte scanned for tokens), then write it as the folder `dry_run` (all or nothing) or
    upload it as one commit to the Space repo (created as a gradio Space if new). Returns the folder or the URL."""
    space_id, model_id = check_space(space_id, model_id, dry_run=dry_run is not None)
    with tempfile.TemporaryDirectory(prefix="edugpt-space-") as tmp:
        source, staged = Path(tmp) / "source", Path(tmp) / "staged"
        source.mkdir()
        plan = plan_space(space_id, model_id, source, license=license)
        stage(plan.upload, staged, link=False)  # copies, each scanned before it is written
        print(f"{'space':>12}: {len(plan.files())} files ({', '.join(plan.files()[:3])}, ...) for {space_id}, "
              f"reading {model_id}")
        if dry_run is not None:
            return str(_move_into_place(staged, Path(dry_run)))
        from huggingface_hub import HfApi

        try:
            api = HfApi()
            space_id = api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private,
                                       exist_ok=True).repo_id
            api.upload_folder(repo_id=space_id, repo_type="space", folder_path=str(staged),
                              commit_message=plan.upload.message, delete_patterns=plan.upload.delete_patterns)
        except Exception as err:
            raise PushError(space_id, f"{type(err).__name__}: {scrub(str(err))}") from None
    return f"https://huggingface.co/spaces/{space_id}"


def _move_into_place(staged: Path, dest: Path) -> Path:
    """`staged` becomes `dest` (a new or empty folder) in one rename; nothing is left there on failure."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise EduGPTError(f"{dest} already exists and is not empty; pass a new --dry_run folder.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copytree(staged, tmp, dirs_exist_ok=True)
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
