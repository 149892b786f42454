"""Orders JSON API: place an order (idempotently with `Idempotency-Key`) and follow it."""

from __future__ import annotations

import hashlib
from uuid import UUID

from django.db import IntegrityError, transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orders.models import MAX_QUANTITY_PER_LINE, IdempotencyKey, Order
from orders.selectors import order_get, order_timeline
from orders.services import MAX_LINES, LineRequest, OrderRejected, order_place


class StrictIntegerField(serializers.IntegerField):
    """An integer as JSON writes one: `2`, not `"2"`, `" 2 "`, `2.0`, `1e2` or `true` (DRF's own
    IntegerField takes all of those)."""

    def to_internal_value(self, data: object) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class LineInputSerializer(serializers.Serializer):
    product_id = serializers.RegexField(r"^[A-Za-z0-9_-]{1,32}$", help_text="For example P001.")
    quantity = StrictIntegerField(min_value=1, max_value=MAX_QUANTITY_PER_LINE)


class OrderInputSerializer(serializers.Serializer):
    customer_email = serializers.EmailField(max_length=254)
    payment_token = serializers.RegexField(
        r"^tok_[A-Za-z0-9_]{1,64}$",
        help_text="Demo gateway: tok_decline is declined, tok_flaky fails twice then succeeds.",
        error_messages={"invalid": "Expected a payment token like 'tok_visa'."},
    )
    items = LineInputSerializer(many=True, allow_empty=False, max_length=MAX_LINES)


class LineSerializer(serializers.Serializer):
    product_id = serializers.CharField()
    quantity = serializers.IntegerField()
    unit_price = serializers.DecimalField(max_digits=12, decimal_places=2)


class HandlerRunSerializer(serializers.Serializer):
    handler = serializers.CharField()
    task_id = serializers.CharField()
    state = serializers.CharField()
    attempt = serializers.IntegerField(allow_null=True)
    outcome = serializers.CharField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class EventSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    event_id = serializers.CharField()
    type = serializers.CharField()
    source = serializers.CharField()
    causation_id = serializers.CharField()
    published_at = serializers.DateTimeField(allow_null=True)
    handlers = HandlerRunSerializer(many=True)


class OrderSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=Order.Status.choices)
    cancel_reason = serializers.CharField()
    customer_email = serializers.EmailField()
    total_amount = serializers.DecimalField(max_digits=14, decimal_places=2)
    currency = serializers.CharField()
    created_at = serializers.DateTimeField()
    items = LineSerializer(source="lines.all", many=True)
    events = serializers.SerializerMethodField()

    @extend_schema_field(EventSerializer(many=True))
    def get_events(self, order: Order) -> list[dict]:
        return EventSerializer(order_timeline(order_id=order.id), many=True).data


IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="Repeat a POST safely: the first response to a key is returned again for the same body.",
)


class OrderCreateApi(APIView):
    """Place an order. It is pending until inventory and payments have answered."""

    @extend_schema(request=OrderInputSerializer, responses={201: OrderSerializer}, parameters=[IDEMPOTENCY_KEY])
    def post(self, request: Request) -> Response:
        key = request.headers.get("Idempotency-Key", "").strip()
        if len(key) > 255 or not key.isprintable():
            # Printable: a NUL byte cannot even be looked up in PostgreSQL (found by the fuzz test there).
            return Response(
                {"Idempotency-Key": ["At most 255 printable characters."]}, status=status.HTTP_400_BAD_REQUEST
            )
        fingerprint = hashlib.sha256(request.body).hexdigest()
        payload = request.data  # parsed first: a body that is not JSON is a 415 (or 400), even with a known key
        if key and (stored := IdempotencyKey.objects.filter(key=key).first()):
            return _replay(stored, fingerprint)
        serializer = OrderInputSerializer(data=payload)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        items = [LineRequest(line["product_id"], line["quantity"]) for line in data["items"]]
        try:
            with transaction.atomic():
                order = order_place(
                    customer_email=data["customer_email"], payment_token=data["payment_token"], items=items
                )
                body = OrderSerializer(order_get(order_id=order.id)).data
                if key:
                    IdempotencyKey.objects.create(
                        key=key, fingerprint=fingerprint, order=order, status_code=201, response=body
                    )
        except OrderRejected as rejected:
            return Response(rejected.errors, status=status.HTTP_400_BAD_REQUEST)
        except IntegrityError:
            if not key:
                raise
            # The same key won a race in another request: nothing of ours was kept; answer as it did.
            return _replay(IdempotencyKey.objects.get(key=key), fingerprint)
        return Response(body, status=status.HTTP_201_CREATED)


def _replay(stored: IdempotencyKey, fingerprint: str) -> Response:
    if stored.fingerprint != fingerprint:
        return Response(
            {"Idempotency-Key": ["This key was used with a different request body."]},
            status=status.HTTP_422_UNPROCESSABLE_ENTITY,
        )
    return Response(stored.response, status=stored.status_code, headers={"Idempotent-Replayed": "true"})


class OrderDetailApi(APIView):
    """An order with its lines and its timeline: every event of its saga and the handler tasks it caused."""

    @extend_schema(responses=OrderSerializer)
    def get(self, request: Request, order_id: UUID) -> Response:
        order = order_get(order_id=order_id)
        if order is None:
            raise NotFound("No order with this id.")
        return Response(OrderSerializer(order).data)
