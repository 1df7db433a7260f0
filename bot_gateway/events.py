"""The gateway's events live with the others in :mod:`events.users` (so that every process,
and every reader of the whole log, knows them); re-exported here for the gateway's code."""

from __future__ import annotations

from events.users import MEMBER_CATEGORY, UserRegistered, member_stream

__all__ = ["MEMBER_CATEGORY", "UserRegistered", "member_stream"]
