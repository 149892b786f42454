"""Payments service: authorization, capture and void through a gateway."""
