"""A real `readnext chat` server in a subprocess on 127.0.0.1, and a small HTTP client for its API.

Plain HTTP (Gradio's ``/gradio_api/call/<name>`` protocol) keeps 20 simulated readers light on
a 2-core machine; ``gradio_client`` speaks the same protocol.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .conftest import ROOT


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768+): polling a port in that range before
    the server binds it can connect the client to itself and steal the port."""
    for _ in range(50):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


class ChatServer:
    """``python -m assistant.cli chat`` on a random port; ``kill()`` sends SIGKILL."""

    def __init__(self, home: Path, env: dict | None = None, log: Path | None = None) -> None:
        self.home, self.port = Path(home), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        e = dict(os.environ, READNEXT_HOME=str(home), READNEXT_LLM_BACKEND="none", **(env or {}))
        self.log = log or (self.home.parent / f"chat-{self.port}.log")
        self._logf = open(self.log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "assistant.cli", "chat", "--port", str(self.port)],
            cwd=ROOT,
            env=e,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
        )

    def wait_listening(self, timeout: float = 180) -> float:
        """Block until the port accepts connections; returns the monotonic time it did."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chat server exited: {self.log.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0 and self._is_gradio():
                    return time.monotonic()
            time.sleep(0.05)
        raise TimeoutError(
            f"chat server not listening after {timeout}s: {self.log.read_text()[-2000:]}"
        )

    def _is_gradio(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/gradio_api/info", timeout=10) as r:
                return r.status == 200
        except OSError:
            return False

    def call(self, api: str, *data, timeout: float = 60):
        """Call a named endpoint; returns its result (raises on transport or server errors)."""
        req = urllib.request.Request(
            f"{self.url}/gradio_api/call/{api}",
            data=json.dumps({"data": list(data)}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            event_id = json.loads(r.read())["event_id"]
        with urllib.request.urlopen(
            f"{self.url}/gradio_api/call/{api}/{event_id}", timeout=timeout
        ) as r:
            body = r.read().decode()
        event = None
        for line in body.splitlines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "complete":
                return json.loads(line[5:])[0]
            elif line.startswith("data:") and event == "error":
                raise RuntimeError(f"{api} failed: {line[5:].strip()[:300]}")
        raise RuntimeError(f"{api}: no result in {body[:300]!r}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self._logf.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._logf.close()
