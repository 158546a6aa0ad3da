"""The four PNGs of `analyze plot`. Imported only by that command, so the rest runs without matplotlib."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")      # files only; never a display, also on login nodes without X
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

SIZE = (6, 4)
SEL, CTRL, BASE = "tab:blue", "tab:orange", "tab:red"


def _save(fig, out_dir: str, name: str, dpi: int) -> str:
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def histogram(d: dict, out_dir: str, dpi: int) -> str:
    s = np.asarray(d["scores"])
    fig, ax = plt.subplots(figsize=SIZE)
    # One bin per distinct score step when scores are coarse (means of a few reward levels), else 30.
    uniq = np.unique(np.round(s, 9))
    step = np.min(np.diff(uniq)) if len(uniq) > 1 else 1.0
    bins = (np.arange(uniq[0] - step / 2, uniq[-1] + step, step) if len(uniq) > 1 and (uniq[-1] - uniq[0]) / step <= 60
            else 30)
    ax.hist(s, bins=bins, color=SEL, alpha=0.8, edgecolor="white")
    ax.axvline(d["base"], color=BASE, lw=2, ls="--", label=f"base {d['base']:.3f}")
    ax.set_xlabel("train score (mean train reward)")
    ax.set_ylabel("candidates")
    ax.set_title(f"Train scores\n{d['title']}", fontsize=10)
    ax.legend()
    return _save(fig, out_dir, "train_scores.png", dpi)


def kcurve(d: dict, out_dir: str, dpi: int) -> str:
    kc = d["kcurve"]
    fig, ax = plt.subplots(figsize=SIZE)
    for g, colour in (("selected", SEL), ("control", CTRL)):
        if g in kc:
            k = kc[g]["k"]
            ax.plot(k, kc[g]["accuracy"], "-o", ms=3, color=colour, label=f"{g}: vote accuracy")
            ax.plot(k, kc[g]["coverage"], ":", color=colour, label=f"{g}: coverage (any of first k right)")
    ax.axhline(kc["base_test_acc"], color=BASE, lw=1.5, ls="--", label=f"base {kc['base_test_acc']:.3f}")
    ax.set_xlabel("k (first k members in vote order)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.set_title(f"Vote accuracy and coverage vs k\n{d['title']}", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, out_dir, "kcurve.png", dpi)


def sigma_boxes(d: dict, out_dir: str, dpi: int) -> str:
    s, sig = np.asarray(d["scores"]), np.asarray(d["sigmas"])
    levels = np.unique(sig)
    fig, ax = plt.subplots(figsize=SIZE)
    ax.boxplot([s[sig == v] for v in levels], showmeans=True,
               meanprops={"marker": "^", "markerfacecolor": "tab:green", "markeredgecolor": "tab:green"},
               medianprops={"color": "tab:orange"})
    ax.plot([], [], "^", color="tab:green", label="mean")
    ax.plot([], [], "-", color="tab:orange", label="median")
    lo, hi = s.min(), s.max()
    ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.3 * (hi - lo + 1e-9))     # headroom for the legend
    ax.set_xticks(range(1, len(levels) + 1), [f"{v:g}\n(n={int(np.sum(sig == v))})" for v in levels])
    ax.axhline(d["base"], color=BASE, lw=1.5, ls="--", label=f"base {d['base']:.3f}")
    ax.set_xlabel("σ   (box: quartiles; whiskers: 1.5 IQR; circles: outliers)")
    ax.set_ylabel("train score")
    ax.set_title(f"Train score by σ\n{d['title']}", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    return _save(fig, out_dir, "sigma.png", dpi)


def density(d: dict, out_dir: str, dpi: int) -> str:
    dd = d["density"]
    fig, ax = plt.subplots(figsize=SIZE)
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for row in dd["rows"]:
        cells = row["cells"]
        m = np.array([c["margin"] for c in cells])
        colour = "black" if row["sigma"] == "all" else next(colours)
        # "pre": δ(m) counts a candidate up to and including its own margin, then drops.
        ax.fill_between(m, [c["low"] for c in cells], [c["high"] for c in cells], step="pre", color=colour,
                        alpha=0.12 if row["sigma"] == "all" else 0.2, lw=0)
        label = "all σ" if row["sigma"] == "all" else f"σ = {row['sigma']:g}"
        ax.step(m, [c["density"] for c in cells], where="pre", color=colour, label=f"{label} (n={row['n']})")
    ax.axvline(0, color=BASE, lw=1.5, ls="--", label="m = 0 (as good as the base)")
    ax.set_xlabel(f"margin m over the base {dd['split']} accuracy ({dd['base_accuracy']:.3f})   "
                  "(bands: 95% Wilson)")
    ax.set_ylabel("δ(m) = share with accuracy ≥ base + m")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Solution density\n{d['title']}", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "density.png", dpi)


def passk(d: dict, out_dir: str, dpi: int) -> str | None:
    """The limit-of-RLVR figure for RandOpt: does the selected ensemble reach items the base model's own samples
    do not? Base pass@k (each file's temperature) and TT-MV against each ensemble's coverage and vote, log k."""
    p = d["passk"]
    if "samples" not in p:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for other, style in zip([p] + list(d.get("passk_more", [])), ("-", "--", "-.", ":")):
        if "samples" in other:
            smp = other["samples"]
            ax.plot(smp["k"], smp["pass_at_k"], style, color=BASE, label=f"base pass@k, T={smp['temperature']}")
            ax.plot(smp["tt_mv_k"], smp["tt_mv"], style, color="tab:purple", lw=1,
                    label=f"base TT-MV@k, T={smp['temperature']}")
    for g, colour in (("selected", SEL), ("control", CTRL), ("control_sigma", "tab:green")):
        if g in p:
            ax.plot(p[g]["k"], p[g]["coverage"], ":", color=colour, label=f"{g}: coverage")
            ax.plot(p[g]["k"], p[g]["vote"], "-o", ms=2, color=colour, label=f"{g}: vote")
    ax.axhline(p["base_test_acc"], color="grey", lw=1, ls="--", label=f"base greedy {p['base_test_acc']:.3f}")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_xlabel("k (samples of the base model; first k members of an ensemble)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.0)
    ax.set_title(f"pass@k of the base vs coverage and vote of the ensembles\n{d['title']}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    return _save(fig, out_dir, "passk.png", dpi)


def write_all(d: dict, out_dir: str, dpi: int = 100) -> list[str]:
    paths = [fn(d, out_dir, dpi) for fn in (histogram, kcurve, sigma_boxes, density, passk)]
    return [p for p in paths if p is not None]
