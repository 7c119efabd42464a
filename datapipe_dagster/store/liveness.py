"""PostgreSQL connections checked for liveness when taken from the pool after being idle a while.

SQLAlchemy's ``pool_pre_ping`` pings the server on every checkout: a round trip before every transaction.
One changed event and its run take three connections, so three of their round trips were pings of
connections returned a millisecond before. Here a connection is pinged only when it has been idle in the
pool for ``PING_IDLE_AFTER`` seconds or more: the connections a server restart, an idle timeout (a
proxy, a firewall) or an administrator leaves dead are the idle ones. A connection that dies in the
moment between two uses fails its next statement, as it could after any ping; SQLAlchemy then discards
every connection of the pool opened before the failure, and a run retries the chunk on a fresh
connection.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

PING_IDLE_AFTER = 1.0
"""Seconds a pooled connection may sit idle before its next checkout pings the server first."""

_CHECKED_IN = "datapipe_checked_in"


def ping_when_idle(engine: sa.Engine) -> None:
    """Ping a connection on checkout when it was idle ``PING_IDLE_AFTER`` seconds or more; a dead one is
    replaced by a fresh connection (the pool's own retry on ``DisconnectionError``)."""
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _checkin(dbapi_conn: Any, record: Any) -> None:
        if dbapi_conn is not None:
            record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        since = record.info.get(_CHECKED_IN)  # None: a connection just opened
        if since is None or time.monotonic() - since < PING_IDLE_AFTER:
            return
        try:
            alive = dialect.do_ping(dbapi_conn)
        except dialect.loaded_dbapi.Error as e:
            if dialect.is_disconnect(e, dbapi_conn, None):
                raise sa.exc.DisconnectionError(f"a pooled connection idle {time.monotonic() - since:.1f} s was closed") from e
            raise
        if not alive:
            raise sa.exc.DisconnectionError("a pooled connection failed its ping")
