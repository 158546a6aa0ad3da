"""Per-rank phase timers, and rank 0's progress line (done/N, rate, ETA) read from the run folder's shards."""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager

BUSY_PHASES = ("perturb", "generate", "score", "restore")


class Timer:
    def __init__(self):
        self.start = time.perf_counter()
        self._s: dict[str, float] = defaultdict(float)
        self._n: dict[str, int] = defaultdict(int)

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._s[phase] += time.perf_counter() - t0

    def count(self, what: str, k: int = 1) -> None:
        self._n[what] += k

    def totals(self) -> dict:
        out = {p: self._s.get(p, 0.0) for p in ("load", "wait", *BUSY_PHASES)}
        out["busy"] = sum(out[p] for p in BUSY_PHASES)
        out["wall"] = time.perf_counter() - self.start
        out["candidates"] = self._n.get("candidates", 0)
        return out


def eta_line(done: int, total: int, start_done: int, elapsed: float) -> str:
    rate = (done - start_done) / elapsed if elapsed > 0 else 0.0
    eta = f"{(total - done) / rate:.0f} s" if rate > 0 else "?"
    return f"candidates {done}/{total} ({100.0 * done / total:.0f}%), {rate:.2f}/s, ETA {eta}"


class Progress:
    """A daemon thread on rank 0: every few seconds, count finished candidates across all shards of the
    run folder (randopt_hpc.runfolder.RunFolder)."""

    def __init__(self, folder, total: int, start_done: int, every_s: float, log):
        self.folder, self.total, self.start_done, self.every_s, self.log = folder, total, start_done, every_s, log
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _report(self) -> None:
        self.log.info(eta_line(self.folder.count_done(), self.total, self.start_done, time.perf_counter() - self.t0))

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._report()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._report()
