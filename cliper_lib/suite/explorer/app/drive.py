"""Drive the app in a real browser (Playwright on a system Chromium): used by the browser test and
bench_app.py.

    with AppServer(["--profile", "smoke"]) as server, chromium() as browser:
        app = AppDriver(new_page(browser), server.url)
        # seconds to the page, the controls, the live controls, the first result
        app.open()
        app.move_layer_range_start(+1)  # the lower handle of the fused-layer slider, one step

Every widget of the explorer carries a CSS class `cliper-<control>` (controls.build_layout); a move
is done when the status line is rewritten with the move's result and the overlay image has been
redrawn.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """A system Chromium: $CLIPER_CHROMIUM, else the first of CHROMIUM_NAMES on PATH."""
    explicit = os.environ.get("CLIPER_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def browser_unavailable() -> str | None:
    """Why no browser test can run here, or None when Playwright and a Chromium are both present."""
    for module, package in (("playwright", "playwright"), ("solara", "solara")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (pip install {package})"
    if find_chromium() is None:
        return (
            f"no Chromium found ({', '.join(CHROMIUM_NAMES)} or $CLIPER_CHROMIUM); "
            f"apt-get install chromium"
        )
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AppServer:
    """`cliper app ARGS --no-browser --port <free>` in a subprocess (environment inherited); stopped
    on exit."""

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        timeout: float = 180.0,
        log: str | os.PathLike | None = None,
    ):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.args = [
            sys.executable,
            "-m",
            "cliper_lib",
            "app",
            *args,
            "--no-browser",
            f"--port={self.port}",
        ]
        self.env = {**os.environ, **(env or {})}
        self.timeout = timeout
        self.log_path = Path(log) if log else None
        self.process: subprocess.Popen | None = None
        self.started_s = 0.0

    def __enter__(self) -> AppServer:
        start = time.perf_counter()
        log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        while time.perf_counter() - start < self.timeout:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"cliper app exited with {self.process.returncode} (log: {self.log_path})"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                self.started_s = time.perf_counter() - start
                return self
            time.sleep(0.25)
        self.__exit__()
        raise TimeoutError(f"cliper app did not listen on {self.port} within {self.timeout:.0f} s")

    def __exit__(self, *exc) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # the server and anything it started (its own session); Ctrl-C, as a person stops it
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """The system Chromium under Playwright (headless); open pages with `new_page(browser)`."""
    # optional (the test extra): this module is imported where it is missing, and says so
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=find_chromium(), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser, width: int = 1400, height: int = 1000, requests: list | None = None):
    """A page in a window of that size; every URL it requests is appended to `requests`."""
    page = browser.new_page(viewport={"width": width, "height": height})
    if requests is not None:
        page.on("request", lambda request: requests.append(request.url))
    return page


def external_requests(requests: Sequence[str], url: str) -> list[str]:
    """The requested URLs that leave the app's server (data: and blob: URLs are the page's own)."""
    origin = url.rstrip("/")
    return [r for r in requests if not r.startswith((origin + "/", "data:", f"blob:{origin}/"))]


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (psutil)."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


class AppDriver:
    """The moves a visitor makes, each returning the seconds until the page showed its result."""

    def __init__(self, page, url: str, timeout_s: float = 180.0):
        self.page = page
        self.url = url
        self.timeout_ms = timeout_s * 1000

    # --- reading the page -------------------------------------------------------------------------
    def overlay_src(self) -> str:
        return self.page.locator(".cliper-out-overlay img").first.get_attribute("src") or ""

    def status(self) -> str:
        return self.page.locator(".cliper-status").inner_text()

    def text(self, selector: str) -> str:
        return self.page.locator(selector).first.inner_text()

    def _wait_redrawn(self, before_src: str, before_status: str) -> None:
        """Until the status line holds a new result (not an error), the overlay image changed and
        the page is no longer busy (its controls take keys again)."""
        self.page.wait_for_function(
            """([src, status]) => {
                 const img = document.querySelector('.cliper-out-overlay img');
                 const line = document.querySelector('.cliper-status');
                 // done: a new result drawn and the controls live again (not busy)
                 return img && line && img.src !== src && line.innerText !== status
                        && line.innerText.includes('recomputed')
                        && !document.querySelector('.cliper-page.cliper-busy');
               }""",
            arg=[before_src, before_status],
            timeout=self.timeout_ms,
        )

    def _move(self, action) -> float:
        src, status = self.overlay_src(), self.status()
        start = time.perf_counter()
        action()
        self._wait_redrawn(src, status)
        return time.perf_counter() - start

    # --- moves ------------------------------------------------------------------------------------
    def open(self) -> dict[str, float]:
        """Load the page: seconds to the page, the (disabled) controls, the live controls (models
        loaded), and the first result."""
        start = time.perf_counter()
        self.page.goto(self.url, timeout=self.timeout_ms)
        marks = {}
        for mark, selector in [
            ("placeholder", ".cliper-app"),
            ("controls", ".cliper-fuse-layers"),
            ("ready", ".cliper-ready .cliper-fuse-layers"),
            ("result", ".cliper-out-overlay img"),
        ]:
            self.page.wait_for_selector(selector, timeout=self.timeout_ms)
            marks[mark] = time.perf_counter() - start
        self.page.wait_for_function(
            "document.querySelector('.cliper-status').innerText.includes('recomputed')"
            " && !document.querySelector('.cliper-page.cliper-busy')",
            timeout=self.timeout_ms,
        )
        marks["result"] = time.perf_counter() - start
        return marks

    def _move_handle(self, selector: str, steps: int) -> float:
        """Press the arrow keys `steps` times (right when positive) on a slider handle; seconds
        until redrawn."""
        handle = self.page.locator(selector)
        key = "ArrowRight" if steps > 0 else "ArrowLeft"

        def press():
            handle.focus()
            for _ in range(abs(steps)):
                handle.press(key)

        return self._move(press)

    def move_layer_range_start(self, steps: int = 1) -> float:
        """Move the lower handle of the fused-layer slider by `steps` with the keyboard."""
        return self._move_handle(".cliper-fuse-layers .noUi-handle-lower", steps)

    def move_slider(self, name: str, steps: int = 1) -> float:
        """Move a one-handle slider (e.g. score_threshold) by `steps` with the keyboard."""
        return self._move_handle(f".cliper-{name.replace('_', '-')} .noUi-handle", steps)

    def type_text(self, name: str, value: str) -> float:
        """Type into a text box (classes, background) and press Enter."""
        box = self.page.locator(f".cliper-{name} input")
        return self._move(lambda: (box.fill(value), box.press("Enter")))

    def upload(self, path: str | os.PathLike) -> float:
        """Upload an image file; it becomes the shown image."""

        def choose():
            with self.page.expect_file_chooser(timeout=self.timeout_ms) as chooser:
                self.page.locator(
                    ".cliper-upload"
                ).first.click()  # the widget opens the system file dialog
            chooser.value.set_files(str(path))

        return self._move(choose)

    def _hand_file(self, path: str | os.PathLike, how: str) -> float:
        """Hand the page an image file as a browser would: `drop` (dragged from the desktop onto
        the page) or `paste` (Ctrl+V); seconds until redrawn."""
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")

        def hand():
            self.page.evaluate(
                """([name, data, how]) => {
                     const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
                     const transfer = new DataTransfer();
                     transfer.items.add(new File([bytes], name, {type: 'image/png'}));
                     const init = {bubbles: true, cancelable: true};
                     if (how === 'paste') {
                       document.dispatchEvent(
                         new ClipboardEvent('paste', {...init, clipboardData: transfer}));
                       return;
                     }
                     const target = document.querySelector('.cliper-app');
                     for (const kind of ['dragover', 'drop']) {
                       target.dispatchEvent(new DragEvent(kind, {...init, dataTransfer: transfer}));
                     }
                   }""",
                [Path(path).name, data, how],
            )

        return self._move(hand)

    def drop(self, path: str | os.PathLike) -> float:
        """Drop an image file onto the page (as a file dragged from the desktop)."""
        return self._hand_file(path, "drop")

    def paste(self, path: str | os.PathLike) -> float:
        """Paste an image file into the page (as Ctrl+V after copying a file or a screenshot)."""
        return self._hand_file(path, "paste")

    def redrawn_only(self, action) -> str:
        """Do `action` (a look control: opacity, labels on/off) and wait until the overlay is drawn
        anew with the status line unchanged (nothing recomputed); the new overlay's src."""
        src, status = self.overlay_src(), self.status()
        action()
        self.page.wait_for_function(
            """([src]) => {
                 const img = document.querySelector('.cliper-out-overlay img');
                 return img && img.src !== src;
               }""",
            arg=[src],
            timeout=self.timeout_ms,
        )
        assert self.status() == status, (status, self.status())
        return self.overlay_src()

    def export(self) -> float:
        """Click export and wait for the five download links (four files and the photo)."""
        start = time.perf_counter()
        self.page.locator(".cliper-export").first.click()
        self.page.wait_for_function(
            "document.querySelectorAll('.cliper-exported a.cliper-download').length === 5",
            timeout=self.timeout_ms,
        )
        return time.perf_counter() - start

    def export_links(self) -> list[str]:
        """The download links' URLs, absolute."""
        links = self.page.locator(".cliper-exported a.cliper-download")
        return [
            self.url.rstrip("/") + href
            for href in links.evaluate_all("l => l.map(a => a.getAttribute('href'))")
        ]

    def map_classes(self) -> list[str]:
        return self.page.locator(".cliper-map-class select option").all_inner_texts()
