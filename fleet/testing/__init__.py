"""Test doubles and harness pieces shipped for users' own tests.

- :mod:`fleet.testing.redis_container`: a real Redis in a container (testcontainers, host
  networking) with fault injection: pause, unpause, kill, restart.
- :mod:`fleet.testing.celery_workers`: real ``celery worker`` processes, started and stopped.
- :mod:`fleet.testing.pytest_plugin`: fixtures built on both (``pytest_plugins = [...]``).
- :func:`wait_until`: poll a condition with a deadline instead of sleeping a fixed time.
"""

from fleet.testing.wait import WaitTimeout, free_port, wait_until

__all__ = ["WaitTimeout", "free_port", "wait_until"]
