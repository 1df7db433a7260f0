"""Benchmarks of i3lani against raw drivers, pgbench and a Python peer.

Run them with ``python -m bench`` (``--quick`` for a smoke run, ``--seconds N`` per
measurement, ``--json FILE`` to keep the results). Every figure of one run is measured on
the same freshly created database, and is printed beside its reference with the ratio, the
goal and PASS/MISS. Only the ratios of one run mean something: absolute numbers depend on
the machine and on whatever else it is doing.

A suite is a module with ``async def run(ctx: BenchContext) -> list[Row]`` and a ``NOTES``
list describing its references, registered in ``bench.__main__.SUITES``: the event store
(``bench.eventstore``) and the actor runtime (``bench.actors``) today, the task queue later.
"""
