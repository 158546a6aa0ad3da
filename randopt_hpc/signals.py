"""The 1-D signals of the paper's toy (§3; sunrainyg/RandOpt simple_1D_signals_expts/datasets.py): curve
families with random parameters, and windows of a curve sampled on a grid, `ctx` values of context then
`fut` values to predict. Pure numpy.

A family draws each parameter uniformly from its range; a fixed family (one_line, one_sinusoid,
one_squarewave) has ranges of zero width, so every row is the same curve, as in the reference, where its
selection and test sets are therefore one curve. A mixture draws a family per row, uniformly.

Each row is a pure function of (stream, seed, row index): row i draws from its own generator
np.random.default_rng([stream, seed, i]), so n rows are a prefix of n + 1, and the task's rows (stream 0) are
never the pretraining rows (stream 1) whatever the two seeds.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FREQ = 4.0          # the reference's angular frequency of every periodic family
X0 = -2.5           # every window starts here, as in the reference (its random start is commented out)
RES_X = 0.1         # grid step
TASK_STREAM, PRETRAIN_STREAM = 0, 1
TWO_PI = 2.0 * np.pi


@dataclass(frozen=True)
class Family:
    name: str
    ranges: dict[str, tuple[float, float]]            # parameter -> (lo, hi); lo == hi: fixed
    fn: Callable[[dict, np.ndarray], np.ndarray]      # (parameters, x) -> y, broadcasting

    @property
    def fixed(self) -> bool:
        return all(lo == hi for lo, hi in self.ranges.values())


def _line(p, x):
    return p["slope"] * x + p["intercept"]


def _sigmoid(p, x):
    return p["amp"] * np.tanh(0.1 * x + p["phase"]) + p["y_offset"]


def _sinusoid(p, x):
    return p["amp"] * np.sin(FREQ * x + p["phase"]) + p["y_offset"]


def _harmonic(p, x):
    return p["amp"] * (0.5 * np.sin(FREQ * x + p["phase"]) + 0.3 * np.sin(2 * FREQ * x)) + p["y_offset"]


def _squarewave(p, x):
    return p["amp"] * np.tanh(p["sharpness"] * np.sin(FREQ * x + p["phase"])) + p["y_offset"]


def _sawtooth(p, x):
    t = FREQ * x + p["phase"]
    saw = np.sin(t) - 0.5 * np.sin(2 * t) + 0.33 * np.sin(3 * t) - 0.25 * np.sin(4 * t)
    return p["amp"] * saw * 0.5 + p["y_offset"]


def _fixed(**values) -> dict[str, tuple[float, float]]:
    return {k: (float(v), float(v)) for k, v in values.items()}


_WAVE = {"phase": (0.0, TWO_PI), "amp": (0.8, 1.2), "y_offset": (-0.5, 0.5)}
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("line", {"slope": (-0.5, 0.5), "intercept": (-1.0, 1.0)}, _line),
    Family("sigmoid", {"phase": (-np.pi, np.pi), "amp": (0.5, 1.5), "y_offset": (-0.5, 0.5)}, _sigmoid),
    Family("harmonic", dict(_WAVE), _harmonic),
    Family("sinusoid", dict(_WAVE), _sinusoid),
    Family("squarewave", {"phase": (0.0, TWO_PI), "amp": (0.2, 0.4), "y_offset": (-0.5, 0.5),
                          "sharpness": (4.0, 6.0)}, _squarewave),
    Family("sawtooth", dict(_WAVE), _sawtooth),
    Family("one_line", _fixed(slope=-0.25, intercept=0.0), _line),
    Family("one_sinusoid", _fixed(phase=0.0, amp=0.5, y_offset=0.0), _sinusoid),
    Family("one_squarewave", _fixed(phase=0.0, amp=0.3, y_offset=0.0, sharpness=5.0), _squarewave),
)}

# Mixture -> its families' names, drawn uniformly per row (the reference's pretraining mixtures; the mixed_no_*
# ones hold one family out, for transfer).
MIXTURES: dict[str, tuple[str, ...]] = {
    "mixed": ("sinusoid", "squarewave", "sawtooth", "harmonic", "sigmoid", "line"),
    "sinusoid_and_squarewave": ("sinusoid", "squarewave"),
    "mixed_no_sinusoid": ("squarewave", "sawtooth", "harmonic", "sigmoid"),
    "mixed_no_squarewave": ("sinusoid", "sawtooth", "harmonic", "sigmoid"),
    "mixed_no_sawtooth": ("sinusoid", "squarewave", "harmonic", "sigmoid"),
    "mixed_no_harmonic": ("sigmoid", "sinusoid", "squarewave", "sawtooth"),
    "mixed_no_sigmoid": ("harmonic", "sinusoid", "squarewave", "sawtooth"),
}
NAMES = tuple(FAMILIES) + tuple(MIXTURES)


def check_name(name) -> str:
    """`name` when it is a family or a mixture; ValueError listing the valid ones."""
    if not isinstance(name, str) or name not in FAMILIES and name not in MIXTURES:
        raise ValueError(f"unknown signal {name!r}; valid: {', '.join(NAMES)}")
    return name


def _family(name) -> Family:
    if not isinstance(name, str) or name not in FAMILIES:
        raise ValueError(f"unknown signal family {name!r}; valid: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def curve_params(name: str, rng: np.random.Generator) -> dict[str, float]:
    """A curve of family `name`: each parameter uniform in its range, in the family's order (fixed ones are
    not drawn, so a fixed family uses no randomness)."""
    fam = _family(name)
    if fam.fixed:
        return {k: lo for k, (lo, _) in fam.ranges.items()}
    lo, hi = (np.array(v) for v in zip(*fam.ranges.values()))
    u = rng.random(len(lo))
    return {k: float(v) for k, v in zip(fam.ranges, lo + (hi - lo) * u)}


def curve(name: str, params: dict, x) -> np.ndarray:
    """Family `name` with `params` at x (float64; parameters may be arrays that broadcast against x)."""
    return np.asarray(_family(name).fn(params, np.asarray(x, dtype=np.float64)), dtype=np.float64)


def draw(name: str, n: int, seed: int, *, start: int = 0, stream: int = TASK_STREAM) -> list[tuple[str, dict]]:
    """(family, parameters) of rows start..start+n-1 of signal `name` (a family or a mixture)."""
    check_name(name)
    _check_count("n", n)
    _check_count("start", start)
    _check_count("seed", seed)
    out = []
    for i in range(start, start + n):
        rng = np.random.default_rng([stream, seed, i])
        fam = name if name in FAMILIES else MIXTURES[name][int(rng.integers(len(MIXTURES[name])))]
        out.append((fam, curve_params(fam, rng)))
    return out


def grid(ctx: int, fut: int, res_x: float = RES_X) -> np.ndarray:
    """The x of a window: X0 + j·res_x for j in 0..ctx+fut-1."""
    return X0 + np.arange(ctx + fut, dtype=np.float64) * res_x


def evaluate(rows: list[tuple[str, dict]], ctx: int, fut: int, res_x: float = RES_X
             ) -> tuple[np.ndarray, np.ndarray]:
    """The windows of drawn rows: (context [n, ctx], future [n, fut]), float64."""
    _check_count("ctx", ctx, 1)
    _check_count("fut", fut, 1)
    if not (isinstance(res_x, (int, float)) and np.isfinite(res_x) and res_x > 0):
        raise ValueError(f"res_x must be a positive finite number, got {res_x!r}")
    x = grid(ctx, fut, res_x)
    y = np.empty((len(rows), ctx + fut), dtype=np.float64)
    # One vectorised evaluation per family: pretraining draws hundreds of thousands of rows.
    for fam in dict.fromkeys(f for f, _ in rows):
        idx = [i for i, (f, _) in enumerate(rows) if f == fam]
        params = {k: np.array([rows[i][1][k] for i in idx])[:, None] for k in FAMILIES[fam].ranges}
        y[idx] = curve(fam, params, x[None, :])
    return y[:, :ctx], y[:, ctx:]


def windows(name: str, n: int, seed: int, ctx: int, fut: int, res_x: float = RES_X, *, start: int = 0,
            stream: int = TASK_STREAM) -> tuple[np.ndarray, np.ndarray]:
    """n windows of signal `name`: (context [n, ctx], future [n, fut]) float64, row i drawn from
    default_rng([stream, seed, start + i]) alone."""
    return evaluate(draw(name, n, seed, start=start, stream=stream), ctx, fut, res_x)


def _check_count(what: str, v, lo: int = 0) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{what} must be an integer >= {lo}, got {v!r}")
