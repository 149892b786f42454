"""The errors a handler raises to tell the bus what to do with its event: the bus's public exceptions.

A service imports these, never the transport's internals:

    from eventbus.errors import PermanentError, TransientError
"""


class TransientError(Exception):
    """A failure that may pass (a gateway timeout, a service briefly down): the event is tried again,
    with backoff, until the attempts run out."""


class PermanentError(Exception):
    """A failure that retrying cannot fix (a business rejection, a payload the handler cannot use): the
    event goes to the dead-letter store at once."""


class EventExpired(PermanentError):
    """An event older than the inbox window allows: a duplicate of it could no longer be recognised."""
