"""``careflow setup``: what careflow needs inside Airflow's metadata DB.

Creates (or resizes) the ``careflow_messaging`` pool that caps concurrent send tasks against the
messaging provider. Deferred tasks do not hold a slot: a task waiting for the circuit breaker in
the triggerer frees its slot for another workflow's sends.
"""

from __future__ import annotations

import argparse

from careflow.airflow.operators.action import PROVIDER_POOL


def setup_airflow(args: argparse.Namespace) -> int:
    """Create or update careflow's pool; returns the exit code."""
    from airflow.models.pool import Pool
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from careflow.simulation import _raise_unless_airflow_db_migrated

    if args.pool_slots < 1:
        raise SystemExit("careflow setup: --pool-slots must be at least 1")
    try:
        pool = Pool.create_or_update_pool(
            name=PROVIDER_POOL,
            slots=args.pool_slots,
            description="careflow: send tasks running against the messaging provider at once",
            include_deferred=False,
        )
    except (OperationalError, ProgrammingError) as exc:  # "no such table", "relation does not exist"
        _raise_unless_airflow_db_migrated(exc)
        raise
    print(f"pool {pool.pool} has {pool.slots} slot(s)")
    return 0
