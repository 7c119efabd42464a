"""Sensors: request runs only for the partitions that hold stale keys.

One sensor per step. A tick reads the datastore's write sequence; when nothing was written since the
cursor's sequence (and the code did not change) it answers without querying anything else. Otherwise it
runs the engine's indexed stale-key query, maps the keys to hash buckets and requests one run per
contiguous range of stale buckets (Dagster runs several partitions in one run only as a range). Run keys
carry the sequence (``"03@1234"``): Dagster de-duplicates run keys forever, so the marker lets the same
partition be requested again after new writes, but never twice for the same state. A partition that a
queued or running run of the step's assets will process (whoever launched it) is deferred, and the whole
step waits, for a bounded time, while a step upstream of it has a run in flight or stale keys (the cursor
then keeps its old sequence, so a later tick looks again). Failed keys count only when one of their
input rows changed or the code changed. The first sensor reading a source table also reports its changes
as asset observations (data version = the table's last write sequence). An external table
(``UpdateExternalTable``) has a sensor of its own that scans it in the tick, or requests a run that
scans it when a scan reads the whole table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster import SensorEvaluationContext

from datapipe_dagster.compute.datatable import DataStore
from datapipe_dagster.compute.partition_runner import stale_by_partition
from datapipe_dagster.compute.steps import KeyedStep, ScanningStep, Step
from datapipe_dagster.dagster import constants as c
from datapipe_dagster.dagster.inflight import Upstream, latest_event_id, pending_runs
from datapipe_dagster.dagster.partitions import BucketPartitions
from datapipe_dagster.dagster.scans import ScanTick, scan_in_run
from datapipe_dagster.dagster.translator import DatapipeSpecs, StepProps
from datapipe_dagster.dagster.versions import partition_observations
from datapipe_dagster.errors import ConfigurationError
from datapipe_dagster.store.database import UNREACHABLE_ERRORS


@dataclass
class Cursor:
    """What a sensor saw last: the datastore's write sequence and the step's code version."""

    seq: int | None = None
    code: str | None = None
    top: int | None = None  # unkeyed steps: the highest input sequence seen
    src: dict[str, int] = field(default_factory=dict)  # observed source tables: their highest sequence
    wait: float | None = None  # since when (epoch seconds) the step waits for its upstream steps
    wide: int | None = None  # the newest Dagster event of the step's wide inputs its runs covered

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        if not text:
            return cls()
        try:
            d = json.loads(text)
        except ValueError:
            return cls()
        return cls(
            seq=d.get("seq"),
            code=d.get("code"),
            top=d.get("top"),
            src=dict(d.get("src") or {}),
            wait=d.get("wait"),
            wide=d.get("wide"),
        )

    def dump(self) -> str:
        d = {
            "seq": self.seq,
            "code": self.code,
            "top": self.top,
            "src": self.src or None,
            "wait": self.wait,
            "wide": self.wide,
        }
        return json.dumps({k: v for k, v in d.items() if v is not None})


def observe_sources(
    ds: DataStore, sources: dict[str, Any], cur: Cursor, partitioned: set[str] | frozenset[str] = frozenset()
) -> tuple[list[dg.AssetObservation], dict[str, int]]:
    """Observations of the unpartitioned source tables written since the cursor (data version = highest
    sequence), and the highest sequence of every source table.

    Source tables are written outside Dagster; an observation makes their changes visible in the UI
    (and marks the assets reading them as having newer upstream data). ``partitioned`` sources are
    observed per partition instead (``partition_observations``).
    """
    events: list[dg.AssetObservation] = []
    tops: dict[str, int] = {}
    if not sources:
        return events, tops
    tops = ds.last_seqs(dt for _, dt in sources.values())
    for name, (key, _) in sources.items():
        top = tops[name]
        if cur.src.get(name) != top and top > 0 and name not in partitioned:
            events.append(
                dg.AssetObservation(
                    asset_key=key,
                    metadata={c.META_LAST_SEQ: top},
                    tags={c.DATA_VERSION_TAG: str(top)},
                )
            )
    return events, tops


class StaleTick:
    """One evaluation of a keyed step's sensor (usable without a Dagster context, e.g. in benchmarks).

    Args:
        sources: source tables this sensor observes: name -> (asset key, DataTable).
    """

    def __init__(
        self,
        step: KeyedStep,
        props: StepProps,
        specs: DatapipeSpecs,
        parts: BucketPartitions | None,
        ds: DataStore,
        reparse_on_code_change: bool,
        sources: dict[str, Any] | None = None,
        max_upstream_wait: float = 120.0,
    ):
        self.max_upstream_wait = max_upstream_wait
        self.step = step
        self.props = props
        self.parts = parts if props.partitioned else None
        self.ds = ds
        self.reparse_on_code_change = reparse_on_code_change
        self.sources = sources or {}
        self.asset_keys = [s.key for s in specs.step_specs[props.name]]
        self.check_keys = [cs.key for cs in specs.check_specs.get(props.name, [])]
        self.partitioned_sources = set(specs.partitioned_sources) & set(self.sources)
        self.wide_keys = wide_inputs(props, specs) if self.parts is not None else []
        self.observable = {specs.key(t) for t in specs.source_tables if t not in specs.partitioned_sources}

    def busy_from(self, pending: list[tuple[str, str] | None]) -> set[str]:
        """The partitions that pending runs (``pending_runs``) will process; ``"*"`` for all of them."""
        out: set[str] = set()
        for rng in pending:
            if rng is None or self.parts is None:
                return {"*"}
            try:
                out |= set(self.parts.expand(*rng))
            except ConfigurationError:  # a run from before the number of partitions changed
                continue
        return out

    def _free(self, partitions: list[str], pending: set[str]) -> list[str]:
        """``partitions`` without those a queued or running run will process."""
        return [] if "*" in pending else [p for p in partitions if p not in pending]

    def _request(
        self, run_key: str, mode: str, reason: str, first: str | None, last: str | None
    ) -> dg.RunRequest:
        tags = {c.TAG_MODE: mode, c.TAG_REASON: reason, c.TAG_STEP: self.props.name}
        if reason == "code_version":
            tags[c.TAG_RETRY_FAILED] = "true"
        partition_key = None
        if first is not None and last is not None and first != last:
            tags[c.RANGE_START_TAG] = first
            tags[c.RANGE_END_TAG] = last
        elif first is not None:
            partition_key = first
        return dg.RunRequest(
            run_key=run_key,
            asset_selection=self.asset_keys,
            asset_check_keys=self.check_keys,
            partition_key=partition_key,
            tags=tags,
        )

    def __call__(
        self,
        cursor_text: str | None,
        busy: Callable[[], set[str]] | None = None,
        upstream: Callable[[], str | None] | None = None,
        now: float | None = None,
        wide_mark: Callable[[], int] | None = None,
    ) -> dg.SensorResult:
        """Evaluate a tick from ``cursor_text``.

        Args:
            busy: returns the partitions (``"*"``: all) that a queued or running run of this step's
                assets will process (asked only when keys are stale).
            upstream: returns why an upstream step will still write this step's inputs (a run of it is
                queued or running, or it has stale keys its sensor is requesting), or None. While it
                does, this step waits, at most ``max_upstream_wait`` seconds since it started waiting.
            now: the time (epoch seconds) of the tick.
            wide_mark: for a step with wide inputs (tables Dagster maps to all its partitions): the
                storage id of their newest Dagster event. When it is newer than the cursor's, Dagster
                shows every partition Unsynced, so the runs requested cover every partition (stale
                keys only: partitions without any just record being in sync again).
        """
        cur = Cursor.parse(cursor_text)
        now = time.time() if now is None else now
        code = self.props.code_version
        seq = self.ds.current_seq()
        code_changed = cur.code is not None and cur.code != code
        mark = wide_mark() if wide_mark is not None else None
        sync_all = mark is not None and mark > (cur.wide or 0)
        if cur.seq == seq and not code_changed and not sync_all:
            keep = Cursor(seq=seq, code=code, src=cur.src, wide=cur.wide).dump()
            return dg.SensorResult(skip_reason=f"nothing written since sequence {seq}", cursor=keep)
        if code_changed and self.reparse_on_code_change:
            first, last = (self.parts.keys[0], self.parts.keys[-1]) if self.parts else (None, None)
            req = self._request(f"reparse:{code}@{seq}", c.MODE_REPARSE, "code_version", first, last)
            return dg.SensorResult(run_requests=[req], cursor=Cursor(seq=seq, code=code, src=cur.src).dump())
        # A failed key is retried only when one of its input rows changed (the query finds that by
        # itself) or the code changed; unrelated writes must not rerun it.
        stale = stale_by_partition(self.step, self.parts, include_failed=code_changed)
        observations, tops = observe_sources(self.ds, self.sources, cur, self.partitioned_sources)
        if stale.total == 0 and not sync_all:
            cursor = Cursor(seq=seq, code=code, src=tops, wide=cur.wide).dump()
            return dg.SensorResult(skip_reason="no stale keys", cursor=cursor, asset_events=observations)
        stale_parts = stale.partitions
        why = upstream() if upstream is not None else None
        if why is not None and (cur.wait is None or now - cur.wait < self.max_upstream_wait):
            # Runs now would read inputs that are about to change and run again right after: wait (the
            # cursor keeps the old sequence, so a later tick looks again), but not forever.
            wait = cur.wait if cur.wait is not None else now
            cursor = Cursor(seq=cur.seq, code=cur.code, src=tops, wait=wait, wide=cur.wide).dump()
            free = self._free(stale_parts, busy() if busy is not None and self.partitioned_sources else set())
            return dg.SensorResult(
                skip_reason=f"waiting for upstream: {why} (since {now - wait:.0f} s, at most "
                f"{self.max_upstream_wait:.0f} s)",
                cursor=cursor,
                asset_events=observations + partition_observations(self.sources, self.partitioned_sources, free, seq),
            )
        pending = busy() if busy is not None else set()
        todo = self._free(stale_parts, pending)
        observations += partition_observations(self.sources, self.partitioned_sources, todo, seq)
        if sync_all and self.parts is not None:
            # A wide input (one Dagster maps to every partition) changed: Dagster now shows every
            # partition Unsynced, stale keys or not. The runs cover them all (stale keys only: a
            # partition without any just records being in sync again).
            stale_parts = list(self.parts.keys)
            todo = self._free(stale_parts, pending)
        # Partitions a pending run will process are left for a later tick: the cursor then keeps the old
        # sequence, so that tick looks again (cheaply: the watermarks moved) once the run is done.
        deferred = bool(set(stale_parts) - set(todo))
        cursor = Cursor(
            seq=cur.seq if deferred else seq,
            code=cur.code if deferred else code,
            src=tops,
            wait=cur.wait if deferred and why is not None else None,
            wide=cur.wide if deferred else (mark if mark is not None else cur.wide),
        ).dump()
        # A changed function retries failed keys even without a reparse: the code is part of the marker.
        marker = f"{seq}" + (f":{code}" if code_changed else "") + (f"/w{mark}" if sync_all else "")
        reason = "code_version" if code_changed else "changes"
        if self.parts is None:
            reqs = [self._request(f"all@{marker}", c.MODE_STALE, reason, None, None)] if todo else []
        else:
            reqs = [
                self._request(
                    f"{a}@{marker}" if a == b else f"{a}..{b}@{marker}", c.MODE_STALE, reason, a, b
                )
                for a, b in self.parts.contiguous_ranges(todo)
            ]
        skip = (
            f"partitions {sorted(set(stale_parts) - set(todo))} wait for a pending run" if deferred else None
        )
        return dg.SensorResult(
            run_requests=reqs, cursor=cursor, asset_events=observations, skip_reason=None if reqs else skip
        )


def wide_inputs(props: StepProps, specs: DatapipeSpecs) -> list[dg.AssetKey]:
    """The inputs of a partitioned step that Dagster maps to *all* its partitions: unpartitioned tables
    (a source read by steps keyed differently, a user's asset, an unpartitioned step's output) and
    outputs of steps partitioned by other keys."""
    writers = {out: p for p in specs.steps for out in p.outputs}
    out = []
    for t in props.inputs:
        if t in specs.partitioned_sources:
            continue
        up = writers.get(t)
        if up is None or not up.partitioned or up.transform_keys != props.transform_keys:
            out.append(specs.key(t))
    return out


class InputsTick:
    """One evaluation of an unkeyed step's sensor: a run when any input row was written since last time."""

    def __init__(
        self,
        step: Step,
        props: StepProps,
        specs: DatapipeSpecs,
        ds: DataStore,
        sources: dict[str, Any] | None = None,
    ):
        self.step = step
        self.props = props
        self.ds = ds
        self.sources = sources or {}
        self.asset_keys = [s.key for s in specs.step_specs[props.name]]

    def __call__(self, cursor_text: str | None) -> dg.SensorResult:
        cur = Cursor.parse(cursor_text)
        seq = self.ds.current_seq()
        if cur.seq == seq:
            return dg.SensorResult(skip_reason=f"nothing written since sequence {seq}", cursor=cursor_text)
        top = max(self.ds.last_seqs(self.step.input_dts).values(), default=0)
        observations, tops = observe_sources(self.ds, self.sources, cur)
        new_cursor = Cursor(seq=seq, top=top, src=tops).dump()
        if top == 0 or (cur.top is not None and top <= cur.top):
            return dg.SensorResult(
                skip_reason="no input changed", cursor=new_cursor, asset_events=observations
            )
        req = dg.RunRequest(
            run_key=f"all@{top}",
            asset_selection=self.asset_keys,
            tags={c.TAG_MODE: c.MODE_STALE, c.TAG_REASON: "changes", c.TAG_STEP: self.props.name},
        )
        return dg.SensorResult(run_requests=[req], cursor=new_cursor, asset_events=observations)


