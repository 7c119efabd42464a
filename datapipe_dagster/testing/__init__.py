"""Conformance suites: every TableStore and every step kind, built-in or yours, must pass the same tests.

The module does not import pytest (it is importable without it); the suites are classes whose
``test_*`` methods pytest collects in a subclass.

Use the store suite from pytest by subclassing ``StoreConformance`` and providing two fixtures::

    from datapipe_dagster.testing import StoreConformance

    class TestMyStore(StoreConformance):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore(tmp_path / "t", ...)

        @pytest.fixture
        def meta_dbconn(self, tmp_path):
            return DBConn(f"sqlite:///{tmp_path / 'meta.sqlite'}")

``store`` must return a new, empty store for each test. Rows are generated from the store's own schema
(``sample_frame``), so the suite fits any set of columns. ``builtin_store_factories`` builds one store
of each built-in kind for the library's own tests.

The step suite, ``StepConformance``, takes one fixture, ``step_case``, returning a ``StepCase``: a step
(from ``build_compute``), its DataStore, and two callables that put data in place and change it::

    class TestMyStep(StepConformance):
        @pytest.fixture
        def step_case(self, tmp_path):
            ...
            return StepCase(ds, step, seed=write_inputs, change=change_one_input_row)
"""

from __future__ import annotations

from datapipe_dagster.testing.samples import StoreFactory, builtin_store_factories, canonical, sample_frame
from datapipe_dagster.testing.steps import StepCase, StepConformance
from datapipe_dagster.testing.stores import StoreConformance

__all__ = [
    "StepCase",
    "StepConformance",
    "StoreConformance",
    "StoreFactory",
    "builtin_store_factories",
    "canonical",
    "sample_frame",
]
