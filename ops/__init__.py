"""Operator-facing tools: the ``i3lani`` command line (later: admin HTTP API, dashboard)."""
