"""Start the cloud selector and the edge agents as real separate processes, and stop them all.

Every child runs in its own process group with its output in a log file; `stop_all` sends
SIGTERM, waits, then SIGKILLs what is left, so the demo never leaves processes behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


class ProcessError(RuntimeError):
    """A child process failed to start or died."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log_path: Path

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise ProcessError(f"{self.name} exited with code {code}; last log lines:\n  " + "\n  ".join(tail))


def start(name: str, module: str, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> Child:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    log_file.close()
    return Child(name, process, log_path)


def wait_for_file(path: Path, child: Child, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        child.check_alive()
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise ProcessError(f"{child.name} did not write {path} within {timeout_s:.0f}s (log: {child.log_path})")


def stop_all(children: list[Child], timeout_s: float = 15.0) -> None:
    for child in children:
        if child.process.poll() is None:
            try:
                os.killpg(child.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout_s
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.process.pid, signal.SIGKILL)
            child.process.wait()
