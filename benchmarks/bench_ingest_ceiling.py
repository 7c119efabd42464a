"""What ``store_chunk``'s ingest could reach at best: the same rows loaded into a data table and a metadata
table shaped like the library's (the same keys and indexes), with the driver alone and values prepared
beforehand (no validation, no hashing, no encoding), 100,000 rows a transaction.

    python -m benchmarks.bench_ingest_ceiling --events 1000000 --backends sqlite,postgres

Rows/s for the data table alone, the metadata table alone and both, per backend: ``store_chunk`` writes
both, so "both" is its ceiling (``bench_engine``'s "bulk load" is the data table alone).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time

import psycopg2

from benchmarks.workload import make_events

PG_DSN = os.environ.get("DATAPIPE_PG_DSN", "host=127.0.0.1 user=postgres dbname=postgres")
DATA = "CREATE TABLE d (user_id VARCHAR, event_id VARCHAR, event {json}, PRIMARY KEY (user_id, event_id))"
META = (
    "CREATE TABLE m (user_id VARCHAR, event_id VARCHAR, hash BIGINT NOT NULL, create_ts FLOAT NOT NULL, "
    "update_ts FLOAT NOT NULL, delete_ts FLOAT, seq BIGINT NOT NULL, PRIMARY KEY (user_id, event_id))"
)


def rows(n: int) -> tuple[list[tuple], list[tuple]]:
    df = make_events(n, max(1, n // 10))
    texts = [json.dumps(e, sort_keys=True) for e in df["event"]]
    data = list(zip(df["user_id"], df["event_id"], texts, strict=True))
    meta = [(u, e, i * 7919 % (1 << 62), 1.7e9, 1.7e9, None, i) for i, (u, e, _) in enumerate(data)]
    return data, meta


def sqlite_load(data: list[tuple], meta: list[tuple], which: str, workdir: str) -> float:
    import sqlite3

    path = os.path.join(workdir, f"ceiling-{which}.sqlite")
    c = sqlite3.connect(path, isolation_level=None)
    for p in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-65536"):  # as DBConn sets them
        c.execute("PRAGMA " + p)
    c.execute(DATA.format(json="JSON"))
    c.execute(META)
    c.execute("CREATE INDEX ix_m_seq ON m (seq)")
    t0 = time.perf_counter()
    for s in range(0, len(data), 100_000):
        c.execute("BEGIN")
        if which in ("data", "both"):
            c.executemany("INSERT INTO d VALUES (?, ?, ?)", data[s : s + 100_000])
        if which in ("meta", "both"):
            c.executemany("INSERT INTO m VALUES (?, ?, ?, ?, ?, ?, ?)", meta[s : s + 100_000])
        c.execute("COMMIT")
    took = time.perf_counter() - t0
    c.close()
    return len(data) / took


def _copy_text(part: list[tuple]) -> io.StringIO:
    return io.StringIO("".join("\t".join(r"\N" if v is None else str(v) for v in r) + "\n" for r in part))


def pg_load(data: list[tuple], meta: list[tuple], which: str, workdir: str) -> float:
    admin = psycopg2.connect(PG_DSN)
    admin.autocommit = True
    db = f"ceiling_{which}_{os.getpid()}"
    admin.cursor().execute(f"CREATE DATABASE {db}")
    try:
        c = psycopg2.connect(PG_DSN.replace("dbname=postgres", f"dbname={db}"))
        cur = c.cursor()
        cur.execute(DATA.format(json="JSON"))
        cur.execute(META)
        cur.execute("CREATE INDEX ix_m_seq ON m (seq)")
        c.commit()
        texts = [(_copy_text(data[s : s + 100_000]), _copy_text(meta[s : s + 100_000])) for s in range(0, len(data), 100_000)]
        t0 = time.perf_counter()
        for d, m in texts:
            if which in ("data", "both"):
                cur.copy_expert("COPY d FROM STDIN", d)
            if which in ("meta", "both"):
                cur.copy_expert("COPY m FROM STDIN", m)
            c.commit()
        took = time.perf_counter() - t0
        c.close()
        return len(data) / took
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {db}")
        admin.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--backends", default="sqlite,postgres")
    a = p.parse_args()
    data, meta = rows(a.events)
    print("| backend | events | data table rows/s | metadata table rows/s | both (store_chunk's ceiling) rows/s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as workdir:
        for backend in a.backends.split(","):
            load = sqlite_load if backend == "sqlite" else pg_load
            got = [load(data, meta, which, workdir) for which in ("data", "meta", "both")]
            print(f"| {backend} | {a.events:,} | " + " | ".join(f"{v:,.0f}" for v in got) + " |")


if __name__ == "__main__":
    main()
