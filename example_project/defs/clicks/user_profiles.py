"""``user_profiles``: a plain Dagster ``@asset`` (an ingestion from a "CRM export") whose DataFrame goes
through the datapipe IO manager, so the table is row-tracked and ``user_report`` recomputes only the users
whose profile changed. ``defs.yaml`` beside this file includes it in the component (``assets:``).
"""

# No ``from __future__ import annotations``: Dagster resolves the ``config: ProfilesConfig`` annotation
# at decoration time and cannot read it as a string.
import dagster as dg
import pandas as pd

from datapipe_dagster.dagster import DEFAULT_IO_MANAGER_KEY
from datapipe_dagster.dagster.constants import META_REPLACE
from example_project.generate import make_profiles

GROUP = "clicks"


class ProfilesConfig(dg.Config):
    """Which CRM export to ingest: the number of users, and a version (a new version upgrades a few plans)."""

    n_users: int = 500
    version: int = 0


@dg.asset(
    key="user_profiles",
    group_name=GROUP,
    io_manager_key=DEFAULT_IO_MANAGER_KEY,
    kinds={"python"},
    metadata={META_REPLACE: True},  # the export is complete: profiles it no longer lists are deleted
    description="Ingests user profiles (a CRM export) through the datapipe IO manager: row-tracked, so "
    "user_report recomputes only users whose profile changed.",
)
def user_profiles(config: ProfilesConfig) -> pd.DataFrame:
    """The CRM export: one row per user with country and plan."""
    return make_profiles(config.n_users, version=config.version)
