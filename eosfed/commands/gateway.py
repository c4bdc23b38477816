"""``eosfed gateway``: the partners' TLS door to a SuperLink on the coordinator's loopback (Fleet API only)."""

from __future__ import annotations

import argparse
from pathlib import Path

from eosfed.commands.args import UsageError
from server.gateway import serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="0.0.0.0:9092", help="HOST:PORT partners' SuperNodes connect to")
    parser.add_argument("--superlink", default="127.0.0.1:9093",
                        help="the SuperLink's loopback HOST:PORT (flower-superlink --host 127.0.0.1 --port ...)")
    parser.add_argument("--certfile", type=Path, required=True, help="server certificate partners see (PEM)")
    parser.add_argument("--keyfile", type=Path, required=True, help="its private key (PEM)")
    parser.add_argument("--ca-cert", type=Path, required=True,
                        help="CA that signed the SuperLink's certificate (the gateway checks it)")


def run(args: argparse.Namespace) -> int:
    for flag in ("certfile", "keyfile", "ca_cert"):
        if not getattr(args, flag).is_file():
            raise UsageError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: no such file")
    host = args.superlink.rpartition(":")[0]
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
        raise UsageError(f"--superlink {args.superlink}: the SuperLink must listen on loopback only")
    serve(args.listen, args.superlink, args.certfile, args.keyfile, args.ca_cert)
    return 0
