"""Running the app on this machine through the ``flwr`` CLI against an isolated Flower home.

- :func:`isolated_flower` (:func:`flower_env` + :func:`stop_local_superlink`), :func:`flwr_run` and
  :func:`run_status` / :func:`run_details` run the ``flwr`` CLI against an own ``FLWR_HOME`` (own config,
  local-SuperLink ports and Ray temp dir, runtime dependency installation off) and stop every process it
  started, by PID; :func:`local_superlink_ports` finds the local SuperLink of a ``FLWR_HOME`` still running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["descendants", "flower_env", "flwr_json", "flwr_run", "free_port", "isolated_flower",
           "kill_tree", "local_superlink_ports", "pids_mentioning", "run_config_args", "run_details", "run_status",
           "stop_local_superlink"]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(root: Path, ports: tuple[int, int] | None = None) -> dict[str, str]:
    """An environment with its own FLWR_HOME (``root/flwr-home``), local-SuperLink ports (``ports``: its
    HTTP and Control API ports; default two free ones) and Ray temp dir.

    The Ray temp dir is a short new folder in the system temp dir: Ray's AF_UNIX socket paths below
    it must stay under 108 bytes, which a pytest ``tmp_path`` exceeds. Remove it with
    :func:`stop_local_superlink` (or use :func:`isolated_flower`).
    """
    env = dict(os.environ)
    http_port, control_port = ports or (free_port(), free_port())
    env.update(
        FLWR_HOME=str(root / "flwr-home"),
        RAY_TMPDIR=tempfile.mkdtemp(prefix="eosfed-ray-"),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(http_port),
        FLWR_LOCAL_CONTROL_API_PORT=str(control_port),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_TELEMETRY_ENABLED="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    Path(env["FLWR_HOME"]).mkdir(parents=True, exist_ok=True)
    return env


@contextmanager
def isolated_flower(root: Path) -> Iterator[dict[str, str]]:
    """:func:`flower_env`, then stop the local SuperLink it got and remove its Ray temp dir."""
    env = flower_env(root)
    try:
        yield env
    finally:
        stop_local_superlink(env)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(stat.parent.name))
    return tree


def descendants(pid: int) -> list[int]:
    """``pid``'s descendants (children first-level first), from /proc."""
    tree, out, todo = _children(), [], [pid]
    while todo:
        kids = tree.get(todo.pop(), [])
        out.extend(kids)
        todo.extend(kids)
    return out


def kill_tree(pid: int, grace_s: float = 5.0) -> None:
    """SIGTERM ``pid`` and its descendants, then SIGKILL what is left after ``grace_s``."""
    pids = [pid, *descendants(pid)]
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    for p in pids:
        while time.monotonic() < deadline and Path(f"/proc/{p}").exists() and not _is_zombie(p):
            time.sleep(0.1)
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def pids_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (a unique temp path: never a program name)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return [p for p in found if p != os.getpid()]


def local_superlink_ports(flwr_home: Path) -> tuple[int, int] | None:
    """(HTTP API, Control API) ports of the local SuperLink that ``flwr run`` started for ``flwr_home`` and
    that still runs (read from its command line), else ``None``."""
    for pid in pids_mentioning(str(Path(flwr_home) / "local-superlink")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "--port" in argv and "--control-api-address" in argv:
            control = argv[argv.index("--control-api-address") + 1].rpartition(":")[2]
            return int(argv[argv.index("--port") + 1]), int(control)
    return None


def stop_local_superlink(env: dict[str, str]) -> None:
    """Stop the detached local SuperLink ``flwr run`` started for this ``FLWR_HOME`` (and its tree),
    any process still using this env's Ray temp dir, and remove that dir."""
    for pid in pids_mentioning(str(Path(env["FLWR_HOME"]) / "local-superlink")):
        kill_tree(pid)
    for pid in pids_mentioning(env["RAY_TMPDIR"]):
        kill_tree(pid)
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


def flwr_json(env: dict[str, str], args: list[str], timeout_s: float = 60) -> dict[str, Any]:
    """``flwr ARGS --format json``'s answer; raises with the output when it is not a success."""
    done = subprocess.run([str(BIN / "flwr"), *args, "--format", "json"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout_s)
    try:
        answer = json.loads(done.stdout[done.stdout.index("{"):])
    except ValueError:
        answer = {}
    if done.returncode != 0 or not answer.get("success"):
        raise RuntimeError(f"flwr {' '.join(args)} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return answer


def run_config_args(run_config: dict[str, str]) -> list[str]:
    """``-c key="value"`` arguments for ``flwr run`` (values are TOML strings)."""
    return [arg for key, value in run_config.items() for arg in ("-c", f"{key}={json.dumps(value)}")]


def flwr_run(env: dict[str, str], connection: str | None, run_config: dict[str, str], timeout_s: float | None,
             extra: list[str] = (), echo: Callable[[str], object] | None = None) -> tuple[int, str]:
    """``flwr run . [connection] --stream``; returns the run id and the streamed output (stdout and stderr
    together), each line also handed to ``echo`` as it comes."""
    cmd = [str(BIN / "flwr"), "run", str(REPO), *([connection] if connection else []), "--stream",
           *run_config_args(run_config), *extra]
    lines: list[str] = []
    timed_out = threading.Event()
    with subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as proc:
        timer = threading.Timer(timeout_s, lambda: (timed_out.set(), proc.kill())) if timeout_s else None
        if timer:
            timer.start()
        try:
            for line in proc.stdout:
                lines.append(line)
                if echo:
                    echo(line)
            proc.wait()
        finally:
            if timer:
                timer.cancel()
    output = "".join(lines)
    if timed_out.is_set():
        raise TimeoutError(f"flwr run did not finish within {timeout_s} s:\n{output[-5000:]}")
    match = re.search(r"Successfully started run (\d+)", output)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"flwr run failed (exit {proc.returncode}):\n{output[-5000:]}")
    return int(match.group(1)), output


def run_details(env: dict[str, str], connection: str | None, run_id: int) -> dict[str, Any]:
    """The run's entry of ``flwr ls --run-id ID --format json`` (``status``, ``status-details``, ...)."""
    cmd = [str(BIN / "flwr"), "ls", *([connection] if connection else []), "--run-id", str(run_id), "--format", "json"]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    try:
        return json.loads(done.stdout)["runs"][0]
    except (json.JSONDecodeError, KeyError, IndexError) as exc:
        raise RuntimeError(f"flwr ls gave no run list ({exc}):\n{done.stdout}\n{done.stderr}") from None


def run_status(env: dict[str, str], connection: str | None, run_id: int) -> str:
    """The run's status from ``flwr ls --run-id ID --format json`` (e.g. ``finished:completed``)."""
    return run_details(env, connection, run_id)["status"]
