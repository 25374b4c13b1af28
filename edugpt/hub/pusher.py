"""Pushes of one run directory to one repo: each upload staged (edugpt.hub.stage), every staged byte scanned for
tokens (edugpt.hub.secrets), then `HfApi.upload_folder` of that folder, one commit with the card. A step-N branch
(`create_branch`) ends up holding exactly its checkpoint's files (`delete_patterns`); main gains or replaces files
(weight files that are not uploaded again are deleted, so a sharded model does not sit beside an older single file).

Pushes during training run on a background thread, one at a time; a failed one is kept (staged in
RUN_DIR/.edugpt-upload) and retried at the next save, at the end of training, by running the same command again or
by publish.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.hub.plan import BranchUpload, staged_steps
from edugpt.hub.secrets import known_token_bytes, scan_file, scrub
from edugpt.hub.stage import StagedUpload, remove_staging_root, stage_upload, staged_leftovers, staging_root

logger = logging.getLogger(__name__)


class PushError(EduGPTError):
    """The Hub refused or could not take an upload; `reason` is the short cause (exception type and scrubbed text)."""

    def __init__(self, repo_id: str, reason: str):
        self.reason = reason
        super().__init__(f"pushing to {repo_id} failed ({reason}); the local run is unchanged, check the repo id and "
                         "that your token has write access, then run publish.py again.")


class HubPusher:
    """Uploads of one run directory to one repo, each staged, scanned and uploaded by `upload_folder`.

    `push(upload)` does it now and raises. `submit(upload)` stages now (hardlinks: instant, and the checkpoint may
    then be deleted) and scans and uploads on a background thread, one upload at a time, never raising; a failed
    upload is kept and tried again at the next `submit` (the next save) and by `finish_pending()`, and `failures`
    says what is still not on the Hub. A newer upload to the same branch replaces one that has not started yet."""

    def __init__(self, run_dir: str | os.PathLike, repo_id: str, *, private: bool | None = None):
        self.run_dir = Path(run_dir)
        self.repo_id = repo_id
        self.private = private
        self.failures: dict[str, str] = {}  # branch -> why its last attempt failed
        self._api = None
        self._lock = threading.Lock()
        self._pending: dict[str, StagedUpload] = {}
        self._thread: threading.Thread | None = None
        self._current: StagedUpload | None = None  # the upload the background thread is working on
        self._staging_root: Path | None = None

    # ---- staging
    def _stage(self, upload: BranchUpload) -> StagedUpload:
        if self._staging_root is None:
            self._staging_root = staging_root(self.run_dir)
        return stage_upload(upload, self._staging_root)

    def adopt_pending(self) -> None:
        """Take up step branches a previous attempt of this run staged but could not push (retried at the next save
        and at the end); drop its other leftovers (a main push that a newer one supersedes anyway)."""
        self._pending.update(staged_leftovers(self.run_dir))

    def _tidy(self) -> None:
        if self._staging_root is not None and not self._pending and remove_staging_root(self.run_dir,
                                                                                         self._staging_root):
            self._staging_root = None

    # ---- uploading
    def _hub(self):
        if self._api is None:
            from huggingface_hub import HfApi

            api = HfApi()
            self.repo_id = api.create_repo(self.repo_id, private=self.private, exist_ok=True).repo_id
            self._api = api
        return self._api

    def _upload(self, staged: StagedUpload) -> None:
        """Scan, then upload; raises EduGPTError for a token, PushError when the Hub fails."""
        tokens = known_token_bytes()
        for path, label in staged.unscanned:
            scan_file(path, label, tokens)
        try:
            api = self._hub()
            if staged.branch != "main":
                api.create_branch(self.repo_id, branch=staged.branch, exist_ok=True)
            api.upload_folder(repo_id=self.repo_id, folder_path=str(staged.folder), revision=staged.branch,
                              commit_message=staged.message, delete_patterns=staged.delete_patterns)
        except Exception as err:
            raise PushError(self.repo_id, f"{type(err).__name__}: {scrub(str(err))}") from None
        logger.info("pushed %s to %s", staged.branch, self.repo_id)  # one line per pushed branch (failures: record_failure)
        if staged.branch.startswith("step-"):  # a staged copy left by an earlier attempt is now on the Hub
            for step, folder in staged_steps(self.run_dir):
                if f"step-{step}" == staged.branch and folder != staged.folder:
                    shutil.rmtree(folder, ignore_errors=True)

    def push(self, upload: BranchUpload) -> None:
        """Stage, scan and upload now; an upload still waiting for the same branch is superseded."""
        self.wait()
        with self._lock:
            old = self._pending.pop(upload.branch, None)
        staged = None
        try:
            staged = self._stage(upload)
            self._upload(staged)
            self.failures.pop(upload.branch, None)
        except EduGPTError as err:
            self.failures[upload.branch] = getattr(err, "reason", str(err))
            raise
        finally:
            for folder in (staged.folder if staged else None, old.folder if old else None):
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
            self._tidy()

    def submit(self, upload: BranchUpload) -> None:
        """Stage now, upload in the background; never raises (a failure is logged and kept in `failures`)."""
        try:
            staged = self._stage(upload)
        except Exception as err:
            self.record_failure(upload.branch, err)
            return
        with self._lock:
            old = self._pending.get(upload.branch)
            self._pending[upload.branch] = staged
            for waiting in self._pending.values():
                waiting.due = True  # this save retries every upload that failed before
            if old is not None and old is not self._current:
                shutil.rmtree(old.folder, ignore_errors=True)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="edugpt-hub-push", daemon=True)
                self._thread.start()

    def record_failure(self, branch: str, err: Exception) -> None:
        """Keep why `branch` is not on the Hub in `failures` and log one warning line (the token scrubbed)."""
        reason = getattr(err, "reason", None) or (str(err) if isinstance(err, EduGPTError)
                                                  else f"{type(err).__name__}: {scrub(str(err))}")
        self.failures[branch] = reason
        again = "; it is tried again at the next save and at the end" if isinstance(err, PushError) else ""
        logger.warning("pushing %s to %s failed (%s)%s", branch, self.repo_id, reason, again)

    def _work(self) -> None:
        # A daemon thread: if the process ends mid-upload, the Hub keeps no partial commit and the staged files stay
        # in RUN_DIR/.edugpt-upload for the next attempt.
        while True:
            with self._lock:
                due = [s for s in self._pending.values() if s.due]
                if not due:
                    self._thread = None
                    return
                staged = due[0]
                staged.due = False
                self._current = staged
            done = False
            try:
                self._upload(staged)
                self.failures.pop(staged.branch, None)
                done = True
            except EduGPTError as err:
                self.record_failure(staged.branch, err)
                done = not isinstance(err, PushError)  # a token: trying again cannot help, the files stay local
            except Exception as err:  # anything else must not end the thread silently
                self.record_failure(staged.branch, err)
            with self._lock:
                self._current = None
                current = self._pending.get(staged.branch) is staged
                if done and current:
                    del self._pending[staged.branch]
                if done or not current:
                    shutil.rmtree(staged.folder, ignore_errors=True)

    def wait(self) -> None:
        """Until the background thread has nothing left to try."""
        while (thread := self._thread) is not None:
            thread.join()

    def finish_pending(self) -> dict[str, str]:
        """Try every upload still waiting once more, now; returns {branch: reason} of those that remain unpushed
        (staged in RUN_DIR/.edugpt-upload: the same command again, or publish.py --branches, pushes them)."""
        self.wait()
        with self._lock:
            for waiting in self._pending.values():
                waiting.due = True
            self._thread = threading.current_thread()
        self._work()
        self._tidy()
        return dict(self.failures)

