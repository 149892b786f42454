"""Signals the orders service sends. `order_placed` announces a new order inside its transaction."""

from django.dispatch import Signal

# Sent with `order` (an Order with its lines saved) inside the transaction that created it.
order_placed = Signal()
