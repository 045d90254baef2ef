"""Durations as people write them: `90s`, `5m`, `1h`, `1h30m`, `2.5m` (a bare number is seconds)."""

from __future__ import annotations

import math
import re

UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}
# One or more <number><unit> parts, largest unit first by convention (not enforced): "1h30m", "90s".
PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([smh])")


def parse_duration(text: str) -> float:
    """Seconds in `text`; ValueError with the accepted forms when it is not a duration."""
    cleaned = text.strip().lower()
    try:
        seconds = float(cleaned)
    except ValueError:
        parts = PART.findall(cleaned)
        if not parts or PART.sub("", cleaned).strip():
            raise ValueError("not a duration; write it as 90s, 5m, 1h or 1h30m") from None
        seconds = sum(float(number) * UNIT_SECONDS[unit] for number, unit in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("must be a finite duration greater than 0, such as 90s, 5m or 1h")
    return seconds


def format_duration(seconds: float) -> str:
    """`95.0` -> '1m35s', `3600` -> '1h', `42.5` -> '42.5s': short, and parse_duration reads it back."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if value)
