"""Helpers for tests that drive the Flower app: an in-process grid, and real Flower processes.

- :class:`InProcessGrid` hands each message straight to the ClientApp in this process (one Context
  per node, given node configs), so server phases run in a unit test in seconds; ``faults`` lets a
  test make chosen requests fail or go unanswered.
- :class:`FlowerProcesses` starts ``flower-superlink`` / ``flower-supernode`` as separate process
  groups on free loopback ports (plain, or with TLS from :func:`make_tls` and SuperNode keys from
  :func:`make_node_key`), and stops them (and every descendant) by PID.
- :func:`isolated_flower` (:func:`flower_env` + :func:`stop_local_superlink`), :func:`flwr_run`,
  :func:`run_status` run the ``flwr`` CLI against an isolated ``FLWR_HOME`` (own config, own
  local-SuperLink ports, own Ray temp dir) so tests never meet each other's or the user's Flower
  state, and leave no process behind; :func:`register_supernode` / :func:`list_supernodes` manage
  SuperNode authentication through the same CLI.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from geodata.readers.eurosat import build_eurosat_manifest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# ---------------------------------------------------------------------------------------------
# In-process grid


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process.

    ``faults(message)`` returns ``None`` (the ClientApp's real reply), ``"drop"`` (no reply at all),
    other text (an error reply with that reason), or a function that gets the real reply and
    returns the one to deliver (to tamper with it).
    """

    def __init__(
        self,
        node_configs: dict[int, dict[str, Any]],
        app: Callable[[Message, Context], Message] | None = None,
        faults: Callable[[Message], str | Callable[[Message], Message] | None] | None = None,
    ) -> None:
        # Flower 1.41's Message() reads the process's task identity, which flwr-serverapp sets.
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
        if app is None:
            from clients.client_app import app as client_app

            app = client_app
        self.app = app
        self.faults = faults
        self.contexts = {
            node: Context(run_id=1, node_id=node, node_config=dict(cfg), state=RecordDict(), run_config={})
            for node, cfg in node_configs.items()
        }
        self.sent: list[Message] = []
        self._replies: dict[str, Message] = {}
        self._run = None

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:  # noqa: ANN001
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id
            ids.append(message.metadata.message_id)
            self.sent.append(message)
            fault = self.faults(message) if self.faults else None
            if fault == "drop":
                continue
            if isinstance(fault, str):
                reply = Message(Error(code=1, reason=fault), reply_to=message)
            else:
                try:
                    reply = self.app(message, self.contexts[message.metadata.dst_node_id])
                except Exception as exc:  # the ClientApp's exception becomes an error reply, as in Flower
                    reply = Message(Error(code=1, reason=f"{type(exc)}:<'{exc}'>"), reply_to=message)
                if callable(fault):
                    reply = fault(reply)
            self._replies[message.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))


