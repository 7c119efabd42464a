"""``datapipe-dagster``: run and inspect a pipeline from the shell, without Dagster.

A *target* names the pipeline: ``MODULE:ATTR``, where ``ATTR`` is an object (or a function returning one)
with ``catalog``, ``pipeline`` and ``datastore`` (or ``ds``) attributes; with ``MODULE`` alone, the
module's own attributes of those names are used.

    datapipe-dagster status example_project.definitions:datapipe_target
    datapipe-dagster run    example_project.definitions:datapipe_target [--step NAME]
    datapipe-dagster failed example_project.definitions:datapipe_target
    datapipe-dagster reparse example_project.definitions:datapipe_target --step parse_clicks_ip
    datapipe-dagster eval   example_project.definitions:datapipe_target --step parse_clicks_ip --key user_id=u1
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from datapipe_dagster.compute.catalog import Catalog, ComputeStep, Pipeline
from datapipe_dagster.compute.datatable import DataStore
from datapipe_dagster.compute.result import RunSummary
from datapipe_dagster.compute.run import build_compute


def load_target(target: str) -> tuple[Catalog, Pipeline, DataStore]:
    """Resolve ``MODULE[:ATTR]`` to (catalog, pipeline, datastore)."""
    module_name, _, attr = target.partition(":")
    sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise click.BadParameter(f"cannot import {module_name!r}: {e}", param_hint="TARGET") from e
    obj: Any = module
    if attr:
        if not hasattr(module, attr):
            raise click.BadParameter(f"module {module_name!r} has no attribute {attr!r}", param_hint="TARGET")
        obj = getattr(module, attr)
        if callable(obj) and not isinstance(obj, type):
            obj = obj()
    catalog = getattr(obj, "catalog", None)
    pipeline = getattr(obj, "pipeline", None)
    ds = getattr(obj, "datastore", None) or getattr(obj, "ds", None)
    missing = [n for n, v in (("catalog", catalog), ("pipeline", pipeline), ("datastore", ds)) if v is None]
    if missing:
        raise click.BadParameter(f"{target!r} has no {', '.join(missing)} attribute(s)", param_hint="TARGET")
    return catalog, pipeline, ds  # type: ignore[return-value]


def _steps(target: str, names: tuple[str, ...]) -> tuple[DataStore, list[ComputeStep]]:
    catalog, pipeline, ds = load_target(target)
    steps = build_compute(ds, catalog, pipeline)
    if names:
        known = {s.name for s in steps}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise click.BadParameter(f"unknown step {unknown[0]!r}; steps: {', '.join(sorted(known))}", param_hint="--step")
        steps = [s for s in steps if s.name in names]
    return ds, steps


def _echo_summary(summary: RunSummary) -> None:
    for s in summary.steps:
        click.echo(str(s))


@click.group()
def main() -> None:
    """Run and inspect a datapipe_dagster pipeline."""


@main.command()
@click.argument("target")
def status(target: str) -> None:
    """Stale and failed keys per step."""
    _, steps = _steps(target, ())
    for s in steps:
        keys = getattr(s, "transform_keys", None)
        if hasattr(s, "get_stale_keys") and keys is not None:
            stale = len(s.get_stale_keys(advance_watermark=False))  # type: ignore[call-arg]
            failed = s.count_failed()  # type: ignore[attr-defined]
            click.echo(f"{s.name}: keys {keys or '(none: one batch)'}, {stale} stale, {failed} failed")
        else:
            click.echo(f"{s.name}: {type(s).__name__} (runs in full)")


@main.command()
@click.argument("target")
@click.option("--step", "step_names", multiple=True, help="Run only these steps (repeatable).")
@click.option("--key", "key_specs", multiple=True, help="Process just these keys of one --step: col=value[,col=value].")
def run(target: str, step_names: tuple[str, ...], key_specs: tuple[str, ...]) -> None:
    """Process every stale key (exit code 1 when keys failed)."""
    from datapipe_dagster.compute.run import run_steps

    ds, steps = _steps(target, step_names)
    if key_specs:
        step = _one_keyed_step(steps, step_names)
        summary = RunSummary([step.process_keys(_parse_keys(step, key_specs))])  # type: ignore[attr-defined]
    else:
        summary = run_steps(ds, steps)
    _echo_summary(summary)
    if not summary.ok:
        sys.exit(1)


@main.command()
@click.argument("target")
@click.option("--step", "step_names", multiple=True, required=True, help="The step(s) to reparse.")
def reparse(target: str, step_names: tuple[str, ...]) -> None:
    """Recompute every key of the steps and delete outputs they no longer produce."""
    _, steps = _steps(target, step_names)
    summary = RunSummary()
    for s in steps:
        if not hasattr(s, "get_all_keys"):
            raise click.BadParameter(f"step {s.name!r} has no keys to reparse", param_hint="--step")
        summary.steps.append(s.process_keys(s.get_all_keys()))  # type: ignore[attr-defined]
    _echo_summary(summary)
    if not summary.ok:
        sys.exit(1)


@main.command()
@click.argument("target")
@click.option("--step", "step_names", multiple=True, help="Only these steps.")
@click.option("--limit", default=20, show_default=True, help="Keys shown per step.")
@click.option("--traceback/--no-traceback", default=False, help="Show each key's traceback.")
def failed(target: str, step_names: tuple[str, ...], limit: int, traceback: bool) -> None:
    """Keys whose last attempt failed, with their errors."""
    _, steps = _steps(target, step_names)
    any_failed = False
    for s in steps:
        if not hasattr(s, "failed_keys"):
            continue
        total = s.count_failed()  # type: ignore[attr-defined]
        if not total:
            continue
        any_failed = True
        click.echo(f"{s.name}: {total} failed key(s)")
        df = s.failed_keys(limit=limit)  # type: ignore[attr-defined]
        key_cols = [c for c in df.columns if c not in ("error", "traceback", "process_ts")]
        for _, row in df.iterrows():
            key = ", ".join(f"{k}={row[k]!r}" for k in key_cols)
            click.echo(f"  {key}: {row['error']}")
            if traceback:
                click.echo("    " + str(row["traceback"]).replace("\n", "\n    "))
    if not any_failed:
        click.echo("no failed keys")


def _one_keyed_step(steps: list[ComputeStep], step_names: tuple[str, ...]) -> ComputeStep:
    if len(step_names) != 1 or not hasattr(steps[0], "eval"):
        raise click.BadParameter("--key needs exactly one --step, a step with transform keys", param_hint="--step")
    return steps[0]


def _parse_keys(step: ComputeStep, key_specs: tuple[str, ...]) -> Any:
    """``col=value[,col=value]`` per key -> a DataFrame of the step's transform keys (typed by the step)."""
    import pandas as pd

    cols = list(getattr(step, "transform_keys", []))
    rows = []
    for spec in key_specs:
        row = {}
        for part in spec.split(","):
            col, sep, value = part.partition("=")
            if not sep or col.strip() not in cols:
                raise click.BadParameter(
                    f"{part!r} is not col=value with a transform key column of step {step.name!r} {cols}",
                    param_hint="--key",
                )
            row[col.strip()] = value
        missing = [c for c in cols if c not in row]
        if missing:
            raise click.BadParameter(f"key {spec!r} of step {step.name!r} lacks {missing}", param_hint="--key")
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


@main.command("eval")
@click.argument("target")
@click.option("--step", "step_names", multiple=True, required=True, help="The step to evaluate.")
@click.option("--key", "key_specs", multiple=True, required=True, help="A key: col=value[,col=value] (repeatable).")
def eval_command(target: str, step_names: tuple[str, ...], key_specs: tuple[str, ...]) -> None:
    """Run a step on the current inputs of some keys and print what it would write; writes nothing."""
    _, steps = _steps(target, step_names)
    step = _one_keyed_step(steps, step_names)
    click.echo(str(step.eval(_parse_keys(step, key_specs))))  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
