"""A real headless Chromium (Debian's package) driven over the DevTools protocol, for the HTML report's tests.

No browser download: the tests use /usr/bin/chromium (`apt-get install -y chromium`) and skip with the
reason where it is absent. The page is opened with window.alert trapped, every console error, uncaught
exception and browser log error (a CSP violation, a failed load) collected, and screenshots as PIL images.
"""
from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--remote-debugging-port=0"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One Chromium process and one page, over the DevTools protocol (websocket-client)."""

    def __init__(self, width: int = 1400, height: int = 1000):
        import websocket

        self.profile = tempfile.mkdtemp(prefix="covfuse-chromium-")
        self.proc = subprocess.Popen([chromium_path(), *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start (no DevToolsActivePort)")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30).read())
        target = next(p for p in pages if p["type"] == "page")
        self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        # no scrollbar: a full-page capture lays the page out without one, which would shift centred content
        self.call("Emulation.setScrollbarsHidden", hidden=True)
        self.call("Page.addScriptToEvaluateOnNewDocument", source=(
            "window.__alerts = []; window.alert = window.confirm = window.prompt = "
            "function (m) { window.__alerts.push(String(m)); };"))

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def open(self, path: Path, wait: float = 30) -> None:
        self.call("Page.navigate", url=Path(path).resolve().as_uri())
        deadline = time.monotonic() + wait
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path}: the page did not finish loading")
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            self.events.append(json.loads(self.ws.recv()))
        self.evaluate("new Promise(r => setTimeout(r, 200))")  # late console messages

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions, browser log errors and JavaScript dialogs seen so far."""
        out = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(params["exceptionDetails"])[:300])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                out.append("log: " + params["entry"]["text"])
            elif method == "Page.javascriptDialogOpening":
                out.append("dialog: " + params.get("message", ""))
        return out

    def screenshot(self, clip: dict | None = None):
        """The page (or the ``clip`` rectangle in page coordinates) as a PIL image."""
        from PIL import Image

        params = {"format": "png", "captureBeyondViewport": True}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        data = self.call("Page.captureScreenshot", **params)["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")

    def rect(self, selector: str) -> dict:
        """An element's box in page coordinates (scroll included)."""
        return self.evaluate(f"""(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();
            return {{x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height}}; }})()""")

    def close(self) -> None:
        try:
            if getattr(self, "ws", None):
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)
