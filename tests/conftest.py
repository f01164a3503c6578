"""Test configuration: the fleet pytest plugin gives real Redis and real Celery workers;
``tests.llm_fixtures`` adds simulated providers and a FleetClient routed to them."""

pytest_plugins = ["fleet.testing.pytest_plugin", "tests.llm_fixtures"]
