"""Process-level test helpers: run the server and Node scripts as real subprocesses.

Every process started here is stopped again, also when a test fails: use the context managers
(`running_bayeux_server`, `NodeSession`) or call `stop()` / `close()` in a fixture finalizer.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"

OptionValue = str | int | float | bool


class ServerStartError(RuntimeError):
    """The server exited or did not answer its health check in time."""


class NodeScriptError(AssertionError):
    """A Node script failed, timed out or printed no JSON result."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on host right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def no_proxy_opener() -> urllib.request.OpenerDirector:
    # Loopback requests must never go through an HTTP(S)_PROXY from the environment.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def log_tail(log: IO[bytes], lines: int) -> str:
    """The last lines written to a process's log file ("" once it is closed)."""
    if log.closed:
        return ""
    log.flush()
    log.seek(0)
    return _tail(log.read().decode(errors="replace"), lines)


class Closing:
    """`with thing:` yields it and always calls its `close()` at the end."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def stop_process(process: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM, wait up to grace seconds, then SIGKILL."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class ServerProcess(Closing):
    """A server run as `python -m <module> --host H --port P <args>` from the repo root.

    Its stdout and stderr go to one temporary log file, which survives restarts, so that error
    messages can show what the server printed.
    """

    def __init__(
        self,
        module: str,
        args: Sequence[str] = (),
        *,
        port: int | None = None,
        host: str = LOOPBACK,
        health_path: str = "/health",
    ) -> None:
        self.module = module
        self.args = tuple(args)
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.health_path = health_path
        self._process: subprocess.Popen[bytes] | None = None
        # Lives as long as this object (across restarts); close() closes it.
        self._log: IO[bytes] = tempfile.TemporaryFile(prefix=f"{module}-")  # noqa: SIM115

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            self.module,
            "--host",
            self.host,
            "--port",
            str(self.port),
            *self.args,
        ]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        """Starts the process and returns once the health check answers 200."""
        if self.running:
            raise RuntimeError(f"{self.module} is already running on port {self.port}")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._process = subprocess.Popen(
            self.command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = 5.0) -> None:
        if self._process is not None:
            stop_process(self._process, grace)
            self._process = None

    def kill(self) -> None:
        """SIGKILL, as a crash (no graceful shutdown); start() brings it back on the same port."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            self._process = None

    def restart(self, timeout: float = 20.0) -> None:
        """Stops and starts the server again on the same port (a memory engine forgets all)."""
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        self.stop()
        self._log.close()

    def output(self, lines: int = 80) -> str:
        """The last lines the server printed (stdout and stderr, across restarts)."""
        return log_tail(self._log, lines)

    def _healthy(self) -> bool:
        try:
            with no_proxy_opener().open(self.base_url + self.health_path, timeout=1.0) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def _wait_healthy(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while not self._healthy():
            code = self._process.poll()
            if code is not None:
                raise ServerStartError(
                    f"{' '.join(self.command)} exited with code {code} before "
                    f"{self.health_path} answered; its output:\n{self.output()}"
                )
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"{' '.join(self.command)}: {self.health_path} did not answer 200 within "
                    f"{timeout} s; its output:\n{self.output()}"
                )
            time.sleep(0.05)

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self


def bayeux_options(options: Mapping[str, OptionValue]) -> list[str]:
    """`{"timeout": 5000, "broadcast_to_publisher": False}` -> `--option timeout=5000 ...`."""
    args: list[str] = []
    for key, value in options.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ["--option", f"{key}={text}"]
    return args


def bayeux_server(
    options: Mapping[str, OptionValue] | None = None, *, port: int | None = None
) -> ServerProcess:
    """A (not yet started) standalone Bayeux server; its endpoint is `base_url + "/cometd"`."""
    return ServerProcess("bayeux", bayeux_options(options or {}), port=port)


@contextmanager
def running_bayeux_server(
    options: Mapping[str, OptionValue] | None = None, *, port: int | None = None
) -> Iterator[ServerProcess]:
    """Starts a Bayeux server, yields it once healthy, and always stops it afterwards."""
    with bayeux_server(options, port=port) as server:
        yield server


# Node scripts


def node_executable() -> str | None:
    return shutil.which("node")


