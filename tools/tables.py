"""Tables for people (aligned text, markdown) and for programs (CSV, JSON-safe values)."""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def cell(v: Any, digits: int = 3) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(v) else f"{float(v):.{digits}f}"
    return str(v)


def text(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """Columns aligned: text left, numbers right."""
    body = [[cell(v, digits) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(r[i], (int, float, np.number)) and not isinstance(r[i], bool)
                   for r in rows if r[i] is not None) for i in range(len(headers))]

    def line(vals):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric)).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in body])


def markdown(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    body = [[cell(v, digits).replace("|", "\\|") for v in r] for r in rows]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in body])


def csv_text(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(headers)
    w.writerows([[("" if v is None else repr(float(v)) if isinstance(v, (float, np.floating)) else cell(v)) for v in r]
                 for r in rows])
    return buf.getvalue().rstrip("\n")


def jsonable(v: Any) -> Any:
    """numpy scalars/arrays -> Python; NaN/inf -> None, since JSON has no NaN."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(v) else float(v)
    return v
