"""The institution side of each exchange: read the request, act on local data, reply.

Requests and replies carry config records in the node-config key style (see
:mod:`clients.institution`); an exception here becomes Flower's error reply, whose reason (the
exception's message) the coordinator logs and reports.
"""

from __future__ import annotations

import json
import logging

from flwr.app import ConfigRecord, Context, Message, RecordDict

from clients.data import open_manifest, summarize
from clients.institution import institution_for, node_role

__all__ = ["identify", "describe"]

log = logging.getLogger(__name__)


def _reply(message: Message, **records: dict) -> Message:
    return Message(RecordDict({k: ConfigRecord(v) for k, v in records.items()}), reply_to=message)


def _requested_institution(message: Message) -> dict:
    if "institution" not in message.content.config_records:
        raise ValueError(f"{message.metadata.message_type} request lacks the 'institution' record")
    return dict(message.content.config_records["institution"])


def identify(message: Message, context: Context) -> Message:
    """Who this node is, from its node config alone (no data is read)."""
    return _reply(message, identity=node_role(context.node_config).to_record())


def describe(message: Message, context: Context) -> Message:
    """Open the requested institution's data and summarise it."""
    spec = institution_for(context.node_config, _requested_institution(message))
    summary = summarize(open_manifest(spec), spec)
    log.info("Institution %s: %s %s, tiles %s", spec.name, spec.sensor, spec.task, summary["tiles"])
    return _reply(message, summary={"institution": spec.name, "summary": json.dumps(summary)})
