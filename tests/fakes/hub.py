"""A fake Hugging Face Hub: the HfApi calls edugpt makes, uploads kept in memory, and downloads laid out as
huggingface_hub lays out its cache."""

from __future__ import annotations

import os
import types
from pathlib import Path

FAKE_TOKEN = "hf_FAKEtokenFAKEtokenFAKEtokenFAKE12"  # shaped like a real token (hf_ + 34 characters)


class FakeHub:
    """Stands in for the Hub, which is unreachable here: patch it over `huggingface_hub.HfApi` (edugpt.hub.pusher) and
    `transformers.trainer.hf_api` (Trainer's own pushes). Selects files as the real `HfApi.upload_folder` does
    (`folder.glob("**/*")` regular files, so a symlinked file's target is read; allow/ignore patterns plus
    huggingface_hub's default ignores; `delete_patterns` deletes matching remote files except .gitattributes and
    those uploaded again), and keeps every branch's files with their bytes (`branches[branch][path]`). Records every
    commit (`uploads`: repo_id, revision, message, files added, files deleted, card, the thread that uploaded) and the
    branch of each failed one (`failed`).
    `fail=True` fails every upload like a dropped connection, `fail_on_branch` only that branch's; `fail_times=N` makes
    either fail only N times. The error quotes the token, as some server errors do. As HfApi does, a
    `run_as_future` upload returns a Future holding the outcome; an upload to a branch that does not exist fails.
    Each commit gets an id (`uploads[i]["oid"]`, returned as upload_folder's CommitInfo.oid) and its files are kept
    (`commits`); `save_to_cache` writes a branch or commit as huggingface_hub lays out a download, so the real
    `hf_hub_download` / `snapshot_download` find it there offline, and `hf_hub_download` / `snapshot_download` stand in
    for those functions online (patched over `huggingface_hub`'s). The repo exists once `create_repo` made it or an
    upload went to it; asking for another is the Hub's RepositoryNotFoundError."""

    def __init__(self, fail: bool = False, fail_on_branch: str | None = None, fail_times: int | None = None):
        self.fail, self.fail_on_branch, self.fail_times = fail, fail_on_branch, fail_times
        self.uploads: list[dict] = []
        self.failed: list[str] = []  # the branch of every upload that failed
        self.branches: dict[str, dict[str, bytes]] = {"main": {".gitattributes": b"*.safetensors filter=lfs\n"}}
        self.commits: dict[str, dict[str, bytes]] = {}  # commit id -> the branch's files after that commit
        self.repos: set[str] = set()

    def __call__(self, *args, **kwargs):  # HfApi() / hf_api() -> this instance
        return self

    def _check(self, revision):
        if self.fail or revision == self.fail_on_branch:
            if self.fail_times is not None:
                if self.fail_times <= 0:
                    return
                self.fail_times -= 1
            self.failed.append(revision)
            raise ConnectionError(f"Connection reset by peer (token {FAKE_TOKEN})")
        if revision not in self.branches:
            raise ValueError(f"404 Client Error: Revision Not Found for {revision}")

    def blobs(self):
        """(branch, path, bytes) of every file on the fake Hub."""
        return [(branch, path, data) for branch, files in self.branches.items() for path, data in files.items()]

    def create_repo(self, repo_id, **kwargs):
        from huggingface_hub import RepoUrl

        self.repos.add(repo_id)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, repo_id, *, branch, revision=None, exist_ok=False, **kwargs):
        if branch in self.branches:
            if not exist_ok:
                raise ValueError(f"409 Client Error: Conflict: branch {branch} already exists")
            return
        self.branches[branch] = dict(self.branches[revision or "main"])

    def list_repo_files(self, repo_id, *, revision=None, **kwargs):
        return sorted(self.branches[revision or "main"])

    def _commit(self, repo_id, revision, message, added: dict[str, bytes], deleted: list[str], repo_type=None):
        import hashlib
        import threading

        files = self.branches[revision]
        for path in deleted:
            files.pop(path, None)
        files.update(added)
        card = added.get("README.md")
        self.uploads.append({"repo_id": repo_id, "revision": revision, "message": message, "files": sorted(added),
                             "deleted": sorted(deleted), "card": card.decode() if card is not None else None,
                             "thread": threading.current_thread().name, "repo_type": repo_type or "model",
                             "oid": hashlib.sha1(f"{len(self.uploads)}:{repo_id}:{revision}".encode()).hexdigest()})
        self.commits[self.uploads[-1]["oid"]] = dict(files)
        self.repos.add(repo_id)
        return self.uploads[-1]["oid"]

    def create_commit(self, repo_id, operations, *, revision=None, commit_message=None, **kwargs):
        from huggingface_hub import CommitOperationAdd

        revision = revision or "main"
        self._check(revision)
        added, deleted = {}, []
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                content = op.path_or_fileobj
                added[op.path_in_repo] = content if isinstance(content, bytes) else Path(content).read_bytes()
            else:
                deleted.append(op.path_in_repo)
        self._commit(repo_id, revision, commit_message, added, deleted)

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, revision=None, run_as_future=False,
                      allow_patterns=None, ignore_patterns=None, delete_patterns=None, path_in_repo=None, **kwargs):
        from concurrent.futures import Future

        from huggingface_hub.utils import filter_repo_objects
        from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

        outcome = Future()
        try:
            revision = revision or "main"
            self._check(revision)
            root = Path(folder_path).expanduser().resolve()
            local = {p.relative_to(root).as_posix(): p for p in sorted(root.glob("**/*")) if p.is_file()}
            ignore = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
            names = filter_repo_objects(local, allow_patterns=allow_patterns,
                                        ignore_patterns=ignore + DEFAULT_IGNORE_PATTERNS)
            prefix = f"{path_in_repo.strip('/')}/" if path_in_repo else ""
            added = {prefix + name: local[name].read_bytes() for name in names}
            deleted = []
            if delete_patterns is not None:
                remote = {p[len(prefix):]: p for p in self.branches[revision] if p.startswith(prefix)}
                deleted = [remote[rel] for rel in filter_repo_objects(remote, allow_patterns=delete_patterns)
                           if remote[rel] != ".gitattributes" and remote[rel] not in added]
            oid = self._commit(repo_id, revision, commit_message, added, deleted, kwargs.get("repo_type"))
            outcome.set_result(types.SimpleNamespace(oid=oid))  # as HfApi's CommitInfo
        except (ConnectionError, ValueError) as err:
            outcome.set_exception(err)
        return outcome if run_as_future else outcome.result()

    # --- downloads ------------------------------------------------------------------------------------------------
    def _files_at(self, repo_id, revision):
        import hashlib

        import httpx2
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        url = f"https://huggingface.co/api/datasets/{repo_id}/revision/{revision}"
        if self.fail:
            raise ConnectionError(f"Connection reset by peer (token {FAKE_TOKEN})")
        if repo_id not in self.repos:
            raise RepositoryNotFoundError(f"404 Client Error: Repository Not Found for url: {url}",
                                          response=httpx2.Response(404, request=httpx2.Request("GET", url)))
        revision = revision or "main"
        files = self.branches.get(revision, self.commits.get(revision))
        if files is None:
            raise RevisionNotFoundError(f"404 Client Error: Revision Not Found for url: {url}",
                                        response=httpx2.Response(404, request=httpx2.Request("GET", url)))
        commit = revision if revision in self.commits else \
            next((oid for oid in reversed(list(self.commits)) if self.commits[oid] == files), None)
        if commit is None:  # the branch was changed in place by a test: its state is a commit of its own
            commit = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
            self.commits[commit] = dict(files)
        return files, commit

    def save_to_cache(self, cache_dir, repo_id, *, repo_type="dataset", revision="main", allow_patterns=None) -> Path:
        """Write `revision` (a branch or commit id) of the repo into `cache_dir` as huggingface_hub lays out a download:
        blobs/<sha256>, snapshots/<commit>/<path> as relative links to them, refs/<branch>. Returns the snapshot."""
        import hashlib

        from huggingface_hub.file_download import repo_folder_name
        from huggingface_hub.utils import filter_repo_objects

        files, commit = self._files_at(repo_id, revision)
        storage = Path(cache_dir) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
        snapshot = storage / "snapshots" / commit
        for name in filter_repo_objects(sorted(files), allow_patterns=allow_patterns):
            blob = storage / "blobs" / hashlib.sha256(files[name]).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(files[name])
            link = snapshot / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(os.path.relpath(blob, link.parent))
        snapshot.mkdir(parents=True, exist_ok=True)
        if revision in self.branches:
            (storage / "refs").mkdir(parents=True, exist_ok=True)
            (storage / "refs" / revision).write_text(commit)
        return snapshot

    def hf_hub_download(self, repo_id, filename, *, repo_type=None, revision=None, cache_dir=None, **kwargs):
        """huggingface_hub.hf_hub_download online, from this fake (into `cache_dir` or HF_HUB_CACHE)."""
        from huggingface_hub import constants
        from huggingface_hub.errors import EntryNotFoundError

        files, _ = self._files_at(repo_id, revision)
        if filename not in files:
            raise EntryNotFoundError(f"404 Client Error: Entry Not Found for {filename}")
        snapshot = self.save_to_cache(cache_dir or constants.HF_HUB_CACHE, repo_id, repo_type=repo_type or "model",
                                      revision=revision or "main", allow_patterns=[filename])
        return str(snapshot / filename)

    def snapshot_download(self, repo_id, *, repo_type=None, revision=None, cache_dir=None, allow_patterns=None,
                          **kwargs):
        """huggingface_hub.snapshot_download online, from this fake."""
        from huggingface_hub import constants

        return str(self.save_to_cache(cache_dir or constants.HF_HUB_CACHE, repo_id, repo_type=repo_type or "model",
                                      revision=revision or "main", allow_patterns=allow_patterns))