def build_step_sensor(
    step: Step,
    props: StepProps,
    specs: DatapipeSpecs,
    parts: BucketPartitions | None,
    ds: DataStore,
    *,
    interval: int,
    reparse_on_code_change: bool,
    default_status: dg.DefaultSensorStatus,
    sources: dict[str, Any] | None = None,
    upstream: Upstream | None = None,
    max_upstream_wait: float = 120.0,
    job: dg.UnresolvedAssetJobDefinition | None = None,
    external_scans: str = "auto",
) -> dg.SensorDefinition | None:
    """The sensor of one step; None for a step with neither keys nor inputs (nothing can make it stale).
    An external table's step (one with ``scan``) gets a sensor that scans it every tick.

    ``sources`` (name -> (asset key, DataTable)): source tables whose changes this sensor reports as
    asset observations (each source table is observed by one sensor only).
    """
    if isinstance(step, ScanningStep):
        in_run = scan_in_run(step) if external_scans == "auto" else external_scans == "run"
        tick: Any = ScanTick(step, props, specs, in_run=in_run)
        what = (
            "requests a run scanning the external table (one at a time)"
            if in_run
            else "scans the external table and records what changed (transforms reading it then go stale)"
        )
    elif isinstance(step, KeyedStep):
        tick = StaleTick(
            step, props, specs, parts, ds, reparse_on_code_change, sources, max_upstream_wait=max_upstream_wait
        )
        what = "requests runs for the partitions holding stale keys"
    elif step.input_dts:
        tick = InputsTick(step, props, specs, ds, sources)
        what = "requests a run when an input changes"
    else:
        return None

    target = None if isinstance(tick, ScanTick) else job  # a scan requests no runs

    @dg.sensor(
        name=c.scan_sensor_name(props.name) if isinstance(tick, ScanTick) else c.sensor_name(props.name),
        minimum_interval_seconds=interval,
        asset_selection=None if target is not None else tick.asset_keys,
        job=target,
        default_status=default_status,
        description=f"`{props.name}`: {what}.",
    )
    def _sensor(context: SensorEvaluationContext) -> dg.SensorResult:
        try:
            if isinstance(tick, StaleTick):
                return tick(
                    context.cursor,
                    lambda: tick.busy_from(pending_runs(context.instance, props.name, tick.asset_keys)),
                    (lambda: upstream.blocking(context.instance))
                    if upstream and (upstream.steps or upstream.asset_keys)
                    else None,
                    wide_mark=(lambda: latest_event_id(context.instance, tick.wide_keys, tick.observable))
                    if tick.wide_keys
                    else None,
                )
            if isinstance(tick, ScanTick):
                return tick(context.cursor, lambda: bool(pending_runs(context.instance, props.name, tick.asset_keys)))
            return tick(context.cursor)
        except UNREACHABLE_ERRORS as e:  # a database that is down now may be up at the next tick
            return dg.SensorResult(
                skip_reason=f"database not reachable: {str(e).splitlines()[0]}", cursor=context.cursor
            )

    return _sensor
