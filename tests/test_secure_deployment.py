"""A secured loopback deployment, as the README's "Secured deployment" steps describe: TLS from a CA
made here, Flower's CLI-managed SuperNode authentication (``--enable-supernode-auth`` on the
SuperLink, ``flwr supernode register`` of each partner's public key, ``--auth-supernode-private-key``
on each SuperNode), and two intruders that must be refused: a SuperNode whose key was never
registered and one with no key at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from flower_harness import (
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


@pytest.mark.e2e
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
        write_connection(env, "partners", superlink, root_cert=tls.ca_cert)
        registered = {name: register_supernode(env, "partners", keys[name][1], name) for name in PARTNERS}
        for name in PARTNERS:
            procs.supernode(name, superlink, {"institution": name, "sensor": "sentinel2_l1c", "task": "scene",
                                              "data-path": str(data[name])},
                            ["--auth-supernode-private-key", str(keys[name][0])], root_cert=tls.ca_cert)
        intruder_config = {"institution": "rogue", "sensor": "sentinel2_l1c", "task": "scene",
                           "data-path": str(data["lab-a"])}
        procs.supernode("rogue", superlink, intruder_config, ["--auth-supernode-private-key", str(keys["rogue"][0]),
                                                              "--max-retries", "1"], root_cert=tls.ca_cert, wait=False)
        procs.supernode("keyless", superlink, {**intruder_config, "institution": "keyless"}, ["--max-retries", "1"],
                        root_cert=tls.ca_cert, wait=False)
        exit_codes = {name: procs.process(name).wait(timeout=30) for name in ("rogue", "keyless")}

        run_id, output = flwr_run(env, "partners", run_config, timeout_s=60)
        status = run_status(env, "partners", run_id)
        nodes = list_supernodes(env, "partners")
        logs = {name: procs.log(name) for name in ("superlink", "rogue", "keyless")}
        assert status == "finished:completed", f"run {run_id} is {status}\n{output[-4000:]}\n{procs.logs()}"
    assert not pids_mentioning(str(tmp_path)), "a Flower process outlived the test"

    # The intruders were turned away by the SuperLink, and said so.
    assert exit_codes["rogue"] != 0 and "Failed to activate SuperNode" in logs["rogue"], logs["rogue"]
    assert "No SuperNode found with the given public key" in logs["superlink"]
    assert all(line in logs["superlink"] for line in _pem_lines(keys["rogue"][1])), "refused key not logged"
    assert exit_codes["keyless"] != 0, logs["keyless"]
    assert "All SuperNodes must be registered via the CLI" in logs["keyless"], logs["keyless"]
    # Only the registered nodes exist for the SuperLink, and only they reached the app.
    assert nodes == {node: "online" for node in registered.values()}
    roster = json.loads((out / "secured" / "phases" / "discover.json").read_text())
    assert roster["num_nodes"] == 2
    assert {name: m["node_id"] for name, m in roster["institutions"].items()} == registered
    assert roster["failures"] == []
