"""edugpt.app.page (the web page for run directories) and edugpt.app.space (the same page as a Hub Space)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from factories import ROOT

from edugpt.run import rundir

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file under `folder`: (size, mtime, SHA-256), to show a folder was only read."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns,
                                               hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("make", ["missing", "file", "plain folder", "broken run_config"])
def test_a_folder_that_is_not_a_run_is_one_error_line_and_exit_2(make, tmp_path):
    target = tmp_path / "target"
    if make == "file":
        target.write_text("x")
    elif make != "missing":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
        if make == "broken run_config":
            (target / "run_config.json").write_text("{not json")
    before = snapshot(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "edugpt.app.page", str(target), "--port", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(target) in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert snapshot(tmp_path) == before


def test_the_staged_space_imports_its_page_from_its_own_files(tmp_path):
    """The Space holds every module the page needs: Python finds edugpt in the Space's folder, not this checkout."""
    from edugpt.app import space

    staged = Path(space.publish_space("you/edugpt-chat", "you/edugpt-demo", dry_run=tmp_path / "space"))
    code = ("import edugpt.app.page, edugpt.model.chat, edugpt.report.rows, edugpt.config.cli, edugpt.run.checkpoints; "
            "print(edugpt.app.page.__file__); edugpt.model.chat.EDUGPT_CHAT_TEMPLATE")
    proc = subprocess.run([sys.executable, "-c", code], cwd=staged, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == staged / "edugpt" / "app" / "page.py"


# --- the page in a real browser ---------------------------------------------------------------------------------------
class Recorder:
    """A TCP listener standing in for the internet: the page's process and the browser get it as their proxy, so any
    request that would leave this machine lands here (and is counted) instead."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.seen: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    self.seen.append(conn.recv(200))


def browser_missing() -> str | None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        return (f"no headless browser: {', '.join(missing)} missing; `make test` installs Debian's chromium and "
                "chromium-driver with apt-get (it could not here)")
    for module, extra in (("selenium", "selenium"), ("gradio", '".[app]"')):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed; `make test` installs it (pip install {extra})"
    return None


@pytest.mark.slow
def test_the_page_in_chromium_draws_the_run_to_its_last_step_follows_it_and_chats(baseline, tmp_path):
    if reason := browser_missing():
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    pretrain = tmp_path / "pretrain"  # a copy: the test appends to its metrics.jsonl as a training run would
    shutil.copytree(baseline[0], pretrain)
    sft = tmp_path / "sft"  # finetune/sft.py on the pretrained run, in this process (its imports are warm)
    spec = importlib.util.spec_from_file_location("sft_script", ROOT / "finetune" / "sft.py")
    sft_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sft_script)
    sft_script.main(["--config", "configs/sft_smoke.yaml", "--model_name_or_path", str(pretrain), "--output_dir",
                     str(sft), "--max_steps", "2", "--max_length", "64", "--logging_steps", "1"])
    sft_before = snapshot(sft)
    last_step = max(r["step"] for r in rundir.read_metrics(pretrain))

    recorder, browser_proxy = Recorder(), Recorder()  # the page's process; the browser (which chatters on its own)
    proxy = f"http://127.0.0.1:{recorder.port}"
    env = {**os.environ, "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy,
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    env.pop("HF_HUB_OFFLINE")  # the page itself must not ask the Hub
    page = subprocess.Popen([sys.executable, "-m", "edugpt.app.page", str(pretrain), str(sft), "--port", "0",
                             "--refresh_seconds", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--proxy-server=http://127.0.0.1:{browser_proxy.port}",
                 "--proxy-bypass-list=127.0.0.1;localhost"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    driver = None
    try:
        url = None
        for line in page.stdout:
            if "Running on local URL:" in line:
                url = line.split("URL:")[1].strip()
                break
        assert url and url.startswith("http://127.0.0.1:"), "the page did not start on 127.0.0.1"
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        wait = WebDriverWait(driver, 180)  # generous: the suite's other worker may be training beside it
        driver.get(url)
        wait.until(lambda d: f"step {last_step}" in d.find_element(By.ID, "run-status").text)

        def x_ticks(d):
            labels = d.find_elements(By.CSS_SELECTOR, "#loss-plot .role-axis-label text")
            return [float(e.text) for e in labels if e.text and e.text.replace(".", "").isdigit()]

        wait.until(lambda d: x_ticks(d) and max(x_ticks(d)) >= last_step)
        if os.environ.get("EDUGPT_SCREENSHOT"):  # make screenshot: the README's picture of the page
            time.sleep(1)
            driver.save_screenshot(os.environ["EDUGPT_SCREENSHOT"])

        with open(pretrain / "metrics.jsonl", "a") as f:  # the run logs one more step, half a line first
            record = json.dumps({"step": last_step + 1, "tokens": 999999, "loss": 5.0})
            f.write(record[:10])
            f.flush()
            time.sleep(1.5)
            f.write(record[10:] + "\n")
        wait.until(lambda d: f"step {last_step + 1}" in d.find_element(By.ID, "run-status").text)

        next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == "Chat").click()
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#chat-message textarea"))
        box.send_keys("What is the capital of France?", Keys.ENTER)

        def reply(d):  # the SFT model's chat (index 1): the user's message, then a reply with text in it
            bots = d.find_elements(By.CSS_SELECTOR, "#chat-1 [data-testid=bot]")
            return bots and bots[-1].text.strip()

        assert wait.until(reply)
        assert "What is the capital of France?" in driver.find_element(By.ID, "chat-1").text
        events = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
        page_root = url.rstrip("/")
        requested = {e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"
                     and e["params"].get("documentURL", "").startswith(page_root)}  # not the browser's own pages
        outside = {u for u in requested if not u.startswith((page_root, "data:", "blob:"))}
        assert requested and not outside, outside  # fonts and scripts come from the page's own server
    finally:
        if driver is not None:
            driver.quit()
        page.terminate()
        page.wait(timeout=30)
    assert snapshot(sft) == sft_before  # the page only read the run
    assert recorder.seen == []  # the page's process reached for nothing outside (no Hub, no analytics)
