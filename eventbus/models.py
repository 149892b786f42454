"""Outbox, inbox and dead letters: the tables that make delivery at-least-once and effects exactly-once."""

from django.db import models
from django.utils import timezone


class OutboxMessage(models.Model):
    """An event committed with the business change that caused it, waiting for the relay to publish it."""

    event_id = models.UUIDField(unique=True)
    event_type = models.CharField(max_length=200)
    exchange = models.CharField(max_length=200)
    routing_key = models.CharField(max_length=200)
    correlation_id = models.CharField(max_length=64, blank=True, db_index=True)
    body = models.JSONField(help_text="The whole CloudEvent, as published.")
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    publish_attempts = models.PositiveIntegerField(default=0, help_text="Tries so far, failed ones included.")
    last_error = models.TextField(blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True, help_text="Backoff after a failure.")
    # A relay (or the sweep) leases the rows it publishes; another may take them once the lease runs out.
    claimed_by = models.CharField(max_length=200, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    sent_by = models.CharField(max_length=200, blank=True, help_text="The relay whose publish the broker confirmed.")
    blocked_at = models.DateTimeField(
        null=True, blank=True, help_text="Set when the row ran out of attempts; relays skip it until it is unblocked."
    )

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["id"], condition=models.Q(sent_at__isnull=True), name="eventbus_outbox_pending"),
            # Retention finds sent rows by age, and the health page the newest send, without a scan.
            models.Index(fields=["sent_at"], condition=models.Q(sent_at__isnull=False), name="eventbus_outbox_sent"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"


class InboxMessage(models.Model):
    """Proof that a handler has applied an event; written in the same transaction as the effect."""

    handler = models.CharField(max_length=200)
    event_id = models.UUIDField()
    event_type = models.CharField(max_length=200)
    correlation_id = models.CharField(max_length=64, blank=True, db_index=True)
    task_id = models.CharField(max_length=64, blank=True)
    # When the handling began (see handling.apply_once): the row is inserted then, or in a batch handled whole
    # written with the batch's others once all ran.
    processed_at = models.DateTimeField(default=timezone.now, editable=False)
    delivered_at = models.DateTimeField(
        null=True, blank=True, help_text="When the worker's intake received the event (eventbus.receipts)."
    )

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["handler", "event_id"], name="eventbus_inbox_once")]
        indexes = [models.Index(fields=["processed_at"], name="eventbus_inbox_processed")]  # retention by age

    def __str__(self) -> str:
        return f"{self.handler} <- {self.event_type} {self.event_id}"


class DeadLetter(models.Model):
    """A message that could not be handled: poison at intake, retries exhausted, rejected by the broker, or
    forged (sent by a broker user that may not send it)."""

    class Reason(models.TextChoices):
        POISON = "poison", "cannot be parsed or validated"
        EXHAUSTED = "exhausted", "retries exhausted"
        PERMANENT = "permanent", "permanent error"
        BROKER = "broker", "dead-lettered by the broker"
        HOP_LIMIT = "hop_limit", "hop limit exceeded"
        EXPIRED = "expired", "older than the inbox window"
        FORGED = "forged", "not sent by the broker user allowed to send it"

    reason = models.CharField(max_length=16, choices=Reason.choices, db_index=True)
    queue = models.CharField(max_length=200, help_text="The queue the message was consumed from.")
    handler = models.CharField(max_length=200, blank=True)
    event_id = models.CharField(max_length=200, blank=True, db_index=True)
    event_type = models.CharField(max_length=200, blank=True)
    content_type = models.CharField(max_length=200, blank=True)
    body = models.TextField(help_text="The message body as received (never deserialized when not JSON).")
    headers = models.JSONField(default=dict, blank=True)
    error = models.TextField()
    error_class = models.CharField(
        max_length=200, blank=True, help_text="The exception's class, or the reason when the error names none."
    )
    # Letters that failed alike share it: (event type, handler or queue, error class), hashed; see deadletters.
    fingerprint = models.CharField(max_length=16, blank=True, db_index=True)
    # The queue, handler (if any) and body, hashed: a message the broker delivers again (its acknowledgement lost
    # with a worker or the broker) is found filed already, and not filed twice; see deadletters.store.
    delivery_digest = models.CharField(max_length=64, blank=True, db_index=True)
    traceback = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    replayed_at = models.DateTimeField(null=True, blank=True)
    replay_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The health page counts what waits for an operator; retention finds handled letters by age.
            models.Index(fields=["id"], condition=models.Q(replayed_at__isnull=True), name="eventbus_dead_unreplayed"),
            models.Index(
                fields=["replayed_at"], condition=models.Q(replayed_at__isnull=False), name="eventbus_dead_replayed"
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.reason} {self.event_type or self.content_type} from {self.queue}"


class DeadLetterReplay(models.Model):
    """One replay of a dead letter: who sent it, when, the body before and after (an operator may correct it),
    and whether the broker took it."""

    class Outcome(models.TextChoices):
        PENDING = "pending", "not confirmed by the broker yet"
        SENT = "sent", "sent"
        FAILED = "failed", "not sent"

    dead_letter = models.ForeignKey(DeadLetter, on_delete=models.CASCADE, related_name="replays")
    actor = models.CharField(max_length=200, help_text="The admin user; for `manage.py dlq`, cli: and the OS user.")
    replayed_at = models.DateTimeField(auto_now_add=True)
    queue = models.CharField(max_length=200, help_text="The event queue the body was sent to.")
    body_before = models.TextField()
    body_after = models.TextField(help_text="What was sent: the stored body, or the operator's correction.")
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.PENDING)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"replay of dead letter #{self.dead_letter_id} by {self.actor}"

    @property
    def edited(self) -> bool:
        return self.body_before != self.body_after
