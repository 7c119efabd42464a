"""Deterministic fake data for the example: site events and user profiles."""

from __future__ import annotations

import random
import time

import pandas as pd

EVENT_TYPES = ("click", "click", "click", "view", "view", "purchase")
COUNTRIES = ("DE", "FR", "US", "BR", "IN", "JP", "RU", "NG")
PLANS = ("free", "free", "free", "pro", "team")


def user_id(n: int) -> str:
    """The id of user number ``n`` (``u0007``)."""
    return f"u{n:04d}"


def user_ip(user: int, rng: random.Random) -> str:
    """An ip for ``user``: each user mostly uses two home ips; some ips are shared by neighbours."""
    home = user // 3  # neighbours (three users) share a pool of ips
    choice = rng.random()
    if choice < 0.7:
        return f"10.{home // 250 % 250}.{home % 250}.1"
    if choice < 0.95:
        return f"10.{home // 250 % 250}.{home % 250}.{2 + user % 3}"
    return f"172.16.{rng.randrange(0, 4)}.{rng.randrange(1, 255)}"


def make_events(
    n_events: int,
    n_users: int,
    *,
    seed: int = 0,
    prefix: str = "e",
    start: int = 0,
    t0: float | None = None,
) -> pd.DataFrame:
    """``n_events`` events of ``n_users`` users: columns user_id, event_id, event (a dict).

    Event ids are ``{prefix}{start + i}``, so calls with different ``start`` (or ``prefix``) add new events
    and the same call again rewrites the same events (unchanged content is not rewritten).
    """
    rng = random.Random(f"{seed}:{prefix}:{start}")
    t0 = time.time() if t0 is None else t0
    rows = []
    for i in range(n_events):
        u = rng.randrange(n_users)
        rows.append(
            {
                "user_id": user_id(u),
                "event_id": f"{prefix}{start + i:07d}",
                "event": {
                    "event_type": rng.choice(EVENT_TYPES),
                    "ip": user_ip(u, rng),
                    "ts": round(t0 + i * 0.01, 3),
                },
            }
        )
    return pd.DataFrame.from_records(rows, columns=["user_id", "event_id", "event"])


def make_profiles(n_users: int, *, seed: int = 0, version: int = 0) -> pd.DataFrame:
    """Profiles of users ``0 .. n_users-1``: country and plan; ``version`` upgrades every 50th user's plan."""
    rows = []
    for u in range(n_users):
        rng = random.Random(f"{seed}:profile:{u}")
        plan = rng.choice(PLANS)
        if version and u % 50 == version % 50:
            plan = "enterprise"
        rows.append({"user_id": user_id(u), "country": rng.choice(COUNTRIES), "plan": plan})
    return pd.DataFrame.from_records(rows, columns=["user_id", "country", "plan"])
