"""A headless Chromium driven over the DevTools protocol, for tests that look at a page as a browser renders it.

``Browser`` starts ``chromium`` (Debian's package; ``AURELIS_CHROMIUM`` names another binary) with a fresh
profile, no network of its own (no sync, updates, first-run or background requests) and every host name
resolving nowhere, so a page that tried to fetch anything would fail loudly. It talks to the browser over the
DevTools websocket with the ``websockets`` library, one page target at a time:

    with Browser(tmp_path) as browser:
        page = browser.open(path, width=390, dark=True)
        page.problems            # console errors/warnings, exceptions, log entries, requests that left the file
        page.evaluate("document.title")
        page.screenshot(tmp_path / "narrow-dark.png")
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from websockets.sync.client import ClientConnection, connect

#: How long a page may take to load on a loaded machine before the test gives up.
PATIENCE = 60.0

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
    "--hide-scrollbars", "--mute-audio", "--host-resolver-rules=MAP * ~NOTFOUND",
)


def chromium_binary() -> str | None:
    """The Chromium to use, ``None`` when none is installed."""
    named = os.environ.get("AURELIS_CHROMIUM")
    if named:
        return shutil.which(named)
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One page target of the browser (a tab), attached over the browser's connection."""

    def __init__(self, browser: Browser, session: str) -> None:
        self._browser = browser
        self._session = session
        #: What went wrong while the page loaded and ran: console errors and warnings, uncaught exceptions,
        #: browser log entries (failed loads, blocked content) and requests for anything but the file itself.
        self.problems: list[str] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        return self._browser.send(method, params, self._session, on_event=self._event)

    def _event(self, message: dict[str, Any]) -> None:
        method, params = message["method"], message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning", "assert"):
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params["args"])
            self.problems.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            self.problems.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            self.problems.append(f"log {params['entry']['level']}: {params['entry']['text']}")
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not url.startswith(("file:", "data:", "about:")):
                self.problems.append(f"request: {url}")

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self._browser.wait_for("Page.loadEventFired", self._session, on_event=self._event)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        """The whole page (not only the viewport) as a PNG."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        path.write_bytes(base64.b64decode(shot["data"]))


class Browser:
    """A headless Chromium for the length of a ``with`` block; its profile lives in ``folder``."""

    def __init__(self, folder: Path) -> None:
        binary = chromium_binary()
        if binary is None:
            raise RuntimeError("no chromium installed")
        self._profile = folder / "chromium-profile"
        self._profile.mkdir(parents=True, exist_ok=True)
        (self._profile / "DevToolsActivePort").unlink(missing_ok=True)  # a stale one names a closed port
        self._process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._socket: ClientConnection | None = None
        self._next_id = 0

    def __enter__(self) -> Browser:
        try:
            self._socket = connect(self._websocket_url(), max_size=None, open_timeout=PATIENCE)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _websocket_url(self) -> str:
        # Chromium writes the port it chose and the browser target's path once it listens.
        active = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._process.returncode} before it listened")
            with contextlib.suppress(FileNotFoundError, ValueError):
                port, path = active.read_text().split("\n")[:2]
                if port and path:
                    return f"ws://127.0.0.1:{int(port)}{path}"
            time.sleep(0.05)
        raise RuntimeError("chromium did not open its DevTools port")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def send(self, method: str, params: dict[str, Any], session: str | None = None,
             on_event: Any = None) -> dict[str, Any]:
        """Send a command and wait for its answer, handing the events that arrive meanwhile to ``on_event``."""
        assert self._socket is not None
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self._socket.send(json.dumps(message))
        while True:
            answer = self._receive(on_event)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer["result"]
                return result

    def wait_for(self, event: str, session: str, on_event: Any = None) -> None:
        while True:
            message = self._receive(on_event)
            if message.get("method") == event and message.get("sessionId") == session:
                return

    def _receive(self, on_event: Any) -> dict[str, Any]:
        assert self._socket is not None
        message: dict[str, Any] = json.loads(self._socket.recv(timeout=PATIENCE))
        if "method" in message and on_event is not None:
            on_event(message)
        return message

    def open(self, path: Path, *, width: int, height: int = 900, dark: bool = False) -> Page:
        """A new tab showing the file ``path`` at ``width`` CSS pixels, light or dark, loaded."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.send(f"{domain}.enable")
        page.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        page.send("Emulation.setEmulatedMedia",
                  features=[{"name": "prefers-color-scheme", "value": "dark" if dark else "light"}])
        page.navigate(path.resolve().as_uri())
        return page
