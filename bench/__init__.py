"""Benchmarks of i3lani against raw drivers, pgbench and a Python peer.

Run them with ``python -m bench`` (``--quick`` for a smoke run, ``--seconds N`` per
measurement, ``--json FILE`` to keep the results). Every figure of one run is measured on
the same freshly created database, and is printed beside its reference with the ratio, the
goal and PASS/MISS. Only the ratios of one run mean something: absolute numbers depend on
the machine and on whatever else it is doing.

A suite is a module with ``async def run(ctx: BenchContext) -> list[Row]`` and a ``NOTES``
list describing its references, registered in ``bench.__main__.SUITES``: the event store
(``bench.eventstore``), the actor runtime (``bench.actors``), the task queue (``bench.queue``),
payment verification (``bench.payments``) and scale (``bench.scale``: a log of a million
events, ``read_all`` and ``i3lani audit`` on it, an idle worker's footprint). ``--suite NAME``
runs one of them.
"""
