"""The run's context, passed to step functions that ask for it by parameter name.

A BatchTransform function, a RowTransform function and its ``prepare``/``finish`` hooks receive, when
they declare a parameter of that name (after the positional parameters the step fills with data):

- ``ds``: the DataStore;
- ``idx``: the chunk's keys (a DataFrame of the transform-key columns);
- ``run_config``: the dict given to ``process_keys(..., run_config=...)`` / ``eval`` (empty otherwise);
- ``context``: a namespace shared by the calls of one chunk (``prepare``, the rows, ``finish``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from datapipe_dagster.errors import ConfigurationError

CONTEXT_PARAMS = ("ds", "idx", "run_config", "context")
"""Parameter names through which a step function receives the run's context."""

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def context_params(func: Callable[..., Any] | None, data_args: int = 0) -> set[str]:
    """The context parameters (``CONTEXT_PARAMS``) that ``func`` declares by name.

    The first ``data_args`` positional parameters are the data the step passes (input frames, a row):
    a parameter there named like a context parameter is data, not context.
    """
    if func is None:
        return set()
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return set()
    positional = 0
    names: set[str] = set()
    for p in params:
        if (
            p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            and positional < data_args
        ):
            positional += 1
            continue
        if p.kind in _NAMED and p.name in CONTEXT_PARAMS:
            names.add(p.name)
    return names


def check_kwargs_clash(
    kind: str, name: str, func: Callable[..., Any], kwargs: dict[str, Any], data_args: int
) -> None:
    """Refuse ``kwargs`` that name a context parameter ``func`` receives by name.

    Raises:
        ConfigurationError: naming the step and the clashing names.
    """
    clash = sorted(context_params(func, data_args) & set(kwargs))
    if clash:
        raise ConfigurationError(
            f"{kind} {name!r}: kwargs {clash} clash with the context parameters the function "
            f"receives by name ({', '.join(CONTEXT_PARAMS)}); rename the function's parameter"
        )
