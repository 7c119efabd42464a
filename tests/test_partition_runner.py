"""The engine's partition logic without Dagster: ``stale_by_partition`` (the one answer the sensors, the
automation condition and the CLI share), ``PartitionRunner`` and ``Buckets``."""

from __future__ import annotations

import pandas as pd
import pytest

from datapipe_dagster.compute.partition_runner import (
    REPARSE,
    STALE,
    WHOLE,
    PartitionRunner,
    stale_by_partition,
)
from datapipe_dagster.compute.partitioning import Buckets
from datapipe_dagster.errors import ConfigurationError
from tests.engine_helpers import event, frame, seed_setup

USERS = [f"u{i}" for i in range(12)]


def _seeded(dbconn):  # noqa: ANN001, ANN202
    ds, catalog, (step,) = seed_setup(dbconn)
    catalog.get_datatable(ds, "events").store_chunk(frame(*[event(u, "e1") for u in USERS]))
    return ds, catalog, step


def test_stale_by_partition_counts_each_partition(dbconn) -> None:
    _, _, step = _seeded(dbconn)
    buckets = Buckets(4)
    stale = stale_by_partition(step, buckets)
    want = buckets.counts(pd.DataFrame({"user_id": USERS}), ["user_id"])
    assert stale.partitioned and stale.total == len(USERS)
    assert stale.counts == want and sum(want.values()) == len(USERS)
    assert stale.partitions == sorted(want) == buckets.stale_partitions(pd.DataFrame({"user_id": USERS}), ["user_id"])
    whole = stale_by_partition(step, None)
    assert not whole.partitioned and whole.counts == {WHOLE: len(USERS)} and whole.partitions == [WHOLE]


def test_runner_processes_only_its_partitions_and_reports_what_is_left(dbconn) -> None:
    _, catalog, step = _seeded(dbconn)
    buckets = Buckets(4)
    first, *rest = stale_by_partition(step, buckets).partitions
    outcomes = PartitionRunner(step, buckets).run(STALE, [first])
    (o,) = outcomes
    in_first = buckets.select(pd.DataFrame({"user_id": USERS}), ["user_id"], [first])
    assert o.partition == first and o.result.keys_processed == len(in_first) and o.stale_remaining == 0
    after = stale_by_partition(step, buckets)
    assert after.partitions == rest and after.total == len(USERS) - len(in_first)
    # A reparse of the same partition recomputes every key in it, stale or not.
    (again,) = PartitionRunner(step, buckets).run(REPARSE, [first])
    assert again.result.keys_processed == len(in_first)
    # Unpartitioned: one outcome for the whole step, nothing left after it.
    (whole,) = PartitionRunner(step, None).run(STALE, None)
    assert whole.partition is None and whole.stale_remaining == 0
    assert stale_by_partition(step, buckets).total == 0
    assert len(catalog.get_datatable(step.ds, "click_count").get_data()) == len(USERS)


def test_buckets_name_count_and_range() -> None:
    b = Buckets(16, max_per_run=3)
    assert b.keys[0] == "00" and b.keys[-1] == "15" and b.bucket_of("07") == 7
    assert b.contiguous_ranges(["03", "01", "02", "07", "04", "15", "14"]) == [("01", "03"), ("04", "04"), ("07", "07"), ("14", "15")]
    assert b.expand("01", "03") == ["01", "02", "03"]
    keys = pd.DataFrame({"user_id": USERS})
    assert sum(b.counts(keys, ["user_id"]).values()) == len(USERS)
    assert b.counts(keys.iloc[0:0], ["user_id"]) == {}
    with pytest.raises(ConfigurationError, match="unknown partition '7'"):
        b.bucket_of("7")
    with pytest.raises(ConfigurationError, match="between 1 and 10000"):
        Buckets(0)
