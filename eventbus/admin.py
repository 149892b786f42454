"""Admin for the outbox, inbox and dead letters; the dead-letter console groups failures by fingerprint and
replays a letter (its body corrected or not) or a whole group, each replay recorded."""

from collections.abc import Callable
from typing import TypeVar

import kombu.exceptions
from celery import current_app
from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from kombu import Connection

from eventbus import deadletters
from eventbus.health import outbox_health
from eventbus.models import DeadLetter, DeadLetterReplay, InboxMessage, OutboxMessage
from eventbus.outbox_claims import outbox_unblock

T = TypeVar("T")
# What a replay meets when the broker is away or refuses it: reported on the page, the replay recorded as failed.
BROKER_ERRORS = (kombu.exceptions.OperationalError, OSError)


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


def group_label(letter: DeadLetter) -> str:
    """A failure group's parts as one line: event type, handler (or queue), error class."""
    return f"{letter.event_type or '(no type)'} · {letter.handler or letter.queue} · {letter.error_class}"


class FailureGroupFilter(admin.SimpleListFilter):
    title = "failure group"
    parameter_name = "fingerprint"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(group.fingerprint, group_label(group.sample)) for group in deadletters.groups(limit=20)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> QuerySet[DeadLetter]:
        # Any fingerprint, not only the recent ones listed: the group page links here for each of its groups.
        return queryset.filter(fingerprint=self.value()) if self.value() else queryset


