"""The kinds of fault a chaos run injects, importable before Django is set up (the command line lists them)."""

from __future__ import annotations

# New kinds go last: the seeded moments of the earlier ones then stay where they were.
KINDS = (
    "kill-pool-child", "kill-worker", "kill-relay", "broker-restart", "duplicates", "poison",
    "kill-rabbit-node", "redis-kill", "db-read-only", "postgres-restart",
)  # fmt: skip
POSTGRES_ONLY = frozenset({"postgres-restart"})
# While these last, a consumer cannot write its dead letter and hands it to the broker's dead-letter queue.
DATABASE_FAULTS = frozenset({"db-read-only", "postgres-restart"})


def kinds_for(db: str, chosen: list[str] | None = None) -> list[str]:
    """The kinds a run on `db` injects: `chosen` (default: all), less those its database cannot have."""
    return [k for k in KINDS if (chosen is None or k in chosen) and (db == "postgres" or k not in POSTGRES_ONLY)]
