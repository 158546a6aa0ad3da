"""The vocabulary of config validation: ConfigError, the bounds checked before any work, and the one-line checks
(each message starts with the dotted field name; a near miss is suggested)."""
from __future__ import annotations

import difflib
from typing import Any


class ConfigError(ValueError):
    """A bad config value; the message names the field."""


# Bounds checked before any work: a value past them is a typo or an attack, and would otherwise cost hours,
# gigabytes or a crash before anything else is said (the paper's largest N is 5000, its splits 200/2000).
MAX_POPULATION = 1_000_000
MAX_EXAMPLES = 1_000_000
MAX_NEW_TOKENS = 1_000_000
MAX_BATCH = 100_000
MAX_THREADS = 4096
MAX_NODES = 100_000
MAX_SAMPLES = 100_000
MAX_TEMPERATURE = 100.0


def within(name: str, value: int, lo: int, hi: int) -> None:
    require(lo <= value <= hi, name, f"must be in [{lo}, {hi:,}], got {value:,}")


def require(ok: bool, name: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {problem}")


def choice(name: str, value: Any, valid: tuple) -> None:
    require(value in valid, name, f"must be one of {', '.join(map(str, valid))}; got {value!r}{near(value, valid)}")


def near(word: Any, valid, prefix: str = "") -> str:
    """`; did you mean X?` for a near miss of one of `valid`, else nothing."""
    match = difflib.get_close_matches(word, [str(v) for v in valid], n=1) if isinstance(word, str) else []
    return f"; did you mean {prefix}{match[0]}?" if match else ""
