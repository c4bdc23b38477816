"""A test double of Flower's Grid: the coordinator runs against ClientApp calls in this process.

:class:`InProcessGrid` hands each message straight to the ClientApp (one Context per node, given node
configs), so a run needs no Flower process; ``faults`` lets a caller make chosen requests fail, go
unanswered or be tampered with. Used by the tests and by the benchmarks that compare against Flower.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["InProcessGrid"]


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
