"""Old code against new, alternated in one session: the same benchmark run from two source trees in turns.

    .venv/bin/python -m benchmarks.ab --old /tmp/base --rounds 2 -- benchmarks.bench_engine --sizes 100000:10000

``--old`` is a checkout of the code to compare with (``git worktree add --detach /tmp/base <commit>``), and
``--new`` this tree by default. Each round runs the benchmark module once from each tree (old first in odd
rounds, new first in even ones, so a load that drifts during the session hits both alike), with that tree on
``PYTHONPATH`` and as the working directory, and keeps the Markdown table rows it prints. The rows come out
labelled with the tree and round, for a same-run ratio table (docs/benchmarks.md). Both trees run the
``benchmarks`` package of ``--new`` (so the tables have the same columns) against their own
``datapipe_dagster``; ``--own-scripts`` runs each tree's own benchmark scripts instead, for a script that
uses what the old code lacks.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run_tree(tree: Path, module_args: list[str], scripts: Path | None = None) -> list[str]:
    """The Markdown table rows ``python -m <module_args>`` prints when run with ``tree``'s code (and the
    ``benchmarks`` package of ``scripts``, when given)."""
    with tempfile.TemporaryDirectory() as mixed:
        root = tree
        if scripts is not None:
            root = Path(mixed)
            (root / "datapipe_dagster").symlink_to(tree / "datapipe_dagster")
            (root / "benchmarks").symlink_to(scripts / "benchmarks")
        env = {**os.environ, "PYTHONPATH": str(root)}
        out = subprocess.run(
            [sys.executable, "-m", *module_args], cwd=root, env=env, capture_output=True, text=True, check=False
        )
    if out.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(module_args)} exited {out.returncode}:\n{out.stderr[-3000:]}")
    return [line for line in out.stdout.splitlines() if line.startswith("|")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", type=Path, required=True, help="the tree of the code to compare with")
    p.add_argument("--new", type=Path, default=Path(__file__).resolve().parent.parent, help="this tree by default")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--own-scripts", action="store_true", help="each tree runs its own benchmarks package")
    p.add_argument("module", nargs=argparse.REMAINDER, help="-- then the benchmark module and its arguments")
    a = p.parse_args()
    module_args = a.module[1:] if a.module[:1] == ["--"] else a.module
    if not module_args:
        p.error("name the benchmark module after --")
    header: list[str] = []
    rows: list[str] = []
    for r in range(1, a.rounds + 1):
        order = [("old", a.old), ("new", a.new)] if r % 2 else [("new", a.new), ("old", a.old)]
        for label, tree in order:
            table = run_tree(tree.resolve(), module_args, None if a.own_scripts else a.new.resolve())
            print(f"round {r}, {label} done", file=sys.stderr, flush=True)
            if not header and len(table) >= 2:
                header = table[:2]
            rows += [f"| {label} | {r} {line}" for line in table[2:]]
    if header:
        print("| code | round " + header[0])
        print("|---|---" + header[1])
    print("\n".join(sorted(rows, key=lambda line: line.split("|")[3:5])))


if __name__ == "__main__":
    main()
