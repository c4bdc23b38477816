"""Records a node already holds: a later request names them by content id instead of carrying them again.

The coordinator sends a record (the student's card and weights, an ensemble) in full the first time it
goes to a node; a later request of the same run that would carry the same record (same name, same
Flower content id) carries only a ``held`` reference instead (:func:`refer`). The node keeps the latest
record of each kept name in its Context state and, before decoding a request, puts the referenced ones
back (:func:`restore`), refusing one it does not hold or whose content id differs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from flwr.app import ConfigRecord, RecordDict

from wire.messages import WireError

__all__ = ["HELD", "held_ids", "refer", "restore"]

HELD = "held"
_PREFIX = "held:"


def held_ids(content: RecordDict, names: Iterable[str]) -> dict[str, str]:
    """Content ids of the records ``names`` that ``content`` carries in full."""
    return {n: content[n].object_id for n in names if n in content}


def refer(content: RecordDict, holds: Mapping[str, str]) -> RecordDict:
    """``content`` with each record the node holds (name -> content id in ``holds``, same id) replaced by a
    ``held`` reference; unchanged when it holds none of them."""
    same = [n for n, record in content.items() if holds.get(n) == record.object_id]
    if not same:
        return content
    out = RecordDict({n: r for n, r in content.items() if n not in same})
    out[HELD] = ConfigRecord({"names": same, "ids": [holds[n] for n in same]})
    return out


def restore(content: RecordDict, state: RecordDict, kept: Iterable[str], source: str) -> None:
    """Node side, in place: put the ``held`` records back from ``state``, then keep the ``kept`` records the
    request carries in ``state`` for later requests. A reference to a record not held, or held with another
    content id, raises :class:`WireError` naming it."""
    if HELD in content:
        ref = content[HELD]
        names, ids = ref.get("names"), ref.get("ids")
        if not (isinstance(names, list) and isinstance(ids, list) and len(names) == len(ids)
                and all(isinstance(x, str) for x in [*names, *ids])):
            raise WireError(f"{source}: record {HELD!r} must hold lists 'names' and 'ids' of equal length")
        for name, object_id in zip(names, ids):
            record = state.get(_PREFIX + name)
            if record is None or record.object_id != object_id:
                raise WireError(f"{source}: record {HELD!r} names {name!r} ({object_id[:12]}), which this node "
                                "does not hold")
            content[name] = record
        del content[HELD]
    for name in kept:
        if name in content:
            state[_PREFIX + name] = content[name]
