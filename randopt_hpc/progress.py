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
        out = {p: self._s.get(p, 0.0) for p in ("load", "wait", "population", "test", *BUSY_PHASES)}
        out["busy"] = sum(out[p] for p in BUSY_PHASES)
        out["wall"] = time.perf_counter() - self.start
        out["candidates"] = self._n.get("candidates", 0)
        return out


def rate_eta(done: int, total: int, start_done: int, elapsed: float) -> str:
    rate = (done - start_done) / elapsed if elapsed > 0 else 0.0
    eta = "0 s" if done >= total else (f"{(total - done) / rate:.0f} s" if rate > 0 else "?")
    return f"{done}/{total} ({100.0 * done / total:.0f}%), {rate:.2f}/s, ETA {eta}"


class Progress:
    """A daemon thread on rank 0: every few seconds, one line on the phase in hand, counted from the records
    every rank appends to the run folder's shards (randopt_hpc.runfolder.RunFolder.count), so it sees the
    other ranks' work without any message between ranks."""

    def __init__(self, folder, every_s: float, log):
        self.folder, self.every_s, self.log = folder, every_s, log
        self._lock = threading.Lock()
        self._phase: tuple | None = None    # (name, unit, {kind: keys}, ids, total, done at start, start time)
        self._last = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def phase(self, name: str, unit: str, wanted: dict, ids=None) -> None:
        """Close the phase in hand with its last line and start counting `wanted` ({kind: keys}) records (with
        `ids`: those answering all these examples)."""
        with self._lock:
            if self._phase:
                self._report()
            total = sum(len(keys) for keys in wanted.values())
            self._phase = (name, unit, wanted, ids, total, self._count(wanted, ids)[0], time.perf_counter()) \
                if total else None
            if self._phase:
                self._report()

    def _count(self, wanted: dict, ids) -> tuple[int, tuple | None]:
        done, best = 0, None
        for kind, keys in wanted.items():
            n, b = self.folder.count(kind, keys, ids)
            done, best = done + n, b or best
        return done, best

    def _report(self) -> None:
        name, unit, wanted, ids, total, start_done, t0 = self._phase
        done, best = self._count(wanted, ids)
        line = f"{name}: {unit} {rate_eta(done, total, start_done, time.perf_counter() - t0)}"
        if best:
            line += f", best train score so far {best[0]:.4f} (candidate {best[1]})"
        if line != self._last:   # a phase with nothing left to do opens and closes with one line
            self.log.info(line)
        self._last = line

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            with self._lock:
                if self._phase:
                    self._report()

    def end_phase(self) -> None:
        """The phase in hand's last line; nothing is counted until the next phase."""
        self.phase("", "", {})

    def stop(self) -> None:
        self.end_phase()
        self._stop.set()
        self._thread.join()
