"""The console: one live page of a riverstream stream, in its own process (`riverstream console`).

Models and the versions they serve, learning curves from the trace, the version timeline from the
registry's history, lag, throughput, dead letters and drift from the learner's metrics, serving
graphs and champion/challenger comparisons. Read-only unless ``RIVERSTREAM_CONSOLE_TOKEN`` is set.

A room of its own rather than part of ``serving/``: it reads the registry (``stream.registry``),
which the prediction API must not import, and it is started, scaled and exposed separately (an
operator's page, not a client API). It may import ``schemas``, ``learners``, ``stream.store`` and
``stream.registry``; only ``stream.cli`` imports it.
"""
