"""``datapipe-dagster``: run and inspect a pipeline from the shell, without Dagster.

A *target* names the pipeline (see ``TARGET_HELP``): ``MODULE:ATTR`` or a bare ``MODULE``. Every command
prints one line per step, or one JSON document with ``--json`` (for scripts).

    datapipe-dagster status  example_project.definitions:datapipe_target
    datapipe-dagster run     example_project.definitions:datapipe_target [--step NAME] [--json]
    datapipe-dagster failed  example_project.definitions:datapipe_target [--traceback]
    datapipe-dagster reparse example_project.definitions:datapipe_target --step parse_clicks_ip
    datapipe-dagster eval   example_project.definitions:datapipe_target --step parse_clicks_ip --key user_id=u1
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from typing import Any

import click

from datapipe_dagster.compute.catalog import Catalog, ComputeStep, Pipeline
from datapipe_dagster.compute.datatable import DataStore
from datapipe_dagster.compute.partition_runner import stale_by_partition
from datapipe_dagster.compute.result import RunSummary, StepResult
from datapipe_dagster.compute.run import build_compute
from datapipe_dagster.compute.steps import KeyedStep, Step
from datapipe_dagster.frames import plain as _plain

EXAMPLE = "example_project.definitions:datapipe_target"

TARGET_HELP = f"""\b
TARGET names the pipeline, in one of two forms:
  MODULE:ATTR  ATTR is an object, or a function called with no arguments that
               returns one, with attributes `catalog`, `pipeline` and
               `datastore` (or `ds`);
  MODULE       the module itself has those attributes (a script that defines
               `catalog = ...`, `pipeline = ...`, `ds = ...` at top level).
MODULE is imported as Python imports it (the current directory comes first),
e.g. `{EXAMPLE}` or `my_pipeline` for ./my_pipeline.py."""


def load_target(target: str) -> tuple[Catalog, Pipeline, DataStore]:
    """Resolve ``MODULE[:ATTR]`` to (catalog, pipeline, datastore); see ``TARGET_HELP``."""
    module_name, _, attr = target.partition(":")
    if "." not in sys.path and "" not in sys.path:
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
    missing = [n for n, v in (("catalog", catalog), ("pipeline", pipeline), ("datastore (or ds)", ds)) if v is None]
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


def _key_columns(df: Any) -> list[str]:
    return [c for c in df.columns if c not in ("error", "traceback", "process_ts")]


def _failed_rows(df: Any, limit: int, traceback: bool) -> list[dict[str, Any]]:
    out = []
    for _, row in df.head(limit).iterrows():
        item: dict[str, Any] = {"key": {k: _plain(row[k]) for k in _key_columns(df)}, "error": str(row["error"])}
        if traceback:
            item["traceback"] = str(row.get("traceback", ""))
        out.append(item)
    return out


def step_result_dict(res: StepResult, max_failed: int = 20) -> dict[str, Any]:
    """A StepResult as plain JSON values (the ``--json`` output of ``run`` and ``reparse``)."""
    return {
        "step": res.name,
        "keys_processed": res.keys_processed,
        "keys_failed": res.keys_failed,
        "rows_read": res.rows_read,
        "outputs": {t: {"inserted": o.inserted, "updated": o.updated, "deleted": o.deleted} for t, o in res.outputs.items()},
        "elapsed_s": round(res.elapsed, 3),
        "failed": _failed_rows(res.failed, max_failed, False) if res.keys_failed else [],
    }


def _report(summary: RunSummary, target: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"ok": summary.ok, "steps": [step_result_dict(s) for s in summary.steps]}, indent=2))
    else:
        for s in summary.steps:
            click.echo(s.summary_line())
        if not summary.ok:
            n = sum(s.keys_failed for s in summary.steps)
            click.echo(f"{n} key(s) failed; their errors: datapipe-dagster failed {target}", err=True)
    if not summary.ok:
        sys.exit(1)


JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print one JSON document (for scripts) instead of lines.")
TARGET_ARG = click.argument("target", metavar="TARGET")


@click.group(
    epilog=TARGET_HELP + f"""

\b
Examples:
  datapipe-dagster status  {EXAMPLE}
  datapipe-dagster run     {EXAMPLE} --json
  datapipe-dagster failed  {EXAMPLE} --traceback
  datapipe-dagster reparse {EXAMPLE} --step parse_clicks_ip""",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("-v", "--verbose", is_flag=True, help="Also print the library's log messages (to stderr).")
def main(verbose: bool) -> None:
    """Run and inspect a datapipe_dagster pipeline (no Dagster needed).

    Each command prints one line per step; `--json` prints one JSON document instead.
    """
    log = logging.getLogger("datapipe_dagster")
    # The engine logs every failed chunk and run as a warning; the commands already print one line per step,
    # so without --verbose the log is kept out of the terminal (otherwise Python prints it to stderr).
    if verbose:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.NullHandler()
    for h in [h for h in log.handlers if getattr(h, "_datapipe_cli", False)]:
        log.removeHandler(h)  # one handler however often main() runs in a process (tests, scripts)
    handler._datapipe_cli = True  # type: ignore[attr-defined]
    log.addHandler(handler)


@main.command(
    epilog=TARGET_HELP + f"""

\b
Prints, per step, its stale and failed keys:
  parse_clicks_ip: 3 stale keys, 0 failed (keyed by user_id)
