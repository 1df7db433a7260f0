"""Operator-facing tools: the ``i3lani`` command line, the admin HTTP API and live dashboard, the
audit replay, the demo and the local stand-ins for TonAPI and the Bot API."""
