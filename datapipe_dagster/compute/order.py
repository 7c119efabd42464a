"""Ordering steps by the tables they read and write, and naming steps the user left unnamed.

A step depends on another when it reads a table the other writes. Steps that depend on each other in a
loop (a writes b, b writes a) form a *cycle group*: the runners repeat such a group until it stops
changing. Ordering is stable: steps with no dependency between them keep the pipeline's order.
"""

from __future__ import annotations

from dataclasses import dataclass

from datapipe_dagster.compute.catalog import ComputeStep


@dataclass
class StepGroup:
    """Steps run together: one step, or the steps of a cycle (in pipeline order)."""

    steps: list[ComputeStep]
    cyclic: bool


def _tables(step: ComputeStep, attr: str) -> set[str]:
    return {dt.name for dt in getattr(step, attr, [])}


def dependency_groups(steps: list[ComputeStep]) -> list[StepGroup]:
    """``steps`` grouped into strongly connected components, in dependency order.

    A group comes after every group that writes a table it reads; among independent groups the one
    holding the earliest step in ``steps`` comes first.
    """
    n = len(steps)
    reads = [_tables(s, "input_dts") for s in steps]
    writes = [_tables(s, "output_dts") for s in steps]
    # edge i -> j: step j reads what step i writes
    succ = [[j for j in range(n) if writes[i] & reads[j]] for i in range(n)]

    # Tarjan's strongly connected components (iterative, to stay clear of the recursion limit).
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    comp_of: dict[int, int] = {}
    comps: list[list[int]] = []
    counter = 0
    for root in range(n):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, pos = work.pop()
            if pos == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            recurse = False
            for k in range(pos, len(succ[v])):
                w = succ[v][k]
                if w not in index:
                    work.append((v, k + 1))
                    work.append((w, 0))
                    recurse = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if recurse:
                continue
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp_of[w] = len(comps)
                    comp.append(w)
                    if w == v:
                        break
                comps.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])

    # Kahn's algorithm over the components, always taking the ready one with the earliest step.
    m = len(comps)
    preds: list[set[int]] = [set() for _ in range(m)]
    for i in range(n):
        for j in succ[i]:
            if comp_of[i] != comp_of[j]:
                preds[comp_of[j]].add(comp_of[i])
    done: set[int] = set()
    order: list[int] = []
    while len(order) < m:
        ready = [c for c in range(m) if c not in done and preds[c] <= done]
        c = min(ready, key=lambda c: comps[c][0])
        done.add(c)
        order.append(c)
    groups = []
    for c in order:
        members = comps[c]
        cyclic = len(members) > 1 or members[0] in succ[members[0]]
        groups.append(StepGroup([steps[i] for i in members], cyclic))
    return groups


def order_steps(steps: list[ComputeStep]) -> list[ComputeStep]:
    """``steps`` in dependency order (see ``dependency_groups``)."""
    return [s for g in dependency_groups(steps) for s in g.steps]


def derive_names(steps: list[ComputeStep], explicit: list[bool]) -> None:
    """Give every step whose name was not given explicitly and collides with an earlier one a name
    derived from its outputs (then inputs), so it is unique and stays the same from run to run.

    The first step of a name keeps it, so adding a step later in the pipeline never renames (and so
    never resets the state of) a step that already ran. A step with the same function *and* the same
    tables as another is a duplicate and keeps its name (``build_compute`` refuses it).
    """
    taken = {s.name for s, e in zip(steps, explicit, strict=True) if e}
    seen: set[tuple[str, str, str]] = set()
    for s, e in zip(steps, explicit, strict=True):
        base = s.name
        outs = "_".join(sorted(_tables(s, "output_dts")))
        ins = "_".join(sorted(_tables(s, "input_dts")))
        if e:
            continue
        if (base, ins, outs) in seen:
            continue  # same function, same tables: a duplicate, which build_compute refuses by name
        seen.add((base, ins, outs))
        if base not in taken:
            taken.add(base)
            continue
        candidates = [f"{base}__{outs}" if outs else None, f"{base}__{ins}__{outs}" if ins else None]
        name = next((c for c in candidates if c and c not in taken), None)
        if name is None:
            continue
        s.name = name
        taken.add(name)
