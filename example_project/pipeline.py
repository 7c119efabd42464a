"""The example's transforms: plain pandas functions, recomputed only for the keys whose inputs changed.

Each function receives *all* input rows of a batch of transform keys, in the order they were last
written (so "the last event" is the last row of a user's group), never only the changed rows.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from datapipe_dagster import BatchTransform, Pipeline


def parse_event(value: Any) -> dict[str, Any]:
    """An event's JSON as a dict (the seed notebook stored ``json.dumps`` strings; dicts work too)."""
    if isinstance(value, dict):
        return value
    if isinstance(value, (str, bytes)):
        parsed = json.loads(value)
        return parsed if isinstance(parsed, dict) else {}
    return {}


def parse_clicks_ip(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The seed's step: clicks per user, and the ip of the user's last written event."""
    clicks, ips = [], []
    for user_id, grp in events.groupby("user_id", sort=False):
        parsed = [parse_event(v) for v in grp["event"]]
        clicks.append(
            {"user_id": user_id, "click_count": sum(1 for e in parsed if e.get("event_type") == "click")}
        )
        ips.append({"user_id": user_id, "ip": parsed[-1].get("ip") if parsed else None})
    return (
        pd.DataFrame.from_records(clicks, columns=["user_id", "click_count"]),
        pd.DataFrame.from_records(ips, columns=["user_id", "ip"]),
    )


def collect_user_ips(events: pd.DataFrame) -> pd.DataFrame:
    """Users seen per ip: (ip, user_id) -> number of events and the latest event time.

    The transform key is ``user_id`` (the key column events and user_ips share): a changed event
    recomputes its user's rows, and an ip the user no longer uses is deleted from ``user_ips``.
    """
    cols = ["ip", "user_id", "n_events", "last_ts"]
    if events.empty:
        return pd.DataFrame(columns=cols)
    parsed = [parse_event(v) for v in events["event"]]
    df = pd.DataFrame(
        {
            "user_id": events["user_id"].to_numpy(),
            "ip": [e.get("ip") for e in parsed],
            "ts": pd.to_numeric(
                pd.Series([e.get("ts") for e in parsed], dtype=object), errors="coerce"
            ).to_numpy(),
        }
    )
    df = df[df["ip"].notna()]
    out = (
        df.groupby(["ip", "user_id"], sort=False)
        .agg(n_events=("ts", "size"), last_ts=("ts", "max"))
        .reset_index()
    )
    return out[cols]


def summarise_ips(user_ips: pd.DataFrame) -> pd.DataFrame:
    """Per-ip summary, keyed by ip: users and events seen on it, and whether several users share it."""
    cols = ["ip", "n_users", "n_events", "shared"]
    if user_ips.empty:
        return pd.DataFrame(columns=cols)
    out = (
        user_ips.groupby("ip", sort=False)
        .agg(n_users=("user_id", "nunique"), n_events=("n_events", "sum"))
        .reset_index()
    )
    out["shared"] = (out["n_users"] > 1).astype("int64")
    return out[cols]


def build_user_report(
    user_profiles: pd.DataFrame, click_count: pd.DataFrame, ip: pd.DataFrame
) -> pd.DataFrame:
    """One row per user known to any input: profile (or ``unknown``), clicks (0 if none) and last ip."""
    cols = ["user_id", "country", "plan", "click_count", "ip"]
    users = pd.concat([user_profiles["user_id"], click_count["user_id"], ip["user_id"]], ignore_index=True)
    users = users.drop_duplicates()
    if users.empty:
        return pd.DataFrame(columns=cols)
    out = (
        pd.DataFrame({"user_id": users})
        .merge(user_profiles[["user_id", "country", "plan"]], on="user_id", how="left")
        .merge(click_count[["user_id", "click_count"]], on="user_id", how="left")
        .merge(ip[["user_id", "ip"]], on="user_id", how="left")
    )
    out["country"] = out["country"].fillna("unknown")
    out["plan"] = out["plan"].fillna("unknown")
    out["click_count"] = out["click_count"].fillna(0).astype("int64")
    return out[cols]


def make_pipeline() -> Pipeline:
    """The example pipeline: four steps, partitioned by user (three of them) and by ip (one)."""
    return Pipeline(
        steps=[
            BatchTransform(parse_clicks_ip, inputs=["events"], outputs=["click_count", "ip"]),
            BatchTransform(collect_user_ips, inputs=["events"], outputs=["user_ips"]),
            BatchTransform(summarise_ips, inputs=["user_ips"], outputs=["ip_stats"]),
            BatchTransform(
                build_user_report, inputs=["user_profiles", "click_count", "ip"], outputs=["user_report"]
            ),
        ]
    )
