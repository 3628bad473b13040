"""Hit and miss counts are observable through the plugin API's /careflow/api/cache."""

from __future__ import annotations

import warnings

from support import EXAMPLES

warnings.filterwarnings("ignore", category=DeprecationWarning)


def test_the_api_reports_hits_and_misses_of_every_cache(shared):
    from careflow.airflow.api import cache as cache_route
    from careflow.workflow.validation import validate_workflow

    raw = (EXAMPLES / "day-before-reminder.json").read_bytes()
    for _ in range(4):
        validate_workflow(raw)
    body = cache_route()
    caches = {c["name"]: c for c in body["caches"]}
    assert {"validation", "templates", "sent_keys"} <= set(caches)
    assert (caches["validation"]["hits"], caches["validation"]["misses"]) == (3, 1)
    assert caches["templates"]["misses"] >= 1 and caches["validation"]["backend"] == "redis"
    assert set(body["templates"]) == set(body["compiled_workflows"]) == {"hits", "misses", "size"}