\b
Examples:
  datapipe-dagster status {EXAMPLE}
  datapipe-dagster status my_pipeline --json"""
)
@TARGET_ARG
@JSON_OPTION
def status(target: str, as_json: bool) -> None:
    """Stale and failed keys per step (reads only; changes nothing)."""
    _, steps = _steps(target, ())
    rows: list[dict[str, Any]] = []
    for s in steps:
        if isinstance(s, KeyedStep):
            keys = s.transform_keys
            stale = stale_by_partition(s, None, include_failed=True, advance_watermark=False).total
            failed = s.count_failed()
            rows.append({"step": s.name, "kind": type(s).__name__, "transform_keys": list(keys), "stale": stale, "failed": failed})
            if not as_json:
                by = f"keyed by {', '.join(keys)}" if keys else "no key columns: one batch"
                click.echo(f"{s.name}: {stale} stale keys, {failed} failed ({by})")
        else:
            rows.append({"step": s.name, "kind": type(s).__name__, "transform_keys": None, "stale": None, "failed": None})
            if not as_json:
                click.echo(f"{s.name}: {type(s).__name__}, runs in full every time")
    if as_json:
        click.echo(json.dumps({"steps": rows}, indent=2))


@main.command(
    epilog=TARGET_HELP + f"""

\b
Prints one line per step (keys processed, input rows read, and per output
table rows +inserted ~updated -deleted):
  parse_clicks_ip: 3 keys, 5 rows read, [click_count: +3 ~0 -0, ip: +3 ~0 -0]
Exit code 0 when every key succeeded, 1 when some failed (the others are
written; failed keys are retried on the next run).
\b
Examples:
  datapipe-dagster run {EXAMPLE}
  datapipe-dagster run {EXAMPLE} --step parse_clicks_ip --json
  datapipe-dagster run {EXAMPLE} --step parse_clicks_ip --key user_id=u1"""
)
@TARGET_ARG
@click.option("--step", "step_names", multiple=True, metavar="NAME", help="Run only this step (repeatable).")
@click.option(
    "--key", "key_specs", multiple=True, metavar="COL=VALUE[,COL=VALUE]",
    help="Process just these keys of one --step (repeatable), stale or not.",
)
@JSON_OPTION
def run(target: str, step_names: tuple[str, ...], key_specs: tuple[str, ...], as_json: bool) -> None:
    """Process every stale key of every step, in dependency order (or just the --key keys of one step)."""
    from datapipe_dagster.compute.run import run_steps

    ds, steps = _steps(target, step_names)
    if key_specs:
        step = _one_keyed_step(steps, step_names)
        summary = RunSummary([step.process_keys(_parse_keys(step, key_specs))])
    else:
        summary = run_steps(ds, steps)
    _report(summary, target, as_json)


@main.command(
    epilog=TARGET_HELP + f"""

\b
Use it after changing a step's function, or to retry failed keys now.
Output and exit code as for `run`.
\b
Example:
  datapipe-dagster reparse {EXAMPLE} --step parse_clicks_ip"""
)
@TARGET_ARG
@click.option("--step", "step_names", multiple=True, required=True, metavar="NAME", help="A step to reparse (repeatable).")
@JSON_OPTION
def reparse(target: str, step_names: tuple[str, ...], as_json: bool) -> None:
    """Recompute every key of the steps and delete outputs they no longer produce."""
    _, steps = _steps(target, step_names)
    keyed: list[KeyedStep] = []
    for s in steps:
        if not isinstance(s, KeyedStep):
            raise click.BadParameter(f"step {s.name!r} has no keys to reparse", param_hint="--step")
        keyed.append(s)
    summary = RunSummary()
    for k in keyed:
        summary.steps.append(k.process_keys(k.get_all_keys()))
    _report(summary, target, as_json)


@main.command(
    epilog=TARGET_HELP + f"""

\b
Prints per step the number of failed keys, then one line per key:
  parse_clicks_ip: 1 failed key(s)
    user_id='bad': ValueError: user bad has a broken event
\b
Examples:
  datapipe-dagster failed {EXAMPLE}
  datapipe-dagster failed {EXAMPLE} --step parse_clicks_ip --traceback"""
)
@TARGET_ARG
@click.option("--step", "step_names", multiple=True, metavar="NAME", help="Only this step (repeatable).")
@click.option("--limit", default=20, show_default=True, help="Keys shown per step.")
@click.option("--traceback/--no-traceback", default=False, help="Show each key's traceback.")
@JSON_OPTION
def failed(target: str, step_names: tuple[str, ...], limit: int, traceback: bool, as_json: bool) -> None:
    """Keys whose last attempt failed, with their errors (reads only)."""
    _, steps = _steps(target, step_names)
    rows: list[dict[str, Any]] = []
    for s in steps:
        if not isinstance(s, KeyedStep):
            continue
        total = s.count_failed()
        if not total:
            continue
        keys = _failed_rows(s.failed_keys(limit=limit), limit, traceback)
        rows.append({"step": s.name, "failed": total, "keys": keys})
        if as_json:
            continue
        click.echo(f"{s.name}: {total} failed key(s)")
        for k in keys:
            click.echo(f"  {', '.join(f'{c}={v!r}' for c, v in k['key'].items())}: {k['error']}")
            if traceback:
                click.echo("    " + k["traceback"].replace("\n", "\n    "))
    if as_json:
        click.echo(json.dumps({"steps": rows}, indent=2))
    elif not rows:
        click.echo("no failed keys")


def _one_keyed_step(steps: list[ComputeStep], step_names: tuple[str, ...]) -> KeyedStep:
    step: Step = steps[0]
    if len(step_names) != 1 or not isinstance(step, KeyedStep):
        raise click.BadParameter("--key needs exactly one --step, a step with transform keys", param_hint="--step")
    return step


def _parse_keys(step: KeyedStep, key_specs: tuple[str, ...]) -> Any:
    """``col=value[,col=value]`` per key -> a DataFrame of the step's transform keys (typed by the step)."""
    import pandas as pd

    cols = list(step.transform_keys)
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
    click.echo(str(step.eval(_parse_keys(step, key_specs))))


if __name__ == "__main__":
    main()
