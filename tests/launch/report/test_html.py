"""index.html in a real headless browser: the OS's Chromium loads the comparison page of two tiny sweeps from disk
with no console error, no failed load (every figure next to it) and no network; the page shows both sweeps'
labels; a click on a header sorts the trial table; a screenshot is kept (tmp dir and /tmp/report_screenshot.png).

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages, NUL-separated,
the browser reads fd 3 and writes fd 4), so nothing but the OS package is needed. `bash tasks.sh test` installs
Chromium where it is missing (root with apt-get); elsewhere without it the test skips saying so.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import time

import pytest

from launch import report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def browser() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        pytest.skip("no Chromium on PATH: `bash tasks.sh test` installs it (apt-get install chromium, as root)")
    return found


class DevTools:
    """A minimal DevTools-protocol client over Chromium's pipe: `call` a method, keep every event."""

    def __init__(self, exe: str, profile):
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()
        # the browser's fd 3 reads what we write, its fd 4 writes what we read: bash maps them at exec (no
        # preexec_fn in a process with JAX's threads); from fd 10 up, clear of 3 and 4
        r, w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w))
        for fd in (to_browser_r, from_browser_w):
            os.close(fd)
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-', exe, "--headless=new",
             "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-extensions",
             f"--user-data-dir={profile}", "--window-size=1280,1600", "about:blank"],
            pass_fds=(r, w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(r)
        os.close(w)
        self.buffer, self.events, self.next_id = b"", [], 0

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            if time.time() > deadline:
                raise TimeoutError("Chromium did not answer over the DevTools pipe")
            chunk = os.read(self.from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, session: str | None = None, timeout: float = 20, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self.to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 20) -> dict:
        deadline = time.time() + timeout
        while True:
            for e in self.events:
                if e.get("method") == method:
                    return e
            self.events.append(self._read(deadline))

    def close(self):
        self.proc.kill()
        self.proc.wait()
        os.close(self.to_browser)
        os.close(self.from_browser)


def console_errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and failed loads among the DevTools events."""
    out = []
    for e in events:
        p = e.get("params", {})
        if e.get("method") == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif e.get("method") == "Runtime.exceptionThrown":
            out.append("exception: " + json.dumps(p["exceptionDetails"])[:300])
        elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
            out.append("log: " + p["entry"]["text"] + " " + p["entry"].get("url", ""))
        elif e.get("method") == "Network.loadingFailed":
            out.append("load failed: " + p.get("errorText", ""))
        elif e.get("method") == "Network.requestWillBeSent" and not p["request"]["url"].startswith(("file:", "data:")):
            out.append("network request: " + p["request"]["url"])
    return out


def test_index_html_loads_in_chromium_without_console_errors(two_sweeps, tmp_path):
    exe = browser()
    a, b = two_sweeps
    out = report.write_comparison([a, b], tmp_path / "cmp", labels=["baseline", "qk-layernorm"])
    tools = DevTools(exe, tmp_path / "profile")
    try:
        tools.call("Target.setDiscoverTargets", discover=True)
        page = next(t for t in tools.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        session = tools.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            tools.call(f"{domain}.enable", session)
        tools.call("Page.navigate", session, url=(out / "index.html").as_uri())
        tools.wait_for("Page.loadEventFired")
        evaluate = lambda js: tools.call("Runtime.evaluate", session, expression=js, returnByValue=True)["result"].get("value")
        text = evaluate("document.body.innerText")
        assert "baseline" in text and "qk-layernorm" in text
        assert evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert evaluate("document.images.length") >= 2  # loss vs LR and loss over steps
        # the trial table (the last) sorts by its outcome column on a click, and back on a second
        column = "Array.from(document.querySelectorAll('table:last-of-type tbody tr')).map(r => r.cells[2].textContent)"
        before = evaluate(column)
        evaluate("document.querySelectorAll('table:last-of-type th')[2].click()")
        ascending = evaluate(column)
        evaluate("document.querySelectorAll('table:last-of-type th')[2].click()")
        assert ascending == sorted(before) and evaluate(column) == sorted(before, reverse=True)
        shot = base64.b64decode(tools.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True)["data"])
        errors = console_errors(tools.events)
    finally:
        tools.close()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "report_screenshot.png").write_bytes(shot)
    shutil.copy(tmp_path / "report_screenshot.png", "/tmp/report_screenshot.png")
    assert not errors, errors
