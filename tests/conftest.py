"""Test configuration: the fleet pytest plugin gives real Redis and real Celery workers."""

pytest_plugins = ["fleet.testing.pytest_plugin"]
