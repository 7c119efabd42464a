"""A starter datapipe pipeline: site events -> per-user counts, recomputed only for the users whose
events changed. ``defs.yaml`` beside this file turns it into Dagster assets.

What to change:

1. ``catalog``: your tables. Each needs a primary key; columns are SQLAlchemy columns. The tables live
   in the database of ``database_url`` in defs.yaml (the ``dbconn`` argument).
2. ``sample_events``: where the events come from. It writes a few rows so the pipeline runs as
   scaffolded; replace it with your source (read a file, call an API), or delete the step and write
   ``events`` from outside (``catalog.get_datatable(ds, "events").store_chunk(df)``): the sensor sees
   the new rows.
3. ``count_events``: your pandas function. It receives *all* events of the users whose events changed
   (never only the changed rows) and returns their rows of ``user_counts``; rows of those users it no
   longer returns are deleted.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
from sqlalchemy import Column, Integer, String

from datapipe_dagster import BatchGenerate, BatchTransform, Catalog, DBConn, Pipeline, Table, TableStoreDB


def catalog(dbconn: DBConn) -> Catalog:
    """The tables, in the database of ``database_url`` (defs.yaml passes its DBConn)."""
    return Catalog(
        {
            "events": Table(
                TableStoreDB(
                    "events",
                    dbconn,
                    [
                        Column("user_id", String(), primary_key=True),
                        Column("event_id", String(), primary_key=True),
                        Column("event_type", String()),
                    ],
                ),
                description="Site events, one row per (user_id, event_id).",
            ),
            "user_counts": Table(
                TableStoreDB(
                    "user_counts",
                    dbconn,
                    [
                        Column("user_id", String(), primary_key=True),
                        Column("n_events", Integer()),
                        Column("n_clicks", Integer()),
                    ],
                ),
                description="Events and clicks per user.",
            ),
        }
    )


def sample_events() -> Iterator[pd.DataFrame]:
    """A few events so the pipeline runs as scaffolded: replace with your source."""
    yield pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u2", "u3"],
            "event_id": ["e1", "e2", "e3", "e1", "e2", "e1"],
            "event_type": ["click", "view", "click", "view", "view", "click"],
        }
    )


def count_events(events: pd.DataFrame) -> pd.DataFrame:
    """Per user: the number of events and of clicks (the transform key is ``user_id``, the key column
    ``events`` and ``user_counts`` share)."""
    return (
        events.assign(is_click=events["event_type"].eq("click").astype("int64"))
        .groupby("user_id", as_index=False)
        .agg(n_events=("event_id", "size"), n_clicks=("is_click", "sum"))
    )


pipeline = Pipeline(
    [
        BatchGenerate(sample_events, outputs=["events"]),
        BatchTransform(count_events, inputs=["events"], outputs=["user_counts"]),
    ]
)
