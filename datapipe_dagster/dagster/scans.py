"""The sensor tick of an external table: scan it in the tick when the scan reads only what changed, or
request a run that scans it when the scan reads every row (Dagster gives a tick 60 s and keeps no logs)."""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from datapipe_dagster.compute.steps import ScanningStep
from datapipe_dagster.dagster import constants as c
from datapipe_dagster.dagster.translator import DatapipeSpecs, StepProps


class ScanTick:
    """One evaluation of an external table's sensor: scan it (``UpdateExternalTable``) and report what
    changed as an asset observation. The scan records the changes in the row metadata, so the sensors of
    the transforms reading the table then request exactly the partitions those rows fall in."""

    def __init__(self, step: ScanningStep, props: StepProps, specs: DatapipeSpecs, in_run: bool = False):
        self.step = step
        self.props = props
        self.in_run = in_run
        self.asset_keys = [s.key for s in specs.step_specs[props.name]]

    def request_scan(self, busy: bool) -> dg.SensorResult:
        """A scan too large for a tick: request a run of the table's asset (the run scans it, with logs
        and no tick time limit), unless such a run is queued or in progress."""
        if busy:
            return dg.SensorResult(skip_reason=f"a scan of {self.props.name} is queued or running")
        tags = {c.TAG_MODE: c.MODE_STALE, c.TAG_REASON: "scan", c.TAG_STEP: self.props.name}
        return dg.SensorResult(run_requests=[dg.RunRequest(asset_selection=self.asset_keys, tags=tags)])

    def __call__(self, cursor_text: str | None, busy: Callable[[], bool] | None = None) -> dg.SensorResult:
        if self.in_run:
            return self.request_scan(busy() if busy is not None else False)
        result = self.step.scan()
        events = []
        for key, dt in zip(self.asset_keys, self.step.output_dts, strict=True):
            stats = result.outputs.get(dt.name)
            if stats is None or stats.inserted + stats.updated + stats.deleted == 0:
                continue
            top = dt.ds.last_seqs([dt])[dt.name]
            events.append(
                dg.AssetObservation(
                    asset_key=key,
                    metadata={
                        c.META_INSERTED: stats.inserted,
                        c.META_UPDATED: stats.updated,
                        c.META_DELETED: stats.deleted,
                        c.META_LAST_SEQ: top,
                        c.META_ELAPSED: round(result.elapsed, 4),
                    },
                    tags={c.DATA_VERSION_TAG: str(top)},
                )
            )
        if result.keys_failed:
            first = result.failed.iloc[0]
            context_note = f"; {result.keys_failed} rows could not be read, first: {first['error']}"
        else:
            context_note = ""
        if not events:
            return dg.SensorResult(skip_reason=f"no change in {self.props.name}{context_note}", cursor=cursor_text)
        return dg.SensorResult(asset_events=events, cursor=cursor_text)


def scan_in_run(step: ScanningStep) -> bool:
    """Whether an external table's scan belongs in a run rather than a sensor tick: a scan that reads
    every row (cost grows with the table) does; one that reads only what changed is cheap enough for a tick."""
    return not step.incremental_scan
