"""A test sshd on a free loopback port, in the foreground, with its log captured.

Subclasses give the sshd_config text; starting, waiting on log lines (on a
condition variable, never by sleeping) and stopping are shared.
"""
from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Union

from .conftest import _write_root_file, clean_env, stop_process

Match = Union[str, Callable[[str], bool]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackSshd:
    """``BINARY -D -e -f DIR/sshd_config``; the PAM service is the binary's name."""

    def __init__(self, directory: Path, binary: Path) -> None:
        self.dir = directory
        self.binary = binary
        self.port = 0
        self.process: Optional[subprocess.Popen] = None
        self.lines: list[str] = []
        self._cond = threading.Condition()

    def config_text(self) -> str:
        raise NotImplementedError

    def start(self) -> "LoopbackSshd":
        for _ in range(5):
            self.port = free_port()
            config = _write_root_file(self.dir / "sshd_config", self.config_text(), 0o644)
            check = subprocess.run([str(self.binary), "-t", "-f", str(config)], env=clean_env(),
                                   capture_output=True, text=True)
            assert check.returncode == 0, check.stderr
            with self._cond:
                self.lines = []
            self.process = subprocess.Popen([str(self.binary), "-D", "-e", "-f", str(config)],
                                            env=clean_env(), stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
            if self.wait_for(f"Server listening on 127.0.0.1 port {self.port}", 20):
                return self
            self.stop()  # the port was most likely taken meanwhile: try another
        raise RuntimeError("sshd did not start:\n" + self.output())

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def wait_for(self, match: Match, timeout: float, since: int = 0) -> Optional[str]:
        """The first log line (from ``since``) containing ``match`` or satisfying it, or None."""
        test = match if callable(match) else (lambda line: match in line)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[since:]:
                    if test(line):
                        return line
                if self.process is None or self.process.poll() is not None:
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 0.5))

    def log_since(self, mark: int) -> str:
        with self._cond:
            return "\n".join(self.lines[mark:])

    def output(self) -> str:
        return self.log_since(0)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            stop_process(proc)
