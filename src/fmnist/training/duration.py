"""Durations as people write them: `90s`, `5m`, `1h`, `1h30m`, `2.5m` (a bare number is seconds)."""

from __future__ import annotations

import math
import re

UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}
# Seconds as a plain number: "90", "1.5", "1e3", "-5" (refused below as not positive); not Python's
# other float spellings ("1_0", "infinity"), which nobody means as a duration.
BARE_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?")
# One or more <number><unit> parts, largest unit first by convention (not enforced): "1h30m", "90s".
PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([smh])")


def parse_duration(text: str) -> float:
    """Seconds in `text`; ValueError with the accepted forms when it is not a duration."""
    cleaned = text.strip().lower()
    if BARE_NUMBER.fullmatch(cleaned):
        seconds = float(cleaned)
    else:
        parts = PART.findall(cleaned)
        if not parts or PART.sub("", cleaned).strip():
            raise ValueError("not a duration; write it as 90s, 5m, 1h or 1h30m")
        seconds = sum(float(number) * UNIT_SECONDS[unit] for number, unit in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("must be a finite duration greater than 0, such as 90s, 5m or 1h")
    return seconds


# A budget is planned once, from a few seconds of measuring at the start: over days a machine's speed
# drifts too far for that plan to hold (and 1e308 seconds overflows the plan's arithmetic).
MAX_BUDGET_SECONDS = 7 * 24 * 3600.0


def parse_time_budget(text: str) -> float:
    """A --time-budget in seconds; ValueError saying what to write when it is not a duration of at most a week."""
    seconds = parse_duration(text)
    if seconds > MAX_BUDGET_SECONDS:
        raise ValueError(f"more than a week ({format_duration(MAX_BUDGET_SECONDS)}): a plan measured in the first "
                         "seconds does not hold for days; give at most 168h, or a number of epochs instead")
    return seconds


def format_duration(seconds: float) -> str:
    """`95.0` -> '1m35s', `3600` -> '1h', `42.5` -> '42.5s': short, and parse_duration reads it back."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if value)
