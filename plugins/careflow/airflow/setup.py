"""What careflow needs inside Airflow's metadata DB: the ``careflow_messaging`` pool.

The pool caps concurrent send tasks against the messaging provider. Deferred tasks do not hold a
slot: a task waiting for the circuit breaker in the triggerer frees its slot for another
workflow's sends. ``careflow setup`` creates or resizes it. Airflow never schedules a task whose
pool does not exist (its scheduler only logs it), so every send task would wait for ever where
nobody ran ``careflow setup``: each Airflow component that starts a job (the scheduler, the
triggerer, the dag processor) creates a missing pool with :data:`DEFAULT_POOL_SLOTS` slots, through
the plugin's listener (:mod:`careflow.airflow.pool_guard`), and says so in its log.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)

#: Slots of the pool that ``careflow setup`` creates, and that a missing pool is created with.
DEFAULT_POOL_SLOTS = 4
POOL_DESCRIPTION = "careflow: send tasks running against the messaging provider at once"


def setup_airflow(args: argparse.Namespace) -> int:
    """Create or update careflow's pool; returns the exit code."""
    from airflow.models.pool import Pool
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from careflow.airflow.operators.action import PROVIDER_POOL
    from careflow.simulation import raise_airflow_database_problem

    try:
        pool = Pool.create_or_update_pool(
            name=PROVIDER_POOL,
            slots=args.pool_slots,
            description=POOL_DESCRIPTION,
            include_deferred=False,
        )
    except (OperationalError, ProgrammingError) as exc:  # "no such table", "relation does not exist"
        raise_airflow_database_problem(exc)
        raise
    print(f"pool {pool.pool} has {pool.slots} slot(s)")
    return 0


def ensure_pool() -> bool:
    """Create the ``careflow_messaging`` pool with :data:`DEFAULT_POOL_SLOTS` slots where it is
    missing; whether it did. An existing pool is left as it is, whatever its size."""
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError

    from careflow.airflow.operators.action import PROVIDER_POOL

    try:
        with create_session() as session:
            if session.scalar(select(Pool.id).where(Pool.pool == PROVIDER_POOL)) is not None:
                return False
            session.add(
                Pool(
                    pool=PROVIDER_POOL,
                    slots=DEFAULT_POOL_SLOTS,
                    description=POOL_DESCRIPTION,
                    include_deferred=False,
                )
            )
    except IntegrityError:  # another component created it meanwhile
        return False
    log.warning(
        "careflow: the %s pool was missing, and Airflow schedules no task of a pool that does not "
        "exist, so no message would have been sent: created it with %d slots "
        "(`careflow setup --pool-slots N` resizes it)",
        PROVIDER_POOL,
        DEFAULT_POOL_SLOTS,
    )
    return True
