"""Request/reply exchanges with nodes over Flower's Grid, with per-request outcomes and timeouts
(the transport: what a message holds is :mod:`wire.messages`).

One node may get several requests in one exchange (a simulated node hosting several institutions),
so requests and outcomes are keyed by the caller's key, not by node id. A node that replies with an
error, or not at all before the timeout, gives a failed outcome with the reason; nothing is raised
for one node's failure, so a phase decides what its minimums allow.

The timeout runs from before the messages are built, and Flower's message TTL is a little longer, so
an unanswered request always ends as "no reply within N s" (``Outcome.timed_out``) rather than as
the SuperLink's later "Message Unavailable" error for an expired message.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

__all__ = ["Request", "Outcome", "Traffic", "content_bytes", "exchange", "wait_for_nodes"]

log = logging.getLogger(__name__)
_POLL_S = 0.5
_TTL_MARGIN_S = 10.0  # a message outlives the coordinator's wait by this much


@dataclass(frozen=True)
class Request:
    key: str
    node_id: int
    content: RecordDict


@dataclass(frozen=True)
class Outcome:
    key: str
    node_id: int
    content: RecordDict | None = None
    error: str | None = None
    timed_out: bool = False  # no reply (not even an error) before the timeout

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Traffic:
    """Bytes of message content sent to and received from nodes, and the number of messages."""

    sent: int = 0
    received: int = 0
    messages: int = 0


def content_bytes(content: RecordDict) -> int:
    """Serialised size of a message's records (what travels, apart from Flower's envelope)."""
    return sum(record.count_bytes() for record in content.values())


def wait_for_nodes(grid: Grid, min_nodes: int, timeout_s: float) -> list[int]:
    """Connected node ids once at least ``min_nodes`` are there; raises after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    announced = -1
    while True:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= min_nodes:
            return node_ids
        if len(node_ids) != announced:
            log.info("Waiting for nodes: %d of %d connected", len(node_ids), min_nodes)
            announced = len(node_ids)
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(node_ids)} node(s) connected after {timeout_s:.0f} s; "
                f"federation.min_nodes is {min_nodes}"
            )
        time.sleep(_POLL_S)


def exchange(grid: Grid, message_type: str, requests: Iterable[Request], timeout_s: float,
             traffic: Traffic | None = None) -> dict[str, Outcome]:
    """Send every request, wait for replies until ``timeout_s``; one :class:`Outcome` per key.
    ``traffic``, when given, accumulates the bytes sent and received."""
    requests = list(requests)
    if not requests:
        return {}
    deadline = time.monotonic() + timeout_s
    if traffic is not None:
        traffic.sent += sum(content_bytes(r.content) for r in requests)
        traffic.messages += len(requests)
    messages = [
        Message(content=r.content, dst_node_id=r.node_id, message_type=message_type,
                ttl=timeout_s + _TTL_MARGIN_S)
        for r in requests
    ]
    ids = list(grid.push_messages(messages))
    outcomes: dict[str, Outcome] = {}
    pending: dict[str, Request] = {}
    for request, message_id in zip(requests, ids, strict=True):
        if message_id:
            pending[message_id] = request
        else:
            outcomes[request.key] = Outcome(request.key, request.node_id, error="the SuperLink refused the message")
    while pending:  # pulls at least once, however long the push took
        for reply in grid.pull_messages(list(pending)):
            request = pending.pop(reply.metadata.reply_to_message_id, None)
            if request is None:
                continue
            if reply.has_error():
                error = f"{reply.error.reason} (code {reply.error.code})"
                outcomes[request.key] = Outcome(request.key, request.node_id, error=error)
            else:
                outcomes[request.key] = Outcome(request.key, request.node_id, content=reply.content)
                if traffic is not None:
                    traffic.received += content_bytes(reply.content)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(_POLL_S)
    for request in pending.values():
        outcomes[request.key] = Outcome(request.key, request.node_id, error=f"no reply within {timeout_s:.0f} s",
                                        timed_out=True)
    for outcome in outcomes.values():
        if not outcome.ok:
            log.warning("%s to node %d (%s) failed: %s", message_type, outcome.node_id, outcome.key, outcome.error)
    return {r.key: outcomes[r.key] for r in requests}

