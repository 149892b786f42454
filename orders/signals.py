"""Signals the orders service sends. `order_placed` announces a new order inside its transaction."""

from django.dispatch import Signal

# Sent with `order`, its saved `lines` (OrderLine) and `payment_token` inside the transaction that
# created them. The token is not stored by the orders service.
order_placed = Signal()
