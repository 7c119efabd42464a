"""Helpers shared by the example-project tests: free ports, bounded waits, process groups, GraphQL."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
T = TypeVar("T")
EXAMPLE_TABLES = ("events", "click_count", "ip", "user_ips", "ip_stats", "user_profiles", "user_report")
"""Every table of the example project: each one an asset in the UI."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    what: str,
    fn: Callable[[], T | None],
    timeout: float,
    interval: float = 0.5,
    diagnose: Callable[[], str] | None = None,
) -> T:
    """Call ``fn`` until it returns something truthy; raise TimeoutError naming ``what`` after ``timeout`` s
    (with ``diagnose()``'s text, e.g. the runs seen and a log tail, when given)."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - a server that is still starting raises all sorts
            last_exc = e
        if time.monotonic() > deadline:
            detail = f"\n{diagnose()}" if diagnose is not None else ""
            raise TimeoutError(
                f"timed out after {timeout:.0f}s waiting for {what}; last error: {last_exc!r}{detail}"
            )
        time.sleep(interval)


def stop_process_group(proc: subprocess.Popen[Any], grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to the process group ``proc`` leads, then SIGKILL what is left after ``grace`` seconds.

    ``proc`` must have been started with ``start_new_session=True`` (its own group), so this never
    touches a process the test did not start.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    # Children (code servers, run workers) may outlive the leader: kill whatever is left in the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


class DagsterDev:
    """``dagster dev`` (or ``dagster-webserver`` alone) on a free loopback port against the repo's
    workspace.yaml, in its own process group.

    Args:
        dagster_home: an empty folder for the instance (SQLite storage).
        data_db: the example's data database (``DATAPIPE_EXAMPLE_DB``).
        log_path: where the process's stdout/stderr go (read on failure).
        extra_env: more environment (e.g. ``DATAPIPE_EXAMPLE_SENSOR_INTERVAL``).
        webserver_only: run ``dagster-webserver`` (no daemon: nothing is launched by itself).
    """

    def __init__(
        self,
        dagster_home: Path,
        data_db: str,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
        webserver_only: bool = False,
    ):
        self.webserver_only = webserver_only
        self.dagster_home = dagster_home
        self.data_db = data_db
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self) -> None:
        """Start the process (returns at once; see ``wait_until_loaded``)."""
        env = dict(
            os.environ,
            DAGSTER_HOME=str(self.dagster_home),
            DATAPIPE_EXAMPLE_DB=self.data_db,
            **self.extra_env,
        )
        env.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = (
            [str(VENV_BIN / "dagster-webserver")]
            if self.webserver_only
            else [str(VENV_BIN / "dagster"), "dev"]
        )
        self.proc = subprocess.Popen(
            [*cmd, "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def graphql(
        self, query: str, variables: dict[str, Any] | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        """POST a GraphQL query to the webserver; returns ``data`` (raises on transport or GraphQL errors)."""
        r = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout
        )
        r.raise_for_status()
        body = r.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def wait_until_loaded(self, timeout: float = 90) -> None:
        """Wait until the webserver answers and the example code location is loaded."""
        query = """
        query { workspaceOrError { __typename ... on Workspace { locationEntries {
            name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
        """

        def loaded() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.proc.returncode}:\n{self.log_tail()}")
            data = self.graphql(query, timeout=10)
            entries = data["workspaceOrError"]["locationEntries"]
            for e in entries:
                err = e["locationOrLoadError"]
                if err and err["__typename"] == "PythonError":
                    raise AssertionError(f"code location {e['name']} failed to load: {err['message']}")
            return bool(entries) and all(
                e["loadStatus"] == "LOADED" and e["locationOrLoadError"] for e in entries
            )

        try:
            wait_for("dagster dev to serve the example code location", loaded, timeout)
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n--- dagster dev log ---\n{self.log_tail()}") from None

    def stop(self) -> None:
        """Ctrl-C (SIGINT, what ``dagster dev`` expects), then SIGKILL the whole group after 10 s."""
        if self.proc is not None:
            stop_process_group(self.proc, grace=10.0, sig=signal.SIGINT)
        if self._log is not None:
            self._log.close()


@contextlib.contextmanager
def running_dagster_dev(
    dagster_home: Path,
    data_db: str,
    log_path: Path,
    timeout: float = 90,
    extra_env: dict[str, str] | None = None,
    webserver_only: bool = False,
) -> Iterator[DagsterDev]:
    """Start ``dagster dev``, wait until the code location is loaded, and always stop the process group."""
    dev = DagsterDev(dagster_home, data_db, log_path, extra_env=extra_env, webserver_only=webserver_only)
    try:
        dev.start()
        dev.wait_until_loaded(timeout)
        yield dev
    finally:
        dev.stop()
