"""A ``ccd`` subcommand as a child process of a test: its own process group (killed whole, as
an operator's `kill -9` of a service would), output appended to a log file, and it dies with the
test process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.faults.harness import test_services


class CcdChild:
    """``ccd <command>`` with ``env`` (the test's own CCD_* variables left out)."""

    def __init__(self, command: str, env: dict[str, str], log_path: Path) -> None:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CCD_")}
        self.command = command
        self._env = {**inherited, **env}
        self._log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        with self._log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ccd", self.command],
                cwd=test_services.REPO_ROOT,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=test_services.die_with_parent,
            )

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)

    def log(self) -> str:
        return self._log_path.read_text(errors="replace")[-3000:]
