"""NotificationListener: LISTEN for new jobs and abort requests, for one worker.

The connector's `listen_notify` keeps one connection listening and reconnects
on loss (connectors/listener.py); this service only retries, with capped
backoff, when `listen_notify` itself fails, and tells its owner through
callbacks. Notifications sent while nobody listened are lost, so
`on_listening` runs after every (re)connection: the worker looks for jobs then.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from procrastinate_core.connectors.base import BaseConnector
from procrastinate_core.service import Backoff, Service, TestSignal

logger = logging.getLogger(__name__)

ABORT_CHANNEL = "pcq_abort"


def listen_channels(queues: tuple[str, ...] | None) -> tuple[str, ...]:
    channels = [f"pcq_q_{queue}" for queue in queues] if queues else ["pcq_any"]
    return (*channels, ABORT_CHANNEL)


@dataclasses.dataclass(frozen=True)
class ListenerConfig:
    channels: tuple[str, ...]


class NotificationListener(Service):
    """Listens on `config.channels`; `listening` is False while deaf (the worker polls then)."""

    name = "listener"
    what = "Listening for notifications"
    backoff = Backoff(initial=0.5, cap=5.0)

    def __init__(
        self,
        connector: BaseConnector,
        config: ListenerConfig,
        on_job: Callable[[], None],
        on_abort: Callable[[str], None],
    ) -> None:
        super().__init__()
        self.connector = connector
        self.config = config
        self.on_job = on_job
        self.on_abort = on_abort
        self.listening = False
        #: test signal: the listener is (again) listening
        self.connected = TestSignal()

    @property
    def listen_count(self) -> int:
        """How many times the listener (re)connected."""
        return self.connected.count

    def _on_notification(self, channel: str, payload: str) -> None:
        if channel == ABORT_CHANNEL:
            self.on_abort(payload)
        else:
            self.on_job()

    def _on_listening(self) -> None:
        self.listening = True
        self.connected.emit()
        self.on_job()  # what was deferred while we were deaf

    async def step(self) -> float:
        try:
            await self.connector.listen_notify(
                list(self.config.channels), self._on_notification, self._on_listening
            )
        finally:
            self.listening = False
        return self.backoff.initial  # returned (it should not): listen again shortly
