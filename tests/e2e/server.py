"""Start `loomd` as a real process on a free loopback port, and stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

LOOMD = str(Path(sys.executable).with_name("loomd"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def loomd_env(**values: str) -> dict[str, str]:
    """The current environment without LOOMD_* settings, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOMD_")}
    env.update(values)
    return env


def run_loomd(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LOOMD, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@dataclass
class Server:
    """A running `loomd serve`."""

    process: subprocess.Popen[str]
    base_url: str
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> float:
        """Poll /readyz until 200; returns the seconds since the process started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"loomd exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return time.monotonic() - self.started_at
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"loomd was not ready within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 15) -> bool:
        """SIGTERM, then wait; True when the server shut down cleanly.

        uvicorn re-raises the signal after a graceful shutdown, so the exit status is -15.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode in (0, -signal.SIGTERM) and (
            "Application shutdown complete" in self.log())


def start_loomd(cwd: Path, env: dict[str, str], *args: str, port: int | None = None) -> Server:
    """`loomd serve` on `port` (default: a free one), logging to a file in `cwd`."""
    port = port or free_port()
    log_path = cwd / f"loomd-{port}.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [LOOMD, "serve", "--host", "127.0.0.1", "--port", str(port), *args],
        cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    log.close()
    return Server(process=process, base_url=f"http://127.0.0.1:{port}", log_path=log_path)
