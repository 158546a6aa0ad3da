"""Reading text that may be hostile (config files, overrides, run.yaml, task data): bounded in size,
UTF-8, YAML without aliases; whatever cannot be read is a one-line ConfigError naming what it is."""
from __future__ import annotations

import os
import re
from typing import Any

import yaml

from randopt_hpc.config import ConfigError

MAX_CONFIG_BYTES = 1 << 20


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases: `*name` expands a node by reference, and a few hundred bytes of nested aliases
    expand to billions of nodes before any key could be checked. Configs have no use for them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def read_yaml(text: str, what: str):
    """YAML text -> plain data, or a one-line ConfigError naming `what` (size, aliases, nesting, numbers)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what}: {len(text):,} characters of YAML; at most {MAX_CONFIG_BYTES:,} are read")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)   # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None) or str(e)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{what}: not valid YAML{where}: {' '.join(str(problem).split())[:160]}") from None
    except RecursionError:
        raise ConfigError(f"{what}: YAML nested too deeply") from None
    except ValueError as e:   # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{what}: {' '.join(str(e).split())[:160]}") from None


def read_text(path: str, what: str, max_bytes: int) -> str:
    """A UTF-8 text file of at most max_bytes; what cannot be read is a one-line ConfigError naming `what`
    and the path."""
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise ConfigError(f"{what}: {path} is {size:,} bytes; at most {max_bytes:,} are read")
        with open(path, "rb") as f:
            return f.read().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: {path} is not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {path}: {e.strerror or e}") from None


def read_yaml_file(path: str, what: str):
    """A YAML file -> plain data, or a one-line ConfigError naming `what` and the path."""
    return read_yaml(read_text(path, what, MAX_CONFIG_BYTES), f"{what}: {path}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (['a', 'b'], typed value); the value is read as YAML (1e-3, [1, 2], true, null)."""
    if "=" not in text:
        raise ConfigError(f"{text}: an override must look like key=value (for example population.size=64)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise ConfigError(f"{key or '(empty)'}: not a dotted config key")
    value = read_yaml(raw, key) if raw.strip() else ""
    return key.split("."), floats_in(value)


# YAML 1.1 reads `1e-3` as a string; numbers in scientific notation are what users type for sigma.
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def floats_in(value: Any) -> Any:
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [floats_in(v) for v in value]
    if isinstance(value, dict):
        return {k: floats_in(v) for k, v in value.items()}
    return value
