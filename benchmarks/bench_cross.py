"""Cross-join transform keys: what one changed row costs when the keys are the product of two inputs.

    .venv/bin/python -m benchmarks.bench_cross [--sizes 100,300] [--backends sqlite,postgres]

For each size ``n``, ``left`` and ``right`` hold ``n`` rows each, so the transform has ``n * n`` keys.
After a full run, one left row changes (``n`` keys stale), then one right row (``n`` more, found through
the state table's index on ``id_right``). Baseline, in the same process on the same data: listing every
key of the product (``get_all_keys``, what a query that joined the whole product would touch). If the
stale query follows the change, its time grows with ``n`` (3x from 100 to 300), not with ``n * n`` (9x).
"""

from __future__ import annotations

import argparse
import tempfile

import pandas as pd
import sqlalchemy as sa

from benchmarks.bench_scan import fresh_url, timed
from datapipe_dagster import (
    BatchTransform,
    Catalog,
    DataStore,
    DBConn,
    Pipeline,
    Table,
    TableStoreDB,
    build_compute,
    run_steps,
)


def product(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
    return left.merge(right, how="cross")


def bench(n: int, backend: str, workdir: str) -> list[tuple[str, str]]:
    url, drop = fresh_url(backend, workdir)
    dbconn = DBConn(url)
    i = sa.Integer
    cat = Catalog(
        {
            "left": Table(TableStoreDB("left", dbconn, [sa.Column("id_left", i, primary_key=True), sa.Column("a", i)])),
            "right": Table(TableStoreDB("right", dbconn, [sa.Column("id_right", i, primary_key=True), sa.Column("b", i)])),
            "lxr": Table(
                TableStoreDB(
                    "lxr",
                    dbconn,
                    [sa.Column("id_left", i, primary_key=True), sa.Column("id_right", i, primary_key=True), sa.Column("a", i), sa.Column("b", i)],
                )
            ),
        }
    )
    ds = DataStore(dbconn)
    bt = BatchTransform(product, ["left", "right"], ["lxr"], transform_keys=["id_left", "id_right"], chunk_size=5000)
    (step,) = build_compute(ds, cat, Pipeline([bt]))
    left, right = cat.get_datatable(ds, "left"), cat.get_datatable(ds, "right")
    left.store_chunk(pd.DataFrame({"id_left": range(n), "a": range(n)}))
    right.store_chunk(pd.DataFrame({"id_right": range(n), "b": range(n)}))
    t_full, _ = timed(lambda: run_steps(ds, [step]))
    t_after, _ = timed(step.get_stale_keys)  # sweeps the output rows the run wrote, once
    t_idle, _ = timed(step.get_stale_keys)
    left.store_chunk(pd.DataFrame({"id_left": [n], "a": [n]}))
    t_left, stale_left = timed(lambda: step.get_stale_keys(advance_watermark=False))
    t_run_left, _ = timed(lambda: run_steps(ds, [step]))
    right.store_chunk(pd.DataFrame({"id_right": [0], "b": [-1]}))
    t_right, stale_right = timed(lambda: step.get_stale_keys(advance_watermark=False))
    t_all, every = timed(step.get_all_keys)
    dbconn.engine.dispose()
    drop()
    return [
        (f"{n} x {n} = {n * n:,} keys [{backend}]: full first run", f"{t_full:.2f} s"),
        ("  stale query after it (sweeps the n*n rows it wrote, once)", f"{t_after * 1000:.1f} ms"),
        ("  stale query, nothing changed", f"{t_idle * 1000:.1f} ms"),
        ("  stale query, 1 new left row", f"{t_left * 1000:.1f} ms, {len(stale_left)} keys"),
        ("  run of those keys", f"{t_run_left * 1000:.1f} ms"),
        ("  stale query, 1 changed right row", f"{t_right * 1000:.1f} ms, {len(stale_right)} keys"),
        ("  baseline: every key of the product", f"{t_all * 1000:.1f} ms, {len(every):,} keys"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,300")
    ap.add_argument("--backends", default="sqlite")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        for backend in args.backends.split(","):
            for n in (int(s) for s in args.sizes.split(",")):
                for label, value in bench(n, backend, workdir):
                    print(f"{label:<58} {value}")


if __name__ == "__main__":
    main()
