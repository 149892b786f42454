"""Publishing with publisher confirms, many messages in flight per wait for the broker's acks.

Each message's fate is its own: the broker confirms it, nacks it, returns it as unroutable, or
does not confirm it in time, and only that message is reported refused; the rest of its batch
stands. Losing the connection says nothing about any message, so that error is raised instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import amqp
from amqp.exceptions import ChannelError, NotFound
from celery import Celery
from kombu import Connection


@dataclass(frozen=True)
class Outgoing:
    exchange: str
    routing_key: str
    body: bytes
    content_type: str
    message_id: str
    user_id: str | None = None  # the connection's broker user, which RabbitMQ vouches for (any other is refused)


def batch_connection(app: Celery, url: str | None = None) -> Connection:
    """A connection to `url` (default: the app's broker) for ConfirmingPublisher: Celery's per-message
    confirm wait is switched off on it, because the publisher collects the confirms of a whole batch itself."""
    return app.connection_for_write(url=url, transport_options={"confirm_publish": False})


class ConfirmingPublisher:
    """Publishes a batch on one confirm-mode channel and waits once for all of its confirms."""

    def __init__(self, connection: Connection, confirm_timeout: float = 30) -> None:
        self.connection = connection
        self.confirm_timeout = confirm_timeout
        self._channel: amqp.Channel | None = None
        self._next_tag = 1
        self._unconfirmed: dict[int, str] = {}  # delivery tag -> message id
        self._refused: dict[str, str] = {}  # message id -> why
        self._exchanges: set[str] = set()  # seen to exist

    @property
    def channel(self) -> amqp.Channel:
        if self._channel is None or not self._channel.is_open:
            self._channel = self.connection.channel()
            self._channel.confirm_select()
            self._channel.events["basic_ack"].add(self._on_ack)
            self._channel.events["basic_nack"].add(self._on_nack)
            self._channel.events["basic_return"].add(self._on_return)
            self._next_tag = 1
        return self._channel

    def publish_batch(self, messages: Iterable[Outgoing]) -> dict[str, str]:
        """Publish every message persistently and mandatory (unroutable ones come back), wait for
        the broker's confirms, and return the refused messages as {message_id: reason}."""
        self.send(messages)
        return self.wait()

    def send(self, messages: Iterable[Outgoing]) -> None:
        """Publish a batch without waiting: wait() then collects its confirms. Publishers on different connections
        can each send before any waits, so that the broker writes their batches at once."""
        messages = list(messages)
        self._unconfirmed.clear()
        self._refused = {}
        # Checked before the first publish: a missing exchange closes the channel, and with it
        # the confirms of everything already published on it.
        missing = self._missing_exchanges({message.exchange for message in messages})
        try:
            channel = self.channel
            for message in messages:
                if message.exchange in missing:
                    self._refused[message.message_id] = f"exchange {message.exchange!r} does not exist"
                    continue
                channel.basic_publish(
                    amqp.Message(
                        message.body,
                        content_type=message.content_type,
                        content_encoding="utf-8",
                        delivery_mode=2,
                        message_id=message.message_id,
                        user_id=message.user_id,
                    ),
                    exchange=message.exchange,
                    routing_key=message.routing_key,
                    mandatory=True,
                )
                self._unconfirmed[self._next_tag] = message.message_id
                self._next_tag += 1
        except ChannelError as error:
            self._channel_closed(error)

    def wait(self) -> dict[str, str]:
        """Wait for the confirms of the batch sent last; return its refused messages as {message_id: reason}."""
        try:
            self._wait_for_confirms()
        except ChannelError as error:
            self._channel_closed(error)
        return self._refused

    def _channel_closed(self, error: ChannelError) -> None:
        # The broker closed the channel: what it had not confirmed may or may not have arrived.
        self._drop_channel()
        self._exchanges.clear()  # perhaps one was deleted: the next batch checks them again
        self._refuse_unconfirmed(f"channel closed by the broker: {error}")

    def _missing_exchanges(self, names: set[str]) -> set[str]:
        missing = set()
        for name in sorted(names - self._exchanges):
            try:
                self.channel.exchange_declare(name, "topic", passive=True)
            except NotFound:
                self._drop_channel()
                missing.add(name)
            else:
                self._exchanges.add(name)
        return missing

    def _drop_channel(self) -> None:
        # py-amqp reopens a channel the broker closed, but without confirms: close it for good.
        if self._channel is not None and self._channel.is_open:
            self._channel.close()
        self._channel = None

    def _wait_for_confirms(self) -> None:
        connection = self.connection.connection  # the py-amqp connection underneath kombu's
        deadline = time.monotonic() + self.confirm_timeout
        while self._unconfirmed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._refuse_unconfirmed(f"not confirmed by the broker within {self.confirm_timeout:g}s")
                return
            try:
                connection.drain_events(timeout=min(remaining, 1.0))
            except TimeoutError:
                continue

    def _refuse_unconfirmed(self, reason: str) -> None:
        for message_id in self._unconfirmed.values():
            self._refused.setdefault(message_id, reason)
        self._unconfirmed.clear()

    def _settle(self, tag: int, multiple: bool) -> list[str]:
        tags = [t for t in self._unconfirmed if t <= tag] if multiple else [tag]
        # Confirms of an earlier batch that timed out arrive late: their tags are gone.
        return [self._unconfirmed.pop(t) for t in tags if t in self._unconfirmed]

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        for message_id in self._settle(tag, multiple):
            self._refused.setdefault(message_id, "nacked by the broker (a queue refused it, or an internal error)")

    def _on_return(self, error: Exception, exchange: str, routing_key: str, message: amqp.Message) -> None:
        # The return comes before the message's ack, which then settles its tag.
        reason = f"returned unroutable by {exchange!r} for {routing_key!r}: {error}"
        self._refused[message.properties.get("message_id", "")] = reason
