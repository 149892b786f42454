"""A throwaway subscribing service, installed by tests/settings_shipping.py only: its Subscriber and handler are
all there is to it, and tests/test_new_subscriber.py shows that is enough to receive events."""
