"""A server run as a child process on 127.0.0.1 (opentracker for the demo, the benchmark and the tests;
SeaweedFS in the tests): the shared lifecycle.

Its output goes to a log file; a start is retried on new ports when the process exits while starting (a
port taken between the check and the start); it is stopped by its PID: SIGTERM, a bounded wait, SIGKILL.
A subclass names itself and its error type, and says how to pick ports, what to run and when it is ready.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any


class ServerProcess:
    name = "server"  # in error messages
    error: type[Exception] = RuntimeError
    stop_timeout = 5.0
    log_lines = 20

    _process: subprocess.Popen[bytes] | None = None
    log_path: Path | None

    # --- what a subclass says ------------------------------------------------------------------------

    def command(self) -> list[str]:
        raise NotImplementedError

    def _choose_ports(self, attempt: int) -> None:
        """Pick the port(s) for this attempt."""
        raise NotImplementedError

    def _wait_ready(self) -> None:
        """Bounded: return once it answers, else raise `self._fail(…)`."""
        raise NotImplementedError

    def _popen_options(self) -> dict[str, Any]:
        return {}

    def _after_stop(self) -> None:
        """Clean up what the process leaves behind (once it has exited)."""

    # --- the lifecycle ---------------------------------------------------------------------------------

    def _start_attempts(self, tries: int) -> None:
        """Launch until it is ready, at most `tries` times; only a process that exited is retried."""
        for attempt in range(tries):
            self._choose_ports(attempt)
            try:
                self._launch()
                self._wait_ready()
                return
            except self.error:
                exited = self._process is not None and self._process.poll() is not None
                self._terminate()
                if attempt + 1 == tries or not exited:
                    raise

    def _launch(self) -> None:
        assert self.log_path is not None
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {' '.join(self.command())}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal goes to pytest, which stops us cleanly
                **self._popen_options(),
            )

    def log_tail(self, lines: int | None = None) -> str:
        try:
            text = self.log_path.read_text(errors="replace") if self.log_path else ""
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-(lines or self.log_lines) :])

    def _fail(self, what: str) -> Exception:
        return self.error(f"{self.name} {what}; log {self.log_path}:\n{self.log_tail()}")

    def _exited_while(self, doing: str) -> None:
        """Raise `_fail` if the process has exited (checked while waiting for it)."""
        assert self._process is not None
        if self._process.poll() is not None:
            raise self._fail(f"exited with code {self._process.returncode} {doing}")

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=self.stop_timeout)
        self._after_stop()
