"""SQLite whose writers queue on a file lock instead of polling for SQLite's.

Every transaction here begins IMMEDIATE: it takes SQLite's write lock at once, so two writers wait
instead of deadlocking. But a writer that finds the lock taken waits in SQLite's busy handler, which
sleeps in growing steps (up to 100 ms) and does not notice the lock coming free. With the workers,
the relay and the web process all writing, `make bench` saw events wait 30 ms at the median behind
those sleeps at half load. Here a transaction first takes an exclusive `flock` on a file beside the
database, which the kernel hands to the next waiter the moment the holder commits or rolls back, and
only then begins. A write outside a transaction (an UPDATE in autocommit mode) takes the same lock for
as long as it runs.

The lock belongs to the connection (each has its own open file), so two threads of one process queue
like two processes; a process that dies loses its lock with its files.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db.backends.sqlite3 import base

WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER")


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._writer_lock_file: int | None = None
        self._writer_lock_held = False

    def create_cursor(self, name: str | None = None) -> base.SQLiteCursorWrapper:
        cursor = self.connection.cursor(factory=WriterLockCursor)
        cursor.database = self
        return cursor

    def _start_transaction_under_autocommit(self) -> None:
        self._take_writer_lock()
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release_writer_lock()
            raise

    def _commit(self) -> None:
        try:
            super()._commit()
        finally:
            if not self.connection or not self.connection.in_transaction:
                self._release_writer_lock()

    def _rollback(self) -> None:
        try:
            super()._rollback()
        finally:
            self._release_writer_lock()

    def _close(self) -> None:
        try:
            super()._close()
        finally:
            self._release_writer_lock()
            if self._writer_lock_file is not None:
                os.close(self._writer_lock_file)
                self._writer_lock_file = None

    def _take_writer_lock(self) -> None:
        if self.is_in_memory_db() or self._writer_lock_held:
            return
        if self._writer_lock_file is None:
            self._writer_lock_file = os.open(f"{self.settings_dict['NAME']}.writer-lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._writer_lock_file, fcntl.LOCK_EX)
        self._writer_lock_held = True

    def _release_writer_lock(self) -> None:
        if self._writer_lock_held:
            fcntl.flock(self._writer_lock_file, fcntl.LOCK_UN)
            self._writer_lock_held = False


class WriterLockCursor(base.SQLiteCursorWrapper):
    """A cursor whose writes outside a transaction take the writer lock while they run."""

    database: DatabaseWrapper

    def execute(self, query: str, params: Any = None) -> Any:
        with self._writing(query):
            return super().execute(query, params)

    def executemany(self, query: str, param_list: Any) -> Any:
        with self._writing(query):
            return super().executemany(query, param_list)

    @contextmanager
    def _writing(self, query: str) -> Iterator[None]:
        if self.database.in_atomic_block or not query.lstrip()[:7].upper().startswith(WRITES):
            yield  # inside a transaction, which holds the lock already; or no write
            return
        self.database._take_writer_lock()
        try:
            yield
        finally:
            self.database._release_writer_lock()
