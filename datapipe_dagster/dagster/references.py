"""References from a component's ``defs.yaml`` to Python objects (``.pipeline.catalog``,
``my_pkg.module.attr``): importing them, and checking that each names what its attribute expects, with
errors that name the attribute, the reference and what was found."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any

import dagster as dg

from datapipe_dagster.compute.catalog import Catalog, Pipeline
from datapipe_dagster.errors import ConfigurationError

COMPONENT = "DatapipeComponent"


def import_reference(ref: str, attribute: str, context: dg.ComponentLoadContext | None = None) -> Any:
    """The Python object a reference names: ``.module.attr`` (beside ``defs.yaml``) or ``pkg.module.attr``.

    Raises:
        ConfigurationError: the module does not import, or has no such attribute (both are named).
    """
    ref = ref.strip()
    module_name, _, name = ref.rpartition(".")
    if not name or not module_name.strip("."):
        raise ConfigurationError(
            f"{COMPONENT} attribute `{attribute}`: {ref!r} is not a reference to a Python object; write "
            f"`.pipeline.{attribute}` (module pipeline.py beside defs.yaml) or `my_pkg.module.{attribute}`"
        )
    package = None
    if module_name.startswith("."):
        if context is None:
            raise ConfigurationError(
                f"{COMPONENT} attribute `{attribute}`: the relative reference {ref!r} needs the component's "
                "folder (load it from a defs.yaml), or give an absolute reference such as `my_pkg.module.attr`"
            )
        folder = context.path if context.path.is_dir() else context.path.parent  # defs.yaml's or component.py's
        package = context.defs_relative_module_name(folder)
    try:
        module = importlib.import_module(module_name, package=package)
    except Exception as e:
        where = importlib.util.resolve_name(module_name, package) if package else module_name
        raise ConfigurationError(
            f"{COMPONENT} attribute `{attribute}`: cannot import module {where!r} for reference {ref!r} "
            f"(attribute {name!r}): {type(e).__name__}: {e}"
        ) from e
    if not hasattr(module, name):
        defined = ", ".join(
            n for n, v in sorted(vars(module).items()) if not n.startswith("_") and not isinstance(v, ModuleType)
        )
        raise ConfigurationError(
            f"{COMPONENT} attribute `{attribute}`: module {module.__name__!r} has no attribute {name!r} "
            f"(reference {ref!r}); it defines: {defined or '(nothing public)'}"
        )
    return getattr(module, name)


def kind_of(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _check_declaration(obj: Any, attribute: str, ref: str, expected: type, other: type, factory: str) -> Any:
    """``obj`` when it is an ``expected`` (Catalog/Pipeline) or a function making one (not the ``other``
    declaration, not a class); else an error naming the attribute, the reference and what was found."""
    if isinstance(obj, expected) or (callable(obj) and not isinstance(obj, (other, type))):
        return obj
    raise ConfigurationError(
        f"{COMPONENT} attribute `{attribute}` ({ref}): expected a datapipe_dagster {expected.__name__}, or a "
        f"function {factory} returning one; found {kind_of(obj)}"
    )


def check_catalog(obj: Any, attribute: str, ref: str) -> Any:
    return _check_declaration(obj, attribute, ref, Catalog, Pipeline, "taking a DBConn and")


def check_pipeline(obj: Any, attribute: str, ref: str) -> Any:
    return _check_declaration(obj, attribute, ref, Pipeline, Catalog, "without arguments")


def check_assets(obj: Any, ref: str) -> list[dg.AssetsDefinition | dg.AssetSpec]:
    items = list(obj) if isinstance(obj, (list, tuple)) else [obj]
    for item in items:
        if not isinstance(item, (dg.AssetsDefinition, dg.AssetSpec)):
            raise ConfigurationError(
                f"{COMPONENT} attribute `assets` ({ref}): expected a Dagster asset (an @asset function, an "
                f"AssetsDefinition or an AssetSpec, or a list of them); found {kind_of(item)}"
            )
    return items


def call_factory(factory: Callable[..., Any], attribute: str, expected: type, *args: Any) -> Any:
    name = getattr(factory, "__qualname__", repr(factory))
    try:
        inspect.signature(factory).bind(*args)  # the signature only: errors inside the factory are its own
    except (TypeError, ValueError) as e:
        need = "a DBConn" if args else "no arguments"
        raise ConfigurationError(
            f"{COMPONENT} attribute `{attribute}`: the function {name} must take {need} and return a "
            f"{expected.__name__}: {e}"
        ) from e
    made = factory(*args)
    if not isinstance(made, expected):
        raise ConfigurationError(
            f"{COMPONENT} attribute `{attribute}`: the function {name} must return a datapipe_dagster "
            f"{expected.__name__}; it returned {kind_of(made)}"
        )
    return made
