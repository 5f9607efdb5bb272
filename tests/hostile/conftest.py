"""Hostile-input tests: one fixed, derandomized hypothesis profile so CI runs the same examples each time."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

#: Fast enough for the whole of tests/hostile to stay well under a minute on 2 shared cores.
settings.register_profile(
    "hostile",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
