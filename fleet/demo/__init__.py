"""``fleet demo``: the scripted outage demo on an embedded Redis, with zero setup.

An embedded redis-server, two simulated providers (primary and backup), two real Celery worker
processes, and a scenario: a stream of SEO pipeline jobs → the primary goes down (the breaker
opens fleet-wide, traffic moves to the backup) → the backup goes down too (jobs are handled by
their task type's local-failure policy; escalations land in the queue) → both recover
(breakers close, escalations auto-replay) → a summary.
"""

from fleet.demo.scenario import DemoConfig, DemoReport, run_demo

__all__ = ["DemoConfig", "DemoReport", "run_demo"]
