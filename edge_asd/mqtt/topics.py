"""MQTT topic names: one checked level at a time, joined under a (possibly multi-level) prefix."""

from __future__ import annotations

_FORBIDDEN_IN_LEVEL = ("/", "+", "#", "\x00")


def check_level(level: str) -> str:
    """One topic level: not empty, no separator, no wildcard, no NUL.

    Device and machine ids are validated by the configuration already; this is
    defence in depth, because an id with a wildcard would make the broker reject
    every publish, and one with a '/' would publish where nobody subscribes.
    """
    if not isinstance(level, str) or not level:
        raise ValueError(f"empty MQTT topic level: {level!r}")
    for ch in _FORBIDDEN_IN_LEVEL:
        if ch in level:
            raise ValueError(f"MQTT topic level {level!r} contains {ch!r}")
    return level


def build_topic(prefix: str, *levels: str) -> str:
    """``prefix/level/...``; the prefix may have several levels, each is checked."""
    parts = prefix.split("/") if isinstance(prefix, str) else [prefix]
    return "/".join([check_level(p) for p in parts] + [check_level(level) for level in levels])
