"""The partners' only door to the SuperLink: a TLS reverse proxy that forwards the Fleet API alone.

Flower 1.42 serves the Fleet, Control and Runtime APIs of a SuperLink on one HTTP address, and the
open-source distribution has no authentication on the Control API (account authentication is an
enterprise plugin): whoever reaches that address can register nodes, list them and start runs. So the
SuperLink listens on the coordinator's loopback (``--host 127.0.0.1``), its ``flwr`` CLI connects
there, and partners reach this gateway, which forwards ``POST /v1/fleet/*`` (headers and body as
they are, so SuperNode authentication still signs and checks every call) and answers everything
else with 403.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from geodata.errors import InputError

log = logging.getLogger(__name__)

FLEET_PREFIX = "/v1/fleet/"
# Hop-by-hop headers (RFC 9110 7.6.1) and those the proxy recomputes.
_DROP = {"host", "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
         "upgrade", "content-length"}
MAX_BODY_BYTES = 512 * 2**20


def _headers(items) -> list[tuple[str, str]]:
    return [(k, v) for k, v in items if k.lower() not in _DROP]


def create_gateway(superlink: str, ca_cert: Path | None, timeout_s: float = 300.0) -> Starlette:
    """An ASGI app forwarding the Fleet API to ``superlink`` (``host:port``; HTTPS trusting ``ca_cert``,
    plain HTTP when ``ca_cert`` is None, for loopback tests only)."""
    scheme = "https" if ca_cert is not None else "http"
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert else False
    client = httpx.AsyncClient(base_url=f"{scheme}://{superlink}", verify=verify, timeout=timeout_s)

    async def forward(request: Request) -> Response:
        path = request.url.path
        if request.method != "POST" or not path.startswith(FLEET_PREFIX) or ".." in path:
            log.warning("gateway: refused %s %s from %s", request.method, path,
                        request.client.host if request.client else "?")
            return PlainTextResponse("only the Fleet API is served to partners", status_code=403)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return PlainTextResponse("request body too large", status_code=413)
        reply = await client.post(path, content=body, headers=_headers(request.headers.items()))
        return Response(reply.content, status_code=reply.status_code,
                        headers=dict(_headers((k, v) for k, v in reply.headers.items()
                                              if k.lower() != "content-encoding")))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        await client.aclose()

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST", "PUT", "PATCH", "DELETE",
                                                                       "HEAD", "OPTIONS"])],
                     lifespan=lifespan)


def serve(listen: str, superlink: str, certfile: Path, keyfile: Path, ca_cert: Path | None) -> None:
    """Serve the gateway on ``listen`` (``host:port``) with the coordinator's TLS certificate."""
    import uvicorn

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--listen {listen!r}: expected HOST:PORT")
    log.info("gateway: serving the Fleet API of %s on https://%s", superlink, listen)
    uvicorn.run(create_gateway(superlink, ca_cert), host=host, port=int(port), ssl_certfile=str(certfile),
                ssl_keyfile=str(keyfile), log_level="warning")
