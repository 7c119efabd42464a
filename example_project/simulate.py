"""An event simulator: writes site events into the ``events`` table at a given rate, then stops.

    python -m example_project.simulate --events 10000 --users 500 --rate 200/s

It only writes (``store_chunk``), it does not propagate: with ``dagster dev`` running and the
``*_stale_sensor`` sensors turned on, they see the new rows and launch runs for the partitions that hold
them (``python -m example_project.api`` is the other way in: it propagates each event at once).
``--rewrite`` makes a fraction of the writes overwrite earlier events (changed rows, as in the seed's
``event_type="clack"`` example).
"""

from __future__ import annotations

import argparse
import random
import re
import time
from dataclasses import dataclass

import pandas as pd
from tqdm import tqdm

from example_project.catalog import ExampleStore, open_store
from example_project.generate import EVENT_TYPES, make_events, user_ip


@dataclass
class SimulationResult:
    """What a simulation wrote: events sent, rows that changed (new or rewritten), seconds taken."""

    events: int
    rows_changed: int
    elapsed: float

    def __str__(self) -> str:
        rate = self.events / self.elapsed if self.elapsed > 0 else float("inf")
        return f"{self.events} events written ({self.rows_changed} rows changed) in {self.elapsed:.1f}s ({rate:.0f}/s)"


def parse_rate(text: str) -> float:
    """``"200/s"``, ``"200"``, ``"12000/min"`` -> events per second; ``"0"``/``"max"`` -> unlimited (0)."""
    text = text.strip().lower()
    if text in ("0", "max", "inf", "unlimited"):
        return 0.0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|m|min|h))?", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad rate {text!r}: use e.g. 200/s, 600/min or max")
    per = {"s": 1, "sec": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
    return float(m.group(1)) / per


def rewritten_event(user: str, event_id: str, rng: random.Random) -> dict[str, object]:
    """New content for an existing event key: another type, ip and time."""
    return {
        "user_id": user,
        "event_id": event_id,
        "event": {
            "event_type": rng.choice(EVENT_TYPES),
            "ip": user_ip(int(user.lstrip("u")), rng),
            "ts": round(time.time(), 3),
        },
    }


def simulate(
    store: ExampleStore,
    n_events: int,
    n_users: int,
    *,
    rate: float = 200.0,
    batch: int | None = None,
    rewrite: float = 0.05,
    seed: int = 0,
    prefix: str | None = None,
    progress: bool = True,
) -> SimulationResult:
    """Write ``n_events`` events of ``n_users`` users at ``rate`` events/s (0: as fast as possible).

    Writes happen in batches (default: a tenth of a second's worth), each one ``store_chunk`` call, so the
    pace is even and every batch is one transaction. A ``rewrite`` fraction of each batch overwrites
    events written earlier in this run with new content. Bounded: returns after ``n_events`` writes.
    """
    if n_events < 0 or n_users < 1:
        raise ValueError("need events >= 0 and users >= 1")
    prefix = prefix if prefix is not None else f"s{time.strftime('%H%M%S')}_{random.randrange(1000):03d}_"
    batch = batch or max(1, int(rate / 10) if rate > 0 else 500)
    rng = random.Random(seed)
    events = store.catalog.get_datatable(store.ds, "events")
    keys: list[tuple[str, str]] = []
    started = time.perf_counter()
    written = changed = 0
    bar = tqdm(total=n_events, unit="ev", desc="events", disable=not progress)
    try:
        while written < n_events:
            size = min(batch, n_events - written)
            n_rewrite = sum(1 for _ in range(size) if rng.random() < rewrite) if keys else 0
            chunk = make_events(size - n_rewrite, n_users, seed=seed, prefix=prefix, start=written)
            fresh_keys = list(zip(chunk["user_id"], chunk["event_id"], strict=True))
            if n_rewrite:
                # Overwrite earlier events of this run: same key, new content (as the seed's "clack" event).
                redo = [
                    rewritten_event(user, event_id, rng)
                    for user, event_id in rng.sample(keys, min(n_rewrite, len(keys)))
                ]
                chunk = pd.concat([chunk, pd.DataFrame.from_records(redo)], ignore_index=True)
                chunk = chunk.drop_duplicates(["user_id", "event_id"], keep="last")
            keys.extend(fresh_keys)
            changed += len(events.store_chunk(chunk))
            written += size
            bar.update(size)
            if rate > 0:
                ahead = written / rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
    finally:
        bar.close()
    return SimulationResult(events=written, rows_changed=changed, elapsed=time.perf_counter() - started)


def main(argv: list[str] | None = None) -> SimulationResult:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m example_project.simulate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--events", type=int, default=10000, help="events to write (default 10000)")
    parser.add_argument("--users", type=int, default=500, help="distinct users (default 500)")
    parser.add_argument(
        "--rate", type=parse_rate, default=parse_rate("200/s"), help="e.g. 200/s, 600/min, max"
    )
    parser.add_argument("--batch", type=int, default=None, help="events per write (default: 0.1 s worth)")
    parser.add_argument(
        "--rewrite", type=float, default=0.05, help="fraction of writes that overwrite earlier events"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix", default=None, help="event id prefix (default: unique per run)")
    parser.add_argument(
        "--db",
        default=None,
        help="SQLite path or SQLAlchemy URL (default: $DATAPIPE_EXAMPLE_DB or .demo/example.sqlite)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    store = open_store(args.db)
    try:
        res = simulate(
            store,
            args.events,
            args.users,
            rate=args.rate,
            batch=args.batch,
            rewrite=args.rewrite,
            seed=args.seed,
            prefix=args.prefix,
            progress=not args.quiet,
        )
    finally:
        store.dispose()
    print(f"{res} into {store.dbconn.safe_url}")
    return res


if __name__ == "__main__":
    main()
