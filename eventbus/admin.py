"""Admin for the outbox, inbox and dead letters (with a replay action)."""

from celery import current_app
from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from eventbus import deadletters
from eventbus.health import outbox_health
from eventbus.models import DeadLetter, InboxMessage, OutboxMessage
from eventbus.outbox_claims import outbox_unblock


class OutboxStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"
    STATES = {
        "pending": Q(sent_at__isnull=True, blocked_at__isnull=True),
        "retrying": Q(sent_at__isnull=True, blocked_at__isnull=True, next_attempt_at__isnull=False),
        "blocked": Q(sent_at__isnull=True, blocked_at__isnull=False),
        "sent": Q(sent_at__isnull=False),
    }

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(state, state) for state in self.STATES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> QuerySet[OutboxMessage]:
        return queryset.filter(self.STATES[self.value()]) if self.value() in self.STATES else queryset


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    list_display = ["id", "event_type", "routing_key", "correlation_id", "created_at", "sent_at", "sent_by",
                    "publish_attempts", "last_attempt_at", "blocked_at"]  # fmt: skip
    list_filter = [OutboxStateFilter, "event_type"]
    search_fields = ["event_id", "event_type", "correlation_id"]
    readonly_fields = [f.name for f in OutboxMessage._meta.fields]
    actions = ["unblock"]

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):
        outbox = outbox_health(now=timezone.now())
        blocked = OutboxMessage.objects.filter(sent_at__isnull=True, blocked_at__isnull=False).count()
        lag = f"{outbox.lag_seconds:.1f} s" if outbox.pending else "none"
        title = f"Outbox: {outbox.pending} unsent, {blocked} of them blocked, lag {lag}"
        return super().changelist_view(request, {**(extra_context or {}), "title": title})

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Unblock and publish again")
    def unblock(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        unblocked = outbox_unblock(ids=queryset.values_list("id", flat=True))
        self.message_user(request, f"Unblocked {unblocked} outbox row(s); the relay publishes them.", messages.SUCCESS)


@admin.register(InboxMessage)
class InboxMessageAdmin(admin.ModelAdmin):
    list_display = ["handler", "event_type", "event_id", "correlation_id", "processed_at"]
    list_filter = ["handler", "event_type"]
    search_fields = ["event_id", "correlation_id", "task_id"]
    readonly_fields = [f.name for f in InboxMessage._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ["id", "reason", "queue", "handler", "event_type", "content_type", "attempts", "created_at",
                    "replay_count"]  # fmt: skip
    list_filter = ["reason", "queue", ("replayed_at", admin.EmptyFieldListFilter)]
    search_fields = ["event_id", "event_type", "error", "handler"]
    readonly_fields = ["reason", "queue", "handler", "event_id", "event_type", "content_type", "headers", "error",
                       "traceback", "attempts", "created_at", "replayed_at", "replay_count"]  # fmt: skip
    actions = ["replay"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Replay to the original event queue")
    def replay(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        replayed = 0
        with current_app.connection_for_write() as connection:
            for dead_letter in queryset:
                try:
                    deadletters.replay(dead_letter, connection)
                    replayed += 1
                except deadletters.NotReplayable as error:
                    self.message_user(request, str(error), messages.WARNING)
        self.message_user(request, f"Replayed {replayed} dead letter(s).", messages.SUCCESS)
