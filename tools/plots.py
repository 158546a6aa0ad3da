"""The PNGs of `analyze plot`: five of one run, or the sweeps and overlays of several (nscale.png, sigma.png,
kcurves.png). Imported only by that command, so the rest runs without matplotlib."""
from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")      # files only; never a display, also on login nodes without X
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
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


# ------------------------------------------------------------------ several runs: sweeps and overlays

MARKERS = ("o", "s", "^", "D", "v", "P")
BAND = {"range": "band: min–max over seeds", "ci": "band: 95% t-interval over seeds"}


def _band(st: dict, band: str) -> tuple[float, float, float]:
    """(mean, lower, upper) of one seed_stats; one seed: no band."""
    lo, hi = (st["min"], st["max"]) if band == "range" else (st["low"], st["high"])
    return st["mean"], st["mean"] if lo is None else lo, st["mean"] if hi is None else hi


def _accuracy_limits(ax) -> None:
    """No axis beyond 0 and 1: a t-interval of two or three seeds can reach past them, an accuracy cannot."""
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, -0.02), min(hi, 1.02))


def _legend_outside(ax) -> None:
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, handlelength=3)


def sweep_figure(d: dict, s: dict, name: str, what: str, out_dir: str, dpi: int) -> str:
    """Test accuracy along one config key: per K the top-K vote (solid) and the random control-K vote (dashed),
    the best single candidate and the base; the mean over seeds with a band, each seed a dot."""
    size = s["x"] == "population.size"
    cats = s["values"]

    def xpos(grp):
        return float(grp["config"][s["x"]]) if size else float(cats.index(grp["config"][s["x"]]))

    ks = sorted({r["k"] for grps in s["families"].values() for grp in grps for r in grp["rows"]
                 if r["kind"] == "selected"})
    cmap = plt.get_cmap("viridis")
    colour = {k: cmap(0.1 + 0.75 * i / max(len(ks) - 1, 1)) for i, k in enumerate(ks)}
    series = [*((kind, k, colour[k], ls, label.format(k=k)) for k in ks for kind, ls, label in
                (("selected", "-", "top-{k} vote"), ("control", "--", "random control-{k} vote"))),
              ("best", None, "black", "-.", "best single"), ("base", None, "tab:red", ":", "base (greedy)")]
    fig, ax = plt.subplots(figsize=(9, 5))
    handles: dict[str, object] = {}
    for f_i, grps in enumerate(s["families"].values()):
        marker = MARKERS[f_i % len(MARKERS)]
        for kind, k, c, ls, label in series:
            pts = [(xpos(grp), r) for grp in grps for r in grp["rows"] if r["kind"] == kind and r["k"] == k and r["n"]]
            if not pts:
                continue
            xs = [x for x, _ in pts]
            mean, lo, hi = zip(*(_band(r, d["band"]) for _, r in pts))
            [line] = ax.plot(xs, mean, ls, marker=marker, ms=4, color=c, lw=1.5 if kind != "base" else 1.2)
            handles.setdefault(label, line)
            if any(h > lo_ for lo_, h in zip(lo, hi)):
                ax.fill_between(xs, lo, hi, color=c, alpha=0.12, lw=0)
            for x, r in pts:
                vals = [v for v in r["values"] if v is not None]
                if len(vals) > 1:
                    ax.plot([x] * len(vals), vals, marker, ms=2.5, color=c, alpha=0.5, ls="none")
    if size:
        ax.set_xscale("log", base=2)
        ax.set_xticks([float(v) for v in cats], [str(v) for v in cats])
        ax.minorticks_off()
        ax.set_xlabel(f"N = population.size (log2 axis)   ({BAND[d['band']]}; dots: each seed)")
    else:
        ax.set_xticks(range(len(cats)), [", ".join(f"{float(v):g}" for v in json.loads(c)) for c in cats])
        ax.set_xlim(-0.4, len(cats) - 0.6)
        ax.set_xlabel(f"σ values of the population   ({BAND[d['band']]}; dots: each seed)")
    ax.set_ylabel("test accuracy (mean over population seeds)")
    _accuracy_limits(ax)
    if s["along"]:
        what += f"\n(varying with it: {', '.join(s['along'])})"
    ax.set_title(f"{what}\n{d['title']}", fontsize=9)
    series_legend = ax.legend(list(handles.values()), list(handles), fontsize=7, loc="upper left", handlelength=3,
                              bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if len(s["families"]) > 1:      # colour and line say what is plotted, the marker which runs
        ax.add_artist(series_legend)
        ax.legend([Line2D([], [], marker=MARKERS[i % len(MARKERS)], color="grey", ls="none")
                   for i in range(len(s["families"]))], list(s["families"]), fontsize=7, loc="lower left",
                  bbox_to_anchor=(1.01, 0.0), borderaxespad=0, title="marker: runs with", title_fontsize=7)
    return _save(fig, out_dir, name, dpi)


def kcurves(d: dict, out_dir: str, dpi: int) -> str:
    """Each group's K-curve overlaid: selected vote (solid, with its band over seeds) and random control vote
    (dashed) against k, the mean over the group's seeds; base dotted grey."""
    fig, ax = plt.subplots(figsize=(9, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bases = set()
    for i, grp in enumerate(d["kcurves"]):
        c = colours[i % len(colours)]
        for which, ls, what in (("selected", "-", "top-k vote"), ("control", "--", "random control, first k")):
            curve = grp[which]
            if curve is None:
                continue
            mean, lo, hi = zip(*(_band(st, d["band"]) for st in curve["stats"]))
            ax.plot(curve["k"], mean, ls, color=c, lw=1.5, label=f"{grp['label']}: {what}")
            if which == "selected" and any(h > lo_ for lo_, h in zip(lo, hi)):     # one band a line, or a blur
                ax.fill_between(curve["k"], lo, hi, color=c, alpha=0.12, lw=0)
        bases.add(round(grp["base"], 9))
    for b in sorted(bases):
        ax.axhline(b, color="grey", lw=1, ls=":", label=f"base (greedy) {b:.3f}")
    ax.set_xlabel(f"k (first k members in vote order)   ({BAND[d['band']]} of the top-k vote)")
    ax.set_ylabel("test accuracy")
    _accuracy_limits(ax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.set_title(f"Vote accuracy vs k, each run or group of seeds\n{d['title']}", fontsize=9)
    _legend_outside(ax)
    return _save(fig, out_dir, "kcurves.png", dpi)


def write_sweeps(d: dict, out_dir: str, dpi: int = 100) -> list[str]:
    """nscale.png when the runs differ in N, sigma.png when in σ, kcurves.png always."""
    paths = []
    if d["nscale"] is not None:
        paths.append(sweep_figure(d, d["nscale"], "nscale.png", "Test accuracy vs population size N", out_dir, dpi))
    if d["sigma"] is not None:
        paths.append(sweep_figure(d, d["sigma"], "sigma.png", "Test accuracy vs σ", out_dir, dpi))
    return paths + [kcurves(d, out_dir, dpi)]