# ---------------------------------------------------------------------------------------------
# Real Flower processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float, process: subprocess.Popen | None = None, what: str = "") -> None:
    """Wait until 127.0.0.1:port accepts connections; fail early when ``process`` died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what or 'process'} exited with code {process.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.3)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what or 'process'} not listening on 127.0.0.1:{port} after {timeout_s} s")


def flower_env(root: Path) -> dict[str, str]:
    """An environment with its own FLWR_HOME (under ``root``), local-SuperLink ports and Ray temp dir.

    The Ray temp dir is a short new folder in the system temp dir: Ray's AF_UNIX socket paths below
    it must stay under 108 bytes, which a pytest ``tmp_path`` exceeds. Remove it with
    :func:`stop_local_superlink` (or use :func:`isolated_flower`).
    """
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(root / "flwr-home"),
        RAY_TMPDIR=tempfile.mkdtemp(prefix="eosfed-ray-"),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
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


def stop_local_superlink(env: dict[str, str]) -> None:
    """Stop the detached local SuperLink ``flwr run`` started for this ``FLWR_HOME`` (and its tree),
    any process still using this env's Ray temp dir, and remove that dir."""
    for pid in pids_mentioning(str(Path(env["FLWR_HOME"]) / "local-superlink")):
        kill_tree(pid)
    for pid in pids_mentioning(env["RAY_TMPDIR"]):
        kill_tree(pid)
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a test CA and of a server certificate it signed (for 127.0.0.1 and localhost)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _write_private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def make_tls(directory: Path, hours: float = 2.0) -> TlsFiles:
    """A self-signed CA and a server certificate it signs for 127.0.0.1 / localhost, valid ``hours``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(hours=hours))
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eosfed test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(valid[0]).not_valid_after(valid[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP384R1())
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(valid[0]).not_valid_after(valid[1])
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                          x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    files = TlsFiles(directory / "ca.crt", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca.public_bytes(pem))
    files.server_cert.write_bytes(server.public_bytes(pem))
    _write_private(files.server_key, key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                                       serialization.NoEncryption()))
    return files


def make_node_key(directory: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's EC (P-384) key pair in OpenSSH format, as ``flower-supernode`` and
    ``flwr supernode register`` read them; returns (private key, public key) paths."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = _write_private(directory / name, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    public = directory / f"{name}.pub"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))
    return private, public


@dataclass
class FlowerProcesses:
    """Processes started by a test, each in its own session and folder (``log_dir/<name>``, with its
    own ``FLWR_HOME``), all stopped by :meth:`stop_all` or on leaving the ``with`` block."""

    env: dict[str, str]
    log_dir: Path
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        """Start ``cmd`` in its own session, with its own ``FLWR_HOME`` and working dir ``log_dir/name``."""
        workdir = self.log_dir / name
        (workdir / "flwr-home").mkdir(parents=True, exist_ok=True)
        env = {**self.env, "FLWR_HOME": str(workdir / "flwr-home")}
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 (closed right after the start)
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                                start_new_session=True)
        log.close()
        self.procs.append((name, proc))
        return proc

    def superlink(self, port: int, extra: list[str] = (), tls: TlsFiles | None = None) -> str:
        """Start ``flower-superlink`` on 127.0.0.1:``port`` (``--insecure``, or with ``tls``); returns its address."""
        security = (["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
                     "--ssl-keyfile", str(tls.server_key)] if tls else ["--insecure"])
        proc = self.start("superlink", [str(BIN / "flower-superlink"), *security, "--host", "127.0.0.1",
                                        "--port", str(port), *extra])
        wait_for_port(port, 30, proc, "flower-superlink")
        return f"127.0.0.1:{port}"

    def supernode(self, name: str, superlink: str, node_config: dict[str, str], extra: list[str] = (),
                  root_cert: Path | None = None, wait: bool = True) -> int:
        """Start ``flower-supernode`` with ``node_config`` (``--insecure``, or TLS trusting ``root_cert``);
        returns its Runtime API port, once it listens when ``wait``."""
        port = free_port()
        config = " ".join(f'{k}="{v}"' for k, v in node_config.items())
        security = ["--root-certificates", str(root_cert)] if root_cert else ["--insecure"]
        proc = self.start(name, [str(BIN / "flower-supernode"), *security, "--superlink", superlink,
                                 "--host", "127.0.0.1", "--port", str(port), "--node-config", config, *extra])
        if wait:
            wait_for_port(port, 30, proc, f"flower-supernode {name}")
        return port

    def process(self, name: str) -> subprocess.Popen:
        """The process started as ``name``."""
        return next(proc for n, proc in self.procs if n == name)

    def kill(self, name: str) -> None:
        """SIGKILL the process ``name``'s process group and every descendant (a machine failing at once)."""
        proc = self.process(name)
        pids = [proc.pid, *descendants(proc.pid)]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=10)

    def insecure_partners(self, env: dict[str, str], manifests: dict[str, Path], store_root: Path) -> str:
        """An insecure loopback SuperLink, one declared EuroSAT SuperNode per ``manifests`` entry (its store
        under ``store_root/<name>/store``) and the ``partners`` connection; returns the SuperLink address."""
        superlink = self.superlink(free_port(), ["--disable-runtime-dependency-installation"])
        for name, manifest in manifests.items():
            self.supernode(name, superlink, {"institution": name, "sensor": "sentinel2_l1c", "task": "scene",
                                             "data-path": str(manifest), "store": str(store_root / name / "store")})
        write_connection(env, "partners", superlink)
        return superlink

    def log(self, name: str) -> str:
        """What the process ``name`` wrote so far."""
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.log_dir.glob("*.log")))

    def __enter__(self) -> "FlowerProcesses":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            kill_tree(proc.pid)
            proc.wait(timeout=10)
        self.procs.clear()