def parse_json_result(stdout: str) -> dict[str, Any]:
    """The result a script prints: its last non-empty stdout line, a JSON object."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ValueError("no output on stdout")
    result = json.loads(lines[-1])
    if not isinstance(result, dict):
        raise ValueError(f"last stdout line is not a JSON object: {lines[-1][:200]}")
    return result


def _describe_failure(what: str, command: Sequence[str], stdout: str, stderr: str) -> str:
    return (
        f"{what}: {' '.join(command)}\n"
        f"--- stderr (tail) ---\n{_tail(stderr, 120)}\n"
        f"--- stdout (tail) ---\n{_tail(stdout, 20)[-4000:]}"
    )


def run_node(
    script: Path, args: Sequence[str] = (), *, timeout: float = 90.0, cwd: Path | None = None
) -> dict[str, Any]:
    """Runs `node script args...` to completion and returns the JSON object it printed last.

    Raises NodeScriptError (with stdout and stderr) on a non-zero exit, a timeout (the process
    is killed) or output that is not JSON.
    """
    node = node_executable()
    if node is None:
        raise NodeScriptError("node is not installed (not found on PATH)")
    command = [node, str(script), *args]
    try:
        completed = subprocess.run(
            command,
            cwd=cwd or script.parent,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        raise NodeScriptError(
            _describe_failure(
                f"killed after {timeout} s", command, _text(expired.stdout), _text(expired.stderr)
            )
        ) from None
    if completed.returncode != 0:
        raise NodeScriptError(
            _describe_failure(
                f"exit code {completed.returncode}", command, completed.stdout, completed.stderr
            )
        )
    try:
        return parse_json_result(completed.stdout)
    except ValueError as error:
        raise NodeScriptError(
            _describe_failure(
                f"no JSON result ({error})", command, completed.stdout, completed.stderr
            )
        ) from None


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


class NodeSession(Closing):
    """A Node script driven line by line over stdin/stdout, e.g. to restart a server mid-run.

    with NodeSession(script, args) as session:
        session.expect_line("READY", timeout=30)
        ...
        session.send_line("RESTARTED")
        result = session.result(timeout=60)
    """

    def __init__(self, script: Path, args: Sequence[str] = (), *, cwd: Path | None = None) -> None:
        node = node_executable()
        if node is None:
            raise NodeScriptError("node is not installed (not found on PATH)")
        self.command = [node, str(script), *args]
        # A file, not a pipe, so a chatty script never blocks on a full pipe; close() closes it.
        self._stderr: IO[str] = tempfile.TemporaryFile("w+", prefix="node-stderr-")  # noqa: SIM115
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stdout: list[str] = []
        self._process = subprocess.Popen(
            self.command,
            cwd=cwd or script.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _next_line(self, deadline: float, waiting_for: str) -> str | None:
        """The next stdout line, or None once the script closed stdout (exited)."""
        try:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise self._failure(f"timed out waiting for {waiting_for}") from None
        if line is not None:
            self._stdout.append(line)
        return line

    def expect_line(self, expected: str, timeout: float) -> None:
        """Waits for a stdout line equal to expected (other lines are kept for the result)."""
        deadline = time.monotonic() + timeout
        while (line := self._next_line(deadline, repr(expected))) != expected:
            if line is None:
                raise self._failure(f"exited while waiting for {expected!r}")

    def expect_prefix(self, prefix: str, timeout: float) -> str:
        """Waits for a stdout line starting with prefix and returns the rest of it (other lines
        are kept for the result), e.g. `KILL node2` -> "node2" for prefix "KILL "."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._next_line(deadline, f"a line starting with {prefix!r}")
            if line is None:
                raise self._failure(f"exited while waiting for a line starting with {prefix!r}")
            if line.startswith(prefix):
                return line[len(prefix) :]

    def send_line(self, line: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()

    def result(self, timeout: float) -> dict[str, Any]:
        """Waits for the script to exit 0 and returns the JSON object it printed last."""
        deadline = time.monotonic() + timeout
        while self._next_line(deadline, "the script to exit") is not None:
            pass
        code = self._process.wait()
        if code != 0:
            raise self._failure(f"exit code {code}")
        try:
            return parse_json_result("\n".join(self._stdout))
        except ValueError as error:
            raise self._failure(f"no JSON result ({error})") from None

    def stderr(self) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read()

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._reader.join(timeout=5)
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()

    def _failure(self, what: str) -> NodeScriptError:
        """Kills the script (if still running) and describes what went wrong."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        return NodeScriptError(
            _describe_failure(what, self.command, "\n".join(self._stdout), self.stderr())
        )
