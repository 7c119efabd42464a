"""A run over many keys reads its input in one ordered scan (``compute.key_scan``) and must end exactly
where reading by key ends: the same outputs, the same metadata, the same failed keys. SQLite and
PostgreSQL; the thresholds are lowered so that small tables take the scan."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pandas as pd
import pytest

from datapipe_dagster import DBConn, run_steps
from datapipe_dagster.compute import key_scan
from datapipe_dagster.compute.datatable import DataTable
from datapipe_dagster.compute.key_scan import KeyScan
from tests.test_bulk_commit import events, setup
from tests.test_bulk_write import state

USERS = 1300


def scans(monkeypatch: pytest.MonkeyPatch, on: bool, batch_rows: int = 97) -> list[int]:
    """Turn the scan on (any run of 10 keys or more, rows fetched ``batch_rows`` at a time, so a key's rows
    span batches and SQLite's segments) or off; returns a list that gets the number of keys of each scan."""
    monkeypatch.setattr(key_scan, "SCAN_MIN_KEYS", 10 if on else 10**12)
    monkeypatch.setattr(key_scan, "SCAN_BATCH_ROWS", batch_rows)
    monkeypatch.setattr(key_scan, "SEGMENT_ROWS", batch_rows)  # SQLite: statements of this many rows
    opened: list[int] = []
    orig = KeyScan.__init__

    def spy(self, step, role, keys):  # noqa: ANN001, ANN202
        opened.append(len(keys))
        orig(self, step, role, keys)

    monkeypatch.setattr(KeyScan, "__init__", spy)
    return opened


def written(dts: dict) -> list[pd.DataFrame]:
    """Both outputs' rows and metadata, without the write order across keys (a scan processes keys in the
    database's key order, a keyed run in the stale query's)."""
    out = []
    for t in ("click_count", "ip"):
        data, meta = state(dts[t])
        out.append(data)
        out.append(meta.drop(columns=["seq", "create_ts", "update_ts", "delete_ts"]).sort_values("user_id").reset_index(drop=True))
        out.append(meta[["user_id"]].assign(deleted=meta["delete_ts"].notna()).sort_values("user_id").reset_index(drop=True))
    return out


def expected(dts: dict) -> pd.DataFrame:
    """click counts recomputed with pandas from the events as stored, in write order."""
    ev = dts["events"].get_data()
    clicks = ev.assign(click=ev["event"].map(lambda e: json.loads(e)["event_type"] == "click")).groupby("user_id")["click"].sum()
    return clicks.astype("int64").rename("click_count").reset_index().sort_values("user_id").reset_index(drop=True)


def history(prefix: str, dbconn: DBConn, between=None) -> tuple[dict, list]:  # noqa: ANN001
    """Events of 1,300 users written over three writes (write order is not key order), a first run, then
    ``between`` and a second run."""
    ds, dts, steps = setup(dbconn, prefix)
    steps[0].chunk_size = 300  # a run of one chunk reads in the stale query's transaction, not a scan
    dts["events"].store_chunk(events(range(USERS)[::2]))
    dts["events"].store_chunk(events(range(USERS)[1::2]))
    late = events(range(0, USERS, 7), tag="late")
    dts["events"].store_chunk(late.assign(event_id=late["event_id"] + "-late"))  # some users' events, later
    first = run_steps(ds, steps).steps[0]
    if between is not None:
        between(ds, dts, steps)
    second = run_steps(ds, steps).steps[0]
    return dts, [first.keys_processed, first.keys_failed, second.keys_processed, second.keys_failed]


def test_a_scanned_run_writes_what_a_keyed_run_writes(dbconn, monkeypatch) -> None:
    def between(ds, dts, steps) -> None:  # noqa: ANN001
        dts["events"].store_chunk(events(range(0, USERS, 3), tag="b"))  # most users' rows rewritten
        dts["events"].delete_by_idx(pd.DataFrame({"user_id": [f"u{u}" for u in range(1, 40, 2)]}))  # users gone

    monkeypatch.setattr(key_scan, "SCAN_SHARE", 0.0)  # the second run (a third of the keys) scans too
    keyed = history("keyed", dbconn, between)
    opened = scans(monkeypatch, True)
    scanned = history("scanned", dbconn, between)
    assert opened == [USERS, len(range(0, USERS, 3)) + 20 - len([u for u in range(1, 40, 2) if u % 3 == 0])]
    assert scanned[1] == keyed[1] == [USERS, 0, opened[1], 0]
    for got, want in zip(written(scanned[0]), written(keyed[0]), strict=True):
        pd.testing.assert_frame_equal(got, want)
    clicks = state(scanned[0]["click_count"])[0].sort_values("user_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(clicks, expected(scanned[0]), check_dtype=False)
    ip = scanned[0]["ip"].get_data().set_index("user_id")["ip"]
    assert ip["u0"] == "b0" and ip["u49"] == "late49" and ip["u2"] == "a2", "the last written event's ip"


def test_a_small_share_of_the_keys_is_read_by_key(dbconn, monkeypatch) -> None:
    opened = scans(monkeypatch, True)

    def between(ds, dts, steps) -> None:  # noqa: ANN001
        dts["events"].store_chunk(events(range(0, USERS, 5), tag="b"))  # a fifth of the keys

    dts, counts = history("share", dbconn, between)
    assert opened == [USERS], "the first run scans; a fifth of the keys is read by key"
    assert counts == [USERS, 0, len(range(0, USERS, 5)), 0]


def test_rows_of_a_key_met_apart_are_processed_again_by_key(dbconn, monkeypatch) -> None:
    """Should the database not keep a key's rows together, the keys met apart are processed again with a
    keyed read after the scan: the end state is still the keyed run's."""
    keyed = history("keyed", dbconn)
    scans(monkeypatch, True)
    orig = DataTable.scan_statement
    monkeypatch.setattr(key_scan, "SEGMENT_ROWS", 10**9)  # one statement (segments follow the key order)
    monkeypatch.setattr(DataTable, "scan_statement", lambda self, columns, *a, **kw: orig(self, [], *a, **kw))  # write order
    rest: list[int] = []
    chunks = KeyScan.chunks

    def record(self, size):  # noqa: ANN001, ANN202
        yield from chunks(self, size)
        rest.append(len(self.rest))

    monkeypatch.setattr(KeyScan, "chunks", record)
    scanned = history("apart", dbconn)
    assert rest and rest[0] == len(range(0, USERS, 7)), "the users written twice, their rows apart"
    for got, want in zip(written(scanned[0]), written(keyed[0]), strict=True):
        pd.testing.assert_frame_equal(got, want)


def test_a_failing_key_in_a_scanned_chunk_is_isolated(dbconn, monkeypatch) -> None:
    from tests.engine_helpers import parse_clicks_ip

    def flaky(df: pd.DataFrame):  # noqa: ANN202
        if (df["user_id"] == "u77").any():
            raise ValueError("bad user u77")
        return parse_clicks_ip(df)

    monkeypatch.setattr("tests.test_bulk_commit.parse_clicks_ip", flaky)
    keyed = history("keyed", dbconn)
    scans(monkeypatch, True)
    scanned = history("scanned", dbconn)
    assert scanned[1] == keyed[1] == [USERS - 1, 1, 0, 1]
    for got, want in zip(written(scanned[0]), written(keyed[0]), strict=True):
        pd.testing.assert_frame_equal(got, want)


def test_a_write_during_a_scanned_run_is_picked_up_by_the_next_run(dbconn, monkeypatch) -> None:
    """Another writer changes keys of a later chunk while the scan streams (a thread, between the first
    and the second chunk): the run is current to the sequence read before its scan, so the next run
    processes those keys again and the end state is a recomputation of the events as they are."""
    scans(monkeypatch, True, batch_rows=5000)
    ds, dts, steps = setup(dbconn, "race")
    dts["events"].store_chunk(events(range(USERS)))
    orig = KeyScan._chunk
    calls: list[int] = []

    def write_after_first(self, *args):  # noqa: ANN001, ANN202
        out = orig(self, *args)
        calls.append(len(out[0]))
        if len(calls) == 1:
            users = [u for u in range(USERS) if f"u{u}" not in set(out[0]["user_id"])][:50]
            t = threading.Thread(target=lambda: dts["events"].store_chunk(events(users, tag="racer")))
            t.start()
            t.join(timeout=60)
            assert not t.is_alive()
        return out

    monkeypatch.setattr(KeyScan, "_chunk", write_after_first)
    first = run_steps(ds, steps).steps[0]
    second = run_steps(ds, steps).steps[0]
    assert len(calls) == 2 and first.keys_processed == USERS
    assert second.keys_processed == 50, "the keys written during the scan, again"
    clicks = state(dts["click_count"])[0].sort_values("user_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(clicks, expected(dts), check_dtype=False)
    ip = dts["ip"].get_data()
    assert (ip["ip"].str.startswith("racer")).sum() == 50


def test_the_scan_is_one_ordered_statement(dbconn, monkeypatch) -> None:
    from tests.engine_helpers import recorded_statements

    scans(monkeypatch, True, batch_rows=20_000)
    ds, dts, steps = setup(dbconn, "one")
    dts["events"].store_chunk(events(range(USERS)))
    _, statements = recorded_statements(dbconn, lambda: run_steps(ds, steps))
    q = r"(\S+\.)?"  # PostgreSQL names the test's schema
    reads = [s for s, _ in statements if re.search(rf"FROM {q}one_events JOIN {q}one_events_meta ON", s)]
    assert len(reads) == 1 and re.search(rf"ORDER BY {q}one_events.user_id, {q}one_events_meta.seq", reads[0]), reads
    assert dts["click_count"].get_size() == USERS


def test_each_scanned_chunk_is_the_frame_a_keyed_read_returns(dbconn, monkeypatch) -> None:
    scans(monkeypatch, True)
    got: list[tuple[pd.DataFrame, pd.DataFrame]] = []
    orig = KeyScan._chunk

    def record(self, *args):  # noqa: ANN001, ANN202
        out = orig(self, *args)
        got.append((out[0], out[2]))
        return out

    monkeypatch.setattr(KeyScan, "_chunk", record)
    dts, counts = history("frames", dbconn)
    assert counts == [USERS, 0, 0, 0] and len(got) == 5
    assert sorted(u for keys, _ in got for u in keys["user_id"]) == sorted(f"u{u}" for u in range(USERS))
    for keys, frame in got:
        pd.testing.assert_frame_equal(frame, dts["events"].get_data(keys))


def test_a_run_over_given_keys_reads_by_key(dbconn, monkeypatch) -> None:
    """A partition's run (``process_keys``) never scans: each of 16 partitions would read the whole table."""
    opened = scans(monkeypatch, True)
    ds, dts, steps = setup(dbconn, "given")
    dts["events"].store_chunk(events(range(USERS)))
    res = steps[0].process_keys(pd.DataFrame({"user_id": [f"u{u}" for u in range(0, USERS, 2)]}), chunk_size=100)
    assert opened == [] and res.keys_processed == len(range(0, USERS, 2))
    assert run_steps(ds, steps).steps[0].keys_processed == USERS // 2
    assert opened == [], "the rest (half the keys, a thousand keys or fewer: one chunk) read by key as well"


@pytest.mark.parametrize(
    "table",
    [
        pd.DataFrame({"k": pd.array(["a", "bb", "é", "d"], dtype="string")}),
        pd.DataFrame({"k": pd.array([3, 1, 2, 10], dtype="int64")}),
        pd.DataFrame({"k": ["x", "x", "y", "z"], "n": [1, 2, 1, 1]}),
    ],
)
def test_key_lookup_finds_keys_as_the_driver_returns_them(table: pd.DataFrame, monkeypatch) -> None:
    from datapipe_dagster import frames
    from datapipe_dagster.frames import KeyLookup, key_positions

    keys = list(table.columns)
    probe = pd.concat([table.iloc[::-1], table.iloc[[0]]], ignore_index=True).astype(object)  # the driver's values
    probe.loc[len(probe)] = ["nope" if table[k].dtype != "int64" else 99 for k in keys]
    want = key_positions(table.astype(object), probe, keys)
    assert (want[:-1] >= 0).all() and want[-1] == -1
    assert KeyLookup(table, keys).positions(probe).tolist() == want.tolist()
    # Hashes that collide within the table: looked up by value.
    monkeypatch.setattr(frames, "_object_hashes", lambda df, keys: np.zeros(len(df), dtype=np.uint64))
    lookup = KeyLookup(table, keys)
    assert lookup.exact is not None and lookup.positions(probe).tolist() == want.tolist()


def test_key_lookup_confirms_a_hash_match_by_value(monkeypatch) -> None:
    from datapipe_dagster import frames
    from datapipe_dagster.frames import KeyLookup

    # A hash that only sees a string's length: "zz" hashes as "bb" does, and is not "bb".
    monkeypatch.setattr(frames, "_object_hashes", lambda df, keys: df[keys[0]].astype(str).str.len().to_numpy().astype(np.uint64))
    lookup = KeyLookup(pd.DataFrame({"k": ["a", "bb", "ccc"]}), ["k"])
    assert lookup.exact is None
    assert lookup.positions(pd.DataFrame({"k": ["zz", "bb", "ccc", "dddd"]})).tolist() == [-1, 1, 2, -1]


def test_a_key_with_more_rows_than_a_segment_is_read_whole(dbconn, monkeypatch) -> None:
    """SQLite scans in statements of ``SEGMENT_ROWS`` rows, each starting again at the last key of the one
    before; a key with more rows than that is read by itself. Ends as the keyed run ends."""
    heavy = pd.DataFrame({"user_id": "u5", "event_id": [f"h{i}" for i in range(40)], "event": json.dumps({"event_type": "click", "ip": "heavy"})})

    def run(prefix: str) -> dict:
        ds, dts, steps = setup(dbconn, prefix)
        steps[0].chunk_size = 7
        dts["events"].store_chunk(events(range(30)))
        dts["events"].store_chunk(heavy)
        assert run_steps(ds, steps).steps[0].keys_processed == 30
        return dts

    keyed = run("keyed")
    opened = scans(monkeypatch, True, batch_rows=9)
    scanned = run("scanned")
    assert opened == [30]
    for got, want in zip(written(scanned), written(keyed), strict=True):
        pd.testing.assert_frame_equal(got, want)
    assert scanned["click_count"].get_data(pd.DataFrame({"user_id": ["u5"]}))["click_count"].tolist() == [41]
