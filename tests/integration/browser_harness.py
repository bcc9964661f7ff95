"""A real browser for the end-to-end tests: headless Chromium loads a test page from a tiny trio
HTTP server; the page reports its outcome back to that server with a GET `/result?json=...`.

The page also shows the outcome in its DOM, for a human looking at it; the report request is
what the test waits for, so nothing depends on when Chromium considers the page "loaded".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import trio

from kpc_trio.httpd import Request, Response, serve_http

JS_DIR = Path(__file__).resolve().parents[1] / "js"
MQTT_BUNDLE = JS_DIR / "node_modules" / "mqtt" / "dist" / "mqtt.min.js"
ROUND_TRIP_PAGE = JS_DIR / "browser" / "round_trip.html"
HOST = "127.0.0.1"

CHROMIUM = shutil.which("chromium")
# The brief's flags for a quiet, sandbox-less headless Chromium in a container;
# --disable-dev-shm-usage because containers often have a 64 MB /dev/shm that makes tabs crash.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
)
# Time Chromium gets to exit on SIGTERM before its process group is killed.
CHROMIUM_EXIT_TIMEOUT = 5.0


class PageServer:
    """Serves the round-trip page and the MQTT.js bundle; collects the page's reports."""

    def __init__(self) -> None:
        self._send, self._reports = trio.open_memory_channel[dict[str, Any]](1)
        self.port = 0

    def routes(self) -> dict[str, Any]:
        return {
            "/round_trip.html": self._static(ROUND_TRIP_PAGE, "text/html; charset=utf-8"),
            "/mqtt.min.js": self._static(MQTT_BUNDLE, "text/javascript"),
            "/result": self._result,
        }

    def page_url(self, **query: str) -> str:
        return f"http://{HOST}:{self.port}/round_trip.html?{urlencode(query)}"

    async def next_report(self) -> dict[str, Any]:
        return await self._reports.receive()

    @staticmethod
    def _static(path: Path, content_type: str) -> Any:
        body = path.read_bytes()

        async def serve(request: Request) -> Response:
            return 200, [("content-type", content_type), ("cache-control", "no-store")], body

        return serve

    async def _result(self, request: Request) -> Response:
        [document] = parse_qs(request.query)["json"]
        await self._send.send(json.loads(document))
        return 204, [], b""


@contextlib.asynccontextmanager
async def open_page_server() -> AsyncIterator[PageServer]:
    server = PageServer()
    async with trio.open_nursery() as nursery:
        server.port = await nursery.start(
            lambda task_status: serve_http(server.routes(), host=HOST, port=0,
                                           task_status=task_status))
        yield server
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def open_headless_chromium(url: str, user_data_dir: Path) -> AsyncIterator[None]:
    """Chromium showing `url` for the duration of the block; then it and its helpers exit.

    It runs in its own process group so that the renderer and zygote processes go with it.
    """
    assert CHROMIUM is not None, "chromium is not installed"
    process = await trio.lowlevel.open_process(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", url],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            _signal_group(process.pid, signal.SIGTERM)
            with trio.move_on_after(CHROMIUM_EXIT_TIMEOUT):
                await process.wait()
            _signal_group(process.pid, signal.SIGKILL)  # helpers that outlived the browser
            await process.wait()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
