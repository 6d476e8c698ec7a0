"""Sizes and durations as operators write them: parsed in one place (exit 2 when malformed),
and sizes written back for people (messages in core, tables in render)."""

from __future__ import annotations

import re

from vmm.core.errors import UsageError

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?)(B?)\s*", re.I)
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", re.I)


def parse_size(text: str, what: str = "size") -> int:
    """'500GB', '1.5TiB', '800M', '1024' -> bytes: K/M/G/T/P are powers of 1000 with a B
    ('80GB', as GPU vendors write), of 1024 with iB or alone ('24GiB', '16M')."""
    match = _SIZE.fullmatch(text or "")
    if not match:
        raise UsageError(f"malformed {what}", repr(text), "use a number with a unit, e.g. 24GiB, 80GB, 16MiB")
    value, unit, binary, b = match.groups()
    power = "KMGTP".find(unit.upper()) + 1 if unit else 0
    base = 1024 if (binary or (unit and not b)) else 1000
    return int(float(value) * base ** power)


def parse_duration(text: str) -> float:
    """'30d', '12h', '90m', '45s', '2w' -> seconds."""
    match = _DURATION.fullmatch(text or "")
    if not match:
        raise UsageError("malformed duration", repr(text), "use a number with a unit: 45s, 90m, 12h, 30d, 2w")
    value, unit = match.groups()
    return float(value) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit.lower()]


def human_bytes(n: int | float | None) -> str:
    """1536 -> '1.5 KiB'. Sizes are bytes everywhere else; only messages and tables humanise."""
    if n is None:
        return "-"
    n = float(n)
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    i = 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{int(n)} B" if i == 0 else f"{n:.1f} {units[i]}"


ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def iso_time(epoch: float | None) -> str | None:
    """An epoch time as the ISO-8601 UTC stamp of ``ls --json``'s ``last_used`` (None stays None)."""
    from datetime import datetime, timezone

    return None if epoch is None else datetime.fromtimestamp(epoch, tz=timezone.utc).strftime(ISO_FORMAT)


def age_s(when: float | str | None, now: float | None = None) -> float | None:
    """Seconds since ``when``: an epoch time, or the ISO-8601 UTC stamp vmm writes in manifests
    and usage records (``2026-12-06T19:30:00Z``); None for never / unreadable. The one place
    ages are computed (``ls``'s LAST USED, ``gc``'s reasons, ``ps``'s uptime)."""
    import time

    if when is None:
        return None
    if isinstance(when, str):
        from datetime import datetime, timezone

        try:
            when = datetime.strptime(when, ISO_FORMAT).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            return None
    return (time.time() if now is None else now) - float(when)
