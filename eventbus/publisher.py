"""Publishing with publisher confirms, many messages in flight per wait for the broker's acks."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import amqp
from celery import Celery
from kombu import Connection


class PublishFailed(RuntimeError):
    """The broker nacked a message or did not confirm it in time."""


@dataclass(frozen=True)
class Outgoing:
    exchange: str
    routing_key: str
    body: bytes
    content_type: str
    message_id: str


def batch_connection(app: Celery) -> Connection:
    """A broker connection for ConfirmingPublisher: Celery's per-message confirm wait is switched
    off on it, because the publisher collects the confirms of a whole batch itself."""
    return app.connection_for_write(transport_options={"confirm_publish": False})


class ConfirmingPublisher:
    """Publishes a batch on one confirm-mode channel and waits once for all of its confirms."""

    def __init__(self, connection: Connection, confirm_timeout: float = 30) -> None:
        self.connection = connection
        self.confirm_timeout = confirm_timeout
        self._channel: amqp.Channel | None = None
        self._next_tag = 1
        self._unconfirmed: set[int] = set()
        self._nacked: set[int] = set()

    @property
    def channel(self) -> amqp.Channel:
        if self._channel is None or not self._channel.is_open:
            self._channel = self.connection.channel()
            self._channel.confirm_select()
            self._channel.events["basic_ack"].add(self._on_ack)
            self._channel.events["basic_nack"].add(self._on_nack)
            self._next_tag = 1
        return self._channel

    def _settle(self, tag: int, multiple: bool) -> set[int]:
        done = {t for t in self._unconfirmed if t <= tag} if multiple else {tag}
        self._unconfirmed -= done
        return done

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._nacked |= self._settle(tag, multiple)

    def publish_batch(self, messages: Iterable[Outgoing]) -> int:
        """Publish every message persistently, then block until the broker has confirmed them all."""
        channel = self.channel
        self._nacked.clear()
        count = 0
        for message in messages:
            channel.basic_publish(
                amqp.Message(
                    message.body,
                    content_type=message.content_type,
                    content_encoding="utf-8",
                    delivery_mode=2,
                    message_id=message.message_id,
                ),
                exchange=message.exchange,
                routing_key=message.routing_key,
            )
            self._unconfirmed.add(self._next_tag)
            self._next_tag += 1
            count += 1
        self.wait_for_confirms()
        return count

    def wait_for_confirms(self) -> None:
        connection = self.connection.connection  # the py-amqp connection underneath kombu's
        deadline = time.monotonic() + self.confirm_timeout
        while self._unconfirmed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._unconfirmed.clear()
                raise PublishFailed("the broker did not confirm the batch in time")
            try:
                connection.drain_events(timeout=min(remaining, 1.0))
            except TimeoutError:
                continue
        if self._nacked:
            raise PublishFailed(f"the broker refused {len(self._nacked)} message(s)")
