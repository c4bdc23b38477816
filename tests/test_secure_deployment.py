"""A secured loopback deployment, as the README's "Real federation" steps describe: TLS from a CA
made here, the SuperLink on loopback behind ``eosfed gateway`` (the Fleet API only), Flower's
CLI-managed SuperNode authentication (``--enable-supernode-auth`` on the SuperLink, ``flwr supernode
register`` of each partner's public key, ``--auth-supernode-private-key`` on each SuperNode), and
three intruders that must be refused: a SuperNode whose key was never registered, one with no key at
all, and a registered partner holding ``ca.crt`` that tries the Control API through the gateway
(list nodes, register a node, start a run) and the Runtime API."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from flower_harness import (
    BIN,
    REPO,
    FlowerProcesses,
    flwr_run,
    free_port,
    isolated_flower,
    list_supernodes,
    make_node_key,
    make_tls,
    partner_manifest,
    pids_mentioning,
    register_supernode,
    run_status,
    write_connection,
)

PARTNERS = ("lab-a", "lab-b")


def _pem_lines(public_key: Path) -> list[str]:
    """The base64 lines of an OpenSSH public key in PEM form (how the SuperLink logs a refused key)."""
    key = serialization.load_ssh_public_key(public_key.read_bytes())
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return [line for line in pem.splitlines() if not line.startswith("-----")]


def _partner_tries_control(env: dict[str, str], home: Path, gateway: str, ca_cert: Path,
                           public_key: Path) -> dict[str, bool]:
    """A partner's attempts, through the gateway, on what only the coordinator may do: True where one
    succeeded."""
    env = {**env, "FLWR_HOME": str(home)}
    home.mkdir(parents=True, exist_ok=True)
    write_connection(env, "coordinator", gateway, root_cert=ca_cert)

    def flwr(*args: str) -> bool:
        done = subprocess.run([str(BIN / "flwr"), *args], env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=60)
        return done.returncode == 0 and "Successfully started run" in done.stdout + done.stderr \
            if args[0] == "run" else done.returncode == 0 and '"success": true' in done.stdout

    context = ssl.create_default_context(cafile=str(ca_cert))

    def post(path: str) -> bool:
        request = urllib.request.Request(f"https://{gateway}{path}", data=b"", method="POST",
                                         headers={"Content-Type": "application/protobuf"})
        try:
            with urllib.request.urlopen(request, context=context, timeout=30) as reply:
                return reply.status < 400
        except urllib.error.HTTPError:
            return False

    return {
        "list nodes": flwr("supernode", "list", "coordinator", "--format", "json"),
        "register a node": flwr("supernode", "register", str(public_key), "coordinator", "--name", "lab-z",
                                "--format", "json"),
        "start a run": flwr("run", str(REPO), "coordinator"),
        "list runs": flwr("ls", "coordinator", "--format", "json"),
        "runtime get-nodes": post("/v1/runtime/get-nodes"),
        "control list-nodes": post("/v1/control/list-nodes"),
    }


def test_tls_deployment_admits_only_registered_supernodes(tmp_path: Path, shared_data: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    keys = {name: make_node_key(tmp_path / "keys", name) for name in (*PARTNERS, "rogue")}
    data = {name: partner_manifest(shared_data, tmp_path / name, 1) for name in PARTNERS}
    out = tmp_path / "outputs"
    run_config = {
        "experiment": "quick",
        "overrides": f"~institutions output_dir={out} stop_after=discover federation.min_nodes=2 "
                     "federation.node_wait_s=30",
        "run-name": "secured",
    }
    with isolated_flower(tmp_path) as env, FlowerProcesses(env, tmp_path / "procs") as procs:
        superlink = procs.superlink(free_port(), ["--enable-supernode-auth",
                                                  "--disable-runtime-dependency-installation"], tls=tls)
        gateway = procs.gateway(superlink, tls)
        write_connection(env, "partners", superlink, root_cert=tls.ca_cert)
        registered = {name: register_supernode(env, "partners", keys[name][1], name) for name in PARTNERS}
        for name in PARTNERS:
            procs.supernode(name, gateway, {"institution": name, "sensor": "sentinel2_l1c", "task": "scene",
                                              "data-path": str(data[name])},
                            ["--auth-supernode-private-key", str(keys[name][0])], root_cert=tls.ca_cert)
        intruder_config = {"institution": "rogue", "sensor": "sentinel2_l1c", "task": "scene",
                           "data-path": str(data["lab-a"])}
        procs.supernode("rogue", gateway, intruder_config, ["--auth-supernode-private-key", str(keys["rogue"][0]),
                                                              "--max-retries", "1"], root_cert=tls.ca_cert, wait=False)
        procs.supernode("keyless", gateway, {**intruder_config, "institution": "keyless"}, ["--max-retries", "1"],
                        root_cert=tls.ca_cert, wait=False)
        exit_codes = {name: procs.process(name).wait(timeout=30) for name in ("rogue", "keyless")}
        control = _partner_tries_control(env, tmp_path / "lab-a-home", gateway, tls.ca_cert, keys["rogue"][1])

        run_id, output = flwr_run(env, "partners", run_config, timeout_s=180)
        status = run_status(env, "partners", run_id)
        nodes = list_supernodes(env, "partners")
        logs = {name: procs.log(name) for name in ("superlink", "rogue", "keyless", "gateway")}
        runs = json.loads(subprocess.run([str(BIN / "flwr"), "ls", "partners", "--format", "json"], env=env,
                                         cwd=REPO, capture_output=True, text=True, timeout=60).stdout)["runs"]
        assert status == "finished:completed", f"run {run_id} is {status}\n{output[-4000:]}\n{procs.logs()}"
    assert not pids_mentioning(str(tmp_path)), "a Flower process outlived the test"

    # The intruders were turned away by the SuperLink, and said so.
    assert exit_codes["rogue"] != 0 and "Failed to activate SuperNode" in logs["rogue"], logs["rogue"]
    assert "No SuperNode found with the given public key" in logs["superlink"]
    assert all(line in logs["superlink"] for line in _pem_lines(keys["rogue"][1])), "refused key not logged"
    assert exit_codes["keyless"] != 0, logs["keyless"]
    assert "All SuperNodes must be registered via the CLI" in logs["keyless"], logs["keyless"]
    # A partner with ca.crt reaches the gateway only, and the gateway serves it no Control or Runtime API.
    assert all(not ok for ok in control.values()), control
    assert "refused POST /v1/control/list-nodes" in logs["gateway"], logs["gateway"]
    assert [int(r["run-id"]) for r in runs] == [run_id], runs
    # Only the registered nodes exist for the SuperLink, and only they reached the app.
    assert nodes == {node: "online" for node in registered.values()}
    roster = json.loads((out / "secured" / "phases" / "discover.json").read_text())
    assert roster["num_nodes"] == 2
    assert {name: m["node_id"] for name, m in roster["institutions"].items()} == registered
    assert roster["failures"] == []
