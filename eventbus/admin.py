"""Admin for the outbox, inbox and dead letters (with a replay action)."""

from celery import current_app
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from eventbus import deadletters
from eventbus.models import DeadLetter, InboxMessage, OutboxMessage


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    list_display = ["id", "event_type", "routing_key", "correlation_id", "created_at", "sent_at", "publish_attempts"]
    list_filter = [("sent_at", admin.EmptyFieldListFilter), "event_type"]
    search_fields = ["event_id", "event_type", "correlation_id"]
    readonly_fields = [f.name for f in OutboxMessage._meta.fields]

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):
        pending = OutboxMessage.objects.filter(sent_at__isnull=True)
        oldest = pending.order_by("id").values_list("created_at", flat=True).first()
        lag = f"{(timezone.now() - oldest).total_seconds():.1f} s" if oldest else "none"
        title = f"Outbox: {pending.count()} pending, lag {lag}"
        return super().changelist_view(request, {**(extra_context or {}), "title": title})

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


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
        with current_app.connection_for_write() as connection:
            for dead_letter in queryset:
                deadletters.replay(dead_letter, connection)
        self.message_user(request, f"Replayed {queryset.count()} dead letter(s).", messages.SUCCESS)
