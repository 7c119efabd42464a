"""The seed notebook's HTTP endpoint: ``POST /update-data`` writes one event and propagates it at once.

Run it::

    python -m example_project.api --port 8000          # data in $DATAPIPE_EXAMPLE_DB or .demo/example.sqlite
    curl -X POST localhost:8000/update-data -H 'content-type: application/json' \\
         -d '{"user_id": "1", "event_id": "1", "event": {"event_type": "click", "ip": "111.111.111.111"}}'
    curl localhost:8000/users/1

Each request writes the event with ``store_chunk`` and runs ``run_steps_changelist`` on the keys it
changed, so ``click_count``, ``ip``, ``user_ips``, ``ip_stats`` and ``user_report`` are current when the
response returns. The transform metadata records those keys as processed, so the Dagster sensors
(``example_project.definitions``) see nothing stale afterwards: both paths share one state.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pandas as pd
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from datapipe_dagster import ChangeList, DatapipeError, build_compute, run_steps_changelist
from example_project.catalog import ExampleStore, open_store
from example_project.pipeline import make_pipeline


class UpdateDataRequest(BaseModel):
    """One site event, as in the seed notebook."""

    user_id: str = Field(min_length=1)
    event_id: str = Field(min_length=1)
    event: dict[str, Any]


class UpdateDataResponse(BaseModel):
    """What a write did: ``ok``, whether the event changed anything, and rows changed per derived table."""

    result: str
    changed: bool
    derived: dict[str, int]


def _as_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in df.to_dict("records")]


def create_app(store: ExampleStore | None = None) -> FastAPI:
    """The FastAPI app on ``store`` (default: the database named by ``$DATAPIPE_EXAMPLE_DB``)."""
    store = store or open_store()
    steps = build_compute(store.ds, store.catalog, make_pipeline())
    # One writer at a time: FastAPI runs sync endpoints in a thread pool, and a changelist run must see the
    # writes before it; the database serialises writers anyway, this only avoids busy waiting.
    lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        store.dispose()

    app = FastAPI(title="datapipe_dagster example: events API", lifespan=lifespan)

    @app.post("/update-data", response_model=UpdateDataResponse)
    def update_data(req: UpdateDataRequest) -> UpdateDataResponse:
        """Write the event and propagate the change through every step (the seed's endpoint)."""
        chunk = pd.DataFrame({"user_id": [req.user_id], "event_id": [req.event_id], "event": [req.event]})
        with lock:
            try:
                idx = store.catalog.get_datatable(store.ds, "events").store_chunk(chunk)
            except DatapipeError as e:
                raise HTTPException(status_code=422, detail=str(e)) from e
            cl = ChangeList.create("events", idx)
            summary = run_steps_changelist(store.ds, steps, cl)
        derived: dict[str, int] = {}
        for res in summary.steps:
            for table, stats in res.outputs.items():
                derived[table] = derived.get(table, 0) + stats.inserted + stats.updated + stats.deleted
        if not summary.ok:
            raise HTTPException(status_code=500, detail=f"event stored, but some keys failed: {summary}")
        return UpdateDataResponse(result="ok", changed=len(idx) > 0, derived=derived)

    @app.get("/users/{user_id}")
    def get_user(user_id: str) -> dict[str, Any]:
        """The derived rows of one user: click_count, ip, the ips seen and the report row."""
        idx = pd.DataFrame({"user_id": [user_id]})
        out: dict[str, Any] = {"user_id": user_id}
        for table in ("click_count", "ip", "user_report"):
            out[table] = _as_records(store.catalog.get_datatable(store.ds, table).get_data(idx))
        out["user_ips"] = _as_records(store.catalog.get_datatable(store.ds, "user_ips").get_data(idx))
        if not any(out[t] for t in ("click_count", "ip", "user_report")):
            raise HTTPException(status_code=404, detail=f"no derived rows for user_id={user_id!r}")
        return out

    @app.get("/health")
    def health() -> dict[str, str]:
        """Liveness, and which database the API writes to."""
        return {"status": "ok", "db": store.dbconn.safe_url}

    return app


def main(argv: list[str] | None = None) -> None:
    """``python -m example_project.api [--host 127.0.0.1] [--port 8000] [--db PATH_OR_URL]``."""
    import uvicorn

    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], prog="python -m example_project.api"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--db",
        default=None,
        help="SQLite path or SQLAlchemy URL (default: $DATAPIPE_EXAMPLE_DB or .demo/example.sqlite)",
    )
    args = parser.parse_args(argv)
    store = open_store(args.db)
    print(
        f"events API on http://{args.host}:{args.port} (data: {store.dbconn.safe_url}); POST /update-data, GET /users/<id>"
    )
    uvicorn.run(create_app(store), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