class DeadLetterReplayInline(admin.TabularInline):
    model = DeadLetterReplay
    fields = ["replayed_at", "actor", "queue", "outcome", "error", "change"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name = "replay"

    def has_view_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        # The record belongs to its dead letter: whoever may see the letter sees how it was replayed.
        return request.user.has_perm("eventbus.view_deadletter") or request.user.has_perm("eventbus.change_deadletter")

    def has_add_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        return False

    @admin.display(description="what changed")
    def change(self, record: DeadLetterReplay) -> str:
        diff = deadletters.replay_diff(record)
        return format_html('<pre class="replay-diff">{}</pre>', diff) if diff else "body unchanged"


class ReplayBodyForm(forms.Form):
    body = forms.CharField(
        strip=False,
        widget=forms.Textarea(attrs={"rows": 28, "class": "vLargeTextField", "spellcheck": "false"}),
        help_text="The CloudEvent to send. It is checked against its contract first; nothing goes if it fails.",
    )


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ["id", "reason", "queue", "handler", "event_type", "error_class", "attempts", "created_at",
                    "replay_count"]  # fmt: skip
    list_filter = [FailureGroupFilter, "reason", "queue", ("replayed_at", admin.EmptyFieldListFilter)]
    search_fields = ["event_id", "event_type", "error", "handler"]
    fields = ["reason", "queue", "handler", "event_id", "event_type", "content_type", "error", "error_class",
              "fingerprint", "readable_body", "headers", "traceback", "attempts", "created_at", "replayed_at",
              "replay_count"]  # fmt: skip
    readonly_fields = fields
    inlines = [DeadLetterReplayInline]
    actions = ["replay"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_urls(self) -> list:
        view = self.admin_site.admin_view
        return [
            path("groups/", view(self.groups_view), name="eventbus_deadletter_groups"),
            path(
                "groups/<str:fingerprint>/replay/",
                view(self.replay_group_view),
                name="eventbus_deadletter_replay_group",
            ),
            path(
                "<path:object_id>/edit-and-replay/", view(self.edit_replay_view), name="eventbus_deadletter_edit_replay"
            ),
            *super().get_urls(),
        ]

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None):
        # Every field is read-only: a letter changes only by a replay, which records what it sent.
        no_save = {"show_save": False, "show_save_and_continue": False, "show_save_and_add_another": False}
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **no_save})

    @admin.display(description="body")
    def readable_body(self, dead_letter: DeadLetter) -> str:
        return format_html('<pre class="dead-letter-body">{}</pre>', deadletters.readable_body(dead_letter.body))

    @admin.action(description="Replay to the original event queue", permissions=["change"])
    def replay(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        replayed = 0

        def replay_each(connection: Connection) -> None:
            nonlocal replayed
            for dead_letter in queryset:
                try:
                    deadletters.replay(dead_letter, connection, actor=request.user.get_username())
                    replayed += 1
                except deadletters.NotReplayable as error:
                    self.message_user(request, str(error), messages.WARNING)

        self._on_broker(request, replay_each)
        self.message_user(request, f"Replayed {replayed} dead letter(s).", messages.SUCCESS)

    def groups_view(self, request: HttpRequest) -> HttpResponse:
        """Failures grouped by fingerprint, each with a link to its letters and a replay of the whole group."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        changelist = reverse("admin:eventbus_deadletter_changelist")
        rows = [(group, group_label(group.sample), f"{changelist}?fingerprint={group.fingerprint}")
                for group in deadletters.groups()]  # fmt: skip
        context = {
            **self._context(request, "Dead letters by failure"),
            "rows": rows,
            "can_replay": self.has_change_permission(request),
        }
        return TemplateResponse(request, "admin/eventbus/deadletter/groups.html", context)

    def replay_group_view(self, request: HttpRequest, fingerprint: str) -> HttpResponse:
        """Ask, then (on POST) replay every letter of one group that waits for an operator."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        sample = DeadLetter.objects.filter(fingerprint=fingerprint).first()
        if sample is None:
            raise Http404("no such failure group")
        if request.method == "POST":
            actor = request.user.get_username()
            records = self._on_broker(request, lambda c: deadletters.replay_group(fingerprint, c, actor=actor))
            if records is not None:
                self.message_user(request, f"Replayed {len(records)} dead letter(s) of {group_label(sample)}.")
            return redirect("admin:eventbus_deadletter_groups")
        context = {
            **self._context(request, "Replay a failure group"),
            "label": group_label(sample),
            "sample": sample,
            "count": deadletters.replayable().filter(fingerprint=fingerprint).count(),
        }
        return TemplateResponse(request, "admin/eventbus/deadletter/replay_group.html", context)

    def edit_replay_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The letter's body in a form; on submit the correction is checked and, if it passes, replayed."""
        dead_letter = self.get_object(request, unquote(object_id))
        if dead_letter is None:
            raise Http404("no such dead letter")
        if not self.has_change_permission(request, dead_letter):
            raise PermissionDenied
        form = ReplayBodyForm(request.POST or None, initial={"body": deadletters.readable_body(dead_letter.body)})
        refused = ""
        if request.method == "POST" and form.is_valid():
            body, actor = form.cleaned_data["body"], request.user.get_username()
            try:
                record = self._on_broker(request, lambda c: deadletters.replay(dead_letter, c, actor=actor, body=body))
            except deadletters.InvalidBody as error:
                form.add_error("body", str(error))
            except deadletters.NotReplayable as error:
                refused = str(error)
            else:
                if record is not None:
                    edited = "corrected" if record.edited else "unchanged"
                    self.message_user(request, f"Replayed dead letter #{dead_letter.pk} ({edited}) to {record.queue}.")
                return redirect("admin:eventbus_deadletter_change", dead_letter.pk)
        context = {
            **self._context(request, f"Edit and replay dead letter #{dead_letter.pk}"),
            "form": form,
            "original": dead_letter,
            "queue": deadletters.replay_queue(dead_letter),
            "refused": refused,
        }
        return TemplateResponse(request, "admin/eventbus/deadletter/edit_replay.html", context)

    def _context(self, request: HttpRequest, title: str) -> dict:
        return {**self.admin_site.each_context(request), "title": title, "opts": self.model._meta}

    def _on_broker(self, request: HttpRequest, replay: Callable[[Connection], T]) -> T | None:
        """Run `replay` on a broker connection; a broker failure becomes a message on the page, not an error page
        (the replay records it)."""
        try:
            with current_app.connection_for_write() as connection:
                return replay(connection)
        except BROKER_ERRORS as error:
            self.message_user(request, f"The broker did not take the replay: {error}", messages.ERROR)
            return None
