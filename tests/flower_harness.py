"""Helpers for tests that drive the Flower app (beside :mod:`server.testing`'s in-process grid and ``flwr``
runner, re-exported here for the tests).

- :class:`FlowerProcesses` starts ``flower-superlink`` / ``flower-supernode`` as separate process
  groups on free loopback ports (plain, or with TLS from :func:`make_tls` and SuperNode keys from
  :func:`make_node_key`), and stops them (and every descendant) by PID.
- :func:`register_supernode` / :func:`list_supernodes` manage SuperNode authentication through the
  ``flwr`` CLI; :func:`partner_manifest` and :func:`write_connection` prepare a partner and a connection.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from geodata.readers.eurosat import build_eurosat_manifest
from server.local import (descendants, flower_env, flwr_json, flwr_run, free_port, isolated_flower,  # noqa: F401
                          kill_tree, pids_mentioning, run_config_args, run_status, stop_local_superlink)
from server.testing import InProcessGrid  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# ---------------------------------------------------------------------------------------------
# Real Flower processes


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

    def gateway(self, superlink: str, tls: TlsFiles) -> str:
        """Start ``eosfed gateway`` on a free loopback port in front of ``superlink``; returns its address."""
        port = free_port()
        proc = self.start("gateway", [str(BIN / "eosfed"), "gateway", "--listen", f"127.0.0.1:{port}",
                                      "--superlink", superlink, "--certfile", str(tls.server_cert),
                                      "--keyfile", str(tls.server_key), "--ca-cert", str(tls.ca_cert)])
        wait_for_port(port, 30, proc, "eosfed gateway")
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

    def insecure_partners(self, env: dict[str, str], manifests: dict[str, Path], store_root: Path,
                          node_configs: dict[str, dict[str, str]] | None = None) -> str:
        """An insecure loopback SuperLink, one declared EuroSAT SuperNode per ``manifests`` entry (its store
        under ``store_root/<name>/store``; ``node_configs[name]`` adds to or replaces its node config, e.g. its
        own ``sensor`` and ``sensors`` file) and the ``partners`` connection; returns the SuperLink address."""
        superlink = self.superlink(free_port(), ["--disable-runtime-dependency-installation"])
        for name, manifest in manifests.items():
            self.supernode(name, superlink, {"institution": name, "sensor": "sentinel2_l1c", "task": "scene",
                                             "data-path": str(manifest), "store": str(store_root / name / "store"),
                                             **(node_configs or {}).get(name, {})})
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


def as_new_sensor(manifest_path: Path, out: Path, name: str, prefix: str = "") -> tuple[Path, Path]:
    """The EuroSAT manifest at ``manifest_path`` relabelled as sensor ``name`` into ``out/<name>/``, the sensor
    declared in ``out/elsewhere/<name>.yaml`` only (nothing beside the manifest). With ``prefix`` its 13 bands
    are new bands (``<prefix>B01`` ...) at Sentinel-2's wavelengths and GSDs, unknown to every other process."""
    from geodata.manifest import Manifest
    from geodata.sensors import get_sensor, load_sensor_files

    s2 = get_sensor("sentinel2_l1c")
    yaml_path = out / "elsewhere" / f"{name}.yaml"
    yaml_path.parent.mkdir(parents=True, exist_ok=True)
    bands = "\n".join(f"  - {{name: {prefix}{b.name}, wavelength_nm: {b.wavelength_nm}, gsd_m: {b.gsd_m}}}" if prefix
                      else f"  - {{name: {b.name}}}" for b in s2.band_objects())
    yaml_path.write_text(f"name: {name}\ndtype: uint16\nscale: {s2.scale}\nnodata: 0\nbands:\n{bands}\n")
    manifest = Manifest.load(manifest_path)
    for tile in manifest.tiles:
        tile.sensor = name
        if tile.path is not None and not Path(tile.path).is_absolute():
            tile.path = str(manifest.resolve(tile.path).resolve())
    manifest.allow_outside_paths = True
    manifest.catalog = load_sensor_files([yaml_path], manifest.catalog)
    path = manifest.save(out / name / "manifest.json")
    (out / name / "sensors.yaml").unlink()
    return path, yaml_path


def write_connection(env: dict[str, str], name: str, address: str, root_cert: Path | None = None) -> Path:
    """Write ``FLWR_HOME/config.toml`` with a SuperLink connection ``name`` -> ``address``: insecure, or
    TLS trusting ``root_cert``."""
    path = Path(env["FLWR_HOME"]) / "config.toml"
    security = f'root-certificates = "{root_cert}"' if root_cert else "insecure = true"
    path.write_text(f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\n{security}\n')
    return path


def register_supernode(env: dict[str, str], connection: str, public_key: Path, name: str) -> int:
    """``flwr supernode register PUBLIC_KEY CONNECTION --name NAME``; returns the new node id."""
    return int(flwr_json(env, ["supernode", "register", str(public_key), connection, "--name", name])["node-id"])


def list_supernodes(env: dict[str, str], connection: str) -> dict[int, str]:
    """``flwr supernode list CONNECTION``: node id -> status (``registered``, ``online``, ...)."""
    return {int(n["node-id"]): n["status"] for n in flwr_json(env, ["supernode", "list", connection])["nodes"]}


