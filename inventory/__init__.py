"""Inventory service: products, stock and reservations."""
