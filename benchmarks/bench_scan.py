"""Scan benchmark for ``UpdateExternalTable``: what a scan costs when little changed.

    .venv/bin/python -m benchmarks.bench_scan [--files 100000] [--rows 1000000] [--backends sqlite,postgres]

1. A folder of ``--files`` JSON files, 10 of them changed: the fingerprint scan (size + mtime; only the
   changed files are opened, counted by the adapter) vs. ``scan(full=True)``, which opens, hashes and
   compares every file (with the page cache warm: on a cold cache the gap is far larger).
2. An external SQL table of ``--rows`` rows, 100 new rows: the updated-at scan (reads rows past the last
   seen value, through an index) vs. a full scan (reads and hashes every row, sees deletes).

Both baselines run in the same process on the same data, so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from datapipe_dagster import (
    Catalog,
    DataStore,
    DBConn,
    JSONFile,
    Pipeline,
    Table,
    TableStoreDB,
    TableStoreFiledir,
    UpdateExternalTable,
    build_compute,
)
from datapipe_dagster.compute.external import UpdateExternalTableStep

PG_ADMIN = os.environ.get("DATAPIPE_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def fresh_url(backend: str, workdir: str) -> tuple[str, Callable[[], None]]:
    if backend == "sqlite":
        return f"sqlite:///{workdir}/scan-{uuid.uuid4().hex[:8]}.sqlite", lambda: None
    name = f"bench_scan_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name, drop


def bench_folder(n_files: int, workdir: str, backend: str) -> list[tuple[str, str]]:
    folder = os.path.join(workdir, "drop")
    os.makedirs(folder)
    for i in range(n_files):
        with open(os.path.join(folder, f"{i}.json"), "w") as f:
            f.write(json.dumps({"name": f"item {i}", "price": i * 0.5}))
    url, drop = fresh_url(backend, workdir)
    dbconn = DBConn(url)
    adapter = JSONFile()
    schema = [
        sa.Column("item_id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String),
        sa.Column("price", sa.Float),
    ]
    store = TableStoreFiledir(os.path.join(folder, "{item_id}.json"), adapter, schema)
    ds = DataStore(dbconn)
    step = build_compute(ds, Catalog({"items": Table(store)}), Pipeline([UpdateExternalTable("items")]))[0]
    assert isinstance(step, UpdateExternalTableStep)
    t_first, _ = timed(step.scan)
    t_idle, idle = timed(step.scan)
    rng = np.random.default_rng(1)
    for i in rng.choice(n_files, 10, replace=False):
        with open(os.path.join(folder, f"{i}.json"), "w") as f:
            f.write(json.dumps({"name": f"item {i} changed", "price": -1.0}))
    adapter.reads = 0
    t_scan, res = timed(step.scan)
    reads = adapter.reads
    adapter.reads = 0
    t_full, _ = timed(lambda: step.scan(full=True))  # the same scan, ignoring the fingerprints
    full_reads = adapter.reads
    dbconn.engine.dispose()
    drop()
    changed = res.outputs["items"].updated
    return [
        (f"folder {n_files:,} files [{backend} meta]: first scan (reads all)", f"{t_first:.2f} s"),
        ("  scan, nothing changed", f"{t_idle:.3f} s, {idle.outputs['items'].updated} changed"),
        (
            "  scan, 10 files changed (fingerprints)",
            f"{t_scan:.3f} s, {changed} changed, {reads} files opened",
        ),
        (
            "  baseline: full scan (open + hash + compare every file)",
            f"{t_full:.3f} s, {full_reads:,} files opened",
        ),
        ("  speed-up vs baseline", f"{t_full / t_scan:.1f}x"),
    ]


def bench_sql(n_rows: int, workdir: str, backend: str) -> list[tuple[str, str]]:
    url, drop = fresh_url(backend, workdir)
    dbconn = DBConn(url)
    store = TableStoreDB(
        "orders",
        dbconn,
        [
            sa.Column("id", sa.BigInteger, primary_key=True),
            sa.Column("amount", sa.Float),
            sa.Column("updated_at", sa.BigInteger, index=True),
        ],
    )
    dbconn.ensure_table(store.data_table)
    t = store.data_table
    t0 = time.perf_counter()
    batch = 100_000
    with dbconn.engine.begin() as c:
        for start in range(0, n_rows, batch):
            ids = np.arange(start, min(n_rows, start + batch))
            c.execute(
                sa.insert(t),
                pd.DataFrame({"id": ids, "amount": ids * 0.1, "updated_at": ids}).to_dict("records"),
            )
    t_load = time.perf_counter() - t0
    ds = DataStore(dbconn)
    catalog = Catalog({"orders": Table(store)})
    step = build_compute(
        ds, catalog, Pipeline([UpdateExternalTable("orders", updated_at_column="updated_at")])
    )[0]
    assert isinstance(step, UpdateExternalTableStep)
    t_first, _ = timed(step.scan)  # the first scan is a full one: it records every row's metadata
    top = n_rows

    def add(n: int) -> None:
        nonlocal top
        with dbconn.engine.begin() as c:
            c.execute(sa.insert(t), [{"id": top + i, "amount": 1.0, "updated_at": top + i} for i in range(n)])
        top += n

    add(100)
    t_inc, inc = timed(step.scan)
    add(100)
    t_full, full = timed(lambda: step.scan(full=True))
    dbconn.engine.dispose()
    drop()
    return [
        (f"SQL table {n_rows:,} rows [{backend}]: bulk load", f"{t_load:.2f} s"),
        ("  first scan (full, records all metadata)", f"{t_first:.2f} s"),
        (
            "  updated-at scan, 100 new rows",
            f"{t_inc * 1000:.1f} ms, {inc.outputs['orders'].inserted} inserted, {inc.rows_read} rows read",
        ),
        (
            "  baseline: full scan, 100 new rows",
            f"{t_full * 1000:.0f} ms, {full.outputs['orders'].inserted} inserted, {full.rows_read:,} rows read",
        ),
        ("  speed-up vs baseline", f"{t_full / t_inc:.0f}x"),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--backends", default="sqlite")
    args = p.parse_args()
    for backend in args.backends.split(","):
        for bench, n in ((bench_folder, args.files), (bench_sql, args.rows)):
            if n <= 0:
                continue
            workdir = tempfile.mkdtemp(prefix="bench_scan_")
            try:
                lines = bench(n, workdir, backend)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            for label, value in lines:
                print(f"{label:<58} {value}", flush=True)


if __name__ == "__main__":
    main()
