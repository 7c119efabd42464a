"""Nothing is lost on a crash: a process killed mid-run leaves whole chunks or none, and a rerun finishes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from datapipe_dagster import DBConn, run_steps
from tests.engine_helpers import event, frame, seed_setup

SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {root!r})
    from datapipe_dagster import DBConn, run_steps
    from tests.engine_helpers import parse_clicks_ip, seed_setup

    def dies_on_u7(df):
        if "u7" in set(df["user_id"]):
            os._exit(9)  # the process dies without cleanup, mid-run, inside a chunk
        return parse_clicks_ip(df)

    ds, catalog, steps = seed_setup(DBConn({url!r}, schema={schema!r}), dies_on_u7, chunk_size=3, name="clicks")
    run_steps(ds, steps)
    """
)


def test_killed_run_leaves_whole_chunks_and_rerun_completes(dbconn: DBConn, tmp_path: Path) -> None:
    ds, catalog, steps = seed_setup(dbconn, chunk_size=3, name="clicks")
    events = catalog.get_datatable(ds, "events")
    events.store_chunk(frame(*[event(f"u{i}", "1") for i in range(10)]))
    script = tmp_path / "crash.py"
    script.write_text(SCRIPT.format(root=str(Path(__file__).parents[1]), url=dbconn.connstr, schema=dbconn.schema))
    proc = subprocess.run([sys.executable, str(script)], env=dict(os.environ), timeout=120)
    assert proc.returncode == 9
    cc = catalog.get_datatable(ds, "click_count")
    done = set(cc.get_data()["user_id"])
    # whatever committed did so a whole chunk at a time, outputs and transform state together
    assert len(done) % 3 == 0 and "u7" not in done
    assert set(catalog.get_datatable(ds, "ip").get_data()["user_id"]) == done
    stale = set(steps[0].get_stale_keys()["user_id"])
    assert stale == {f"u{i}" for i in range(10)} - done
    summary = run_steps(ds, steps)
    assert summary.ok
    assert set(cc.get_data()["user_id"]) == {f"u{i}" for i in range(10)}