def partner_manifest(shared_data: Path, out: Path, train_per_class: int) -> Path:
    """A partner's data folder: EuroSAT-MS with ``train_per_class`` train, 1 val and 1 test tile per class."""
    manifest = build_eurosat_manifest(shared_data / "eurosat-ms", out, train_per_class=train_per_class,
                                      val_per_class=1)
    first_test: dict[int, str] = {}
    for tile in manifest.tiles:
        if tile.split == "test":
            first_test.setdefault(tile.targets["scene"], tile.id)
    manifest.tiles = [t for t in manifest.tiles if t.split != "test" or t.id in first_test.values()]
    return manifest.save(out / "manifest.json")


def write_connection(env: dict[str, str], name: str, address: str, root_cert: Path | None = None) -> Path:
    """Write ``FLWR_HOME/config.toml`` with a SuperLink connection ``name`` -> ``address``: insecure, or
    TLS trusting ``root_cert``."""
    path = Path(env["FLWR_HOME"]) / "config.toml"
    security = f'root-certificates = "{root_cert}"' if root_cert else "insecure = true"
    path.write_text(f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\n{security}\n')
    return path


def _flwr_json(env: dict[str, str], args: list[str], timeout_s: float = 60) -> dict[str, Any]:
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


def register_supernode(env: dict[str, str], connection: str, public_key: Path, name: str) -> int:
    """``flwr supernode register PUBLIC_KEY CONNECTION --name NAME``; returns the new node id."""
    return int(_flwr_json(env, ["supernode", "register", str(public_key), connection, "--name", name])["node-id"])


def list_supernodes(env: dict[str, str], connection: str) -> dict[int, str]:
    """``flwr supernode list CONNECTION``: node id -> status (``registered``, ``online``, ...)."""
    return {int(n["node-id"]): n["status"] for n in _flwr_json(env, ["supernode", "list", connection])["nodes"]}


def run_config_args(run_config: dict[str, str]) -> list[str]:
    """``-c key="value"`` arguments for ``flwr run`` (values are TOML strings)."""
    return [arg for key, value in run_config.items() for arg in ("-c", f"{key}={json.dumps(value)}")]


def flwr_run(env: dict[str, str], connection: str | None, run_config: dict[str, str], timeout_s: float,
             extra: list[str] = ()) -> tuple[int, str]:
    """``flwr run . [connection] --stream``; returns the run id and the streamed output."""
    cmd = [str(BIN / "flwr"), "run", str(REPO), *([connection] if connection else []), "--stream",
           *run_config_args(run_config), *extra]
    try:
        done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        partial = "".join(x.decode(errors="replace") if isinstance(x, bytes) else x or "" for x in (exc.stdout, exc.stderr))
        raise TimeoutError(f"flwr run did not finish within {timeout_s} s:\n{partial[-5000:]}") from None
    output = done.stdout + done.stderr
    match = re.search(r"Successfully started run (\d+)", output)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"flwr run failed (exit {done.returncode}):\n{output[-5000:]}")
    return int(match.group(1)), output


def run_status(env: dict[str, str], connection: str | None, run_id: int) -> str:
    """The run's status from ``flwr ls --run-id ID --format json`` (e.g. ``finished:completed``)."""
    cmd = [str(BIN / "flwr"), "ls", *([connection] if connection else []), "--run-id", str(run_id), "--format", "json"]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    try:
        runs = json.loads(done.stdout)["runs"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise RuntimeError(f"flwr ls gave no run list ({exc}):\n{done.stdout}\n{done.stderr}") from None
    return runs[0]["status"]
