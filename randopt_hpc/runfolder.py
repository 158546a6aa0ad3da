"""The run folder (output.dir): its layout, its state, its shards. run, status, progress and launch all
go through `RunFolder`; nothing else knows the file names.

  run.yaml                  the resolved config of the run living here (a rerun must match it)
  shards/rank-NNNNN.jsonl   records (randopt_hpc.records), one JSON line each, appended and fsynced by one
                            rank each; a folder may hold the shards of several launches with other rank counts
  results.h5                written by rank 0 to a temporary name, then renamed (randopt_hpc.results)

A sweep's root folder (randopt_hpc.launch) holds launch.yaml, listing each point's job and run folder.

Shards are JSON lines rather than HDF5 on purpose: a rank killed mid-append can at worst tear its last
line, which the reader drops and the next writer cuts off; an HDF5 file killed during a metadata write
can be unreadable.
"""
from __future__ import annotations

import glob
import os
import shutil

from randopt_hpc import records
from randopt_hpc.config import ConfigError, from_dict, result_fingerprint, to_yaml

RUN_YAML = "run.yaml"
LAUNCH_YAML = "launch.yaml"   # in a sweep's root folder: its points (randopt_hpc.launch), not a run folder
RESULTS = "results.h5"
SHARDS = "shards"

FRESH, RESUME, FINISHED = "fresh", "resume", "finished"


class ShardWriter:
    """One rank's append-only record log."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _drop_torn_tail(path)
        self._f = open(path, "a", encoding="utf-8")

    def append(self, record: records.Record) -> None:
        self._f.write(records.to_json(record) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _drop_torn_tail(path: str) -> None:
    """Cut a partial last line left by a killed writer, so the next append starts on a clean line."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def read_shard(path: str) -> list[records.Record]:
    """The complete records of one shard, up to a torn or corrupt line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                out.append(records.from_json(line))
            except ValueError:
                break
    return out


class RunFolder:
    def __init__(self, path: str):
        self.path = path
        self.run_yaml = os.path.join(path, RUN_YAML)
        self.results = os.path.join(path, RESULTS)
        self.shards_dir = os.path.join(path, SHARDS)
        self._counted: dict[str, tuple[int, set]] = {}   # count_done's progress per shard: (offset, indices)

    def __repr__(self) -> str:
        return f"RunFolder({self.path!r})"

    # ------------------------------------------------------------------ state
    @property
    def started(self) -> bool:
        return os.path.exists(self.run_yaml)

    @property
    def finished(self) -> bool:
        return os.path.exists(self.results)

    def read_config(self) -> dict:
        """run.yaml as a plain mapping."""
        import yaml

        with open(self.run_yaml, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        if not isinstance(data, dict):
            raise ValueError(f"{self.run_yaml}: expected a mapping, got {type(data).__name__}")
        return data

    def population_size(self) -> int:
        return int(self.read_config()["population"]["size"])

    def state(self, cfg) -> str:
        """FRESH, RESUME or FINISHED for a run of cfg here (cfg.output.overwrite: always FRESH); a folder
        holding another config's run, or results of an unknown one, is a ConfigError."""
        if cfg.output.overwrite or not os.path.isdir(self.path):
            return FRESH
        if not self.started:
            if self.finished or os.path.isdir(self.shards_dir):
                raise ConfigError(f"output.dir: {self.path} holds results of an unknown config; "
                                  "choose another output.dir or set output.overwrite=true")
            return FRESH
        old = result_fingerprint(from_dict(self.read_config()))
        new = result_fingerprint(cfg)
        diff = [k for k in new if old.get(k) != new[k]]
        if diff:
            k = diff[0]
            raise ConfigError(f"output.dir: {self.path} holds a run with another config ({k}: {old.get(k)!r} "
                              f"there, {new[k]!r} here); choose another output.dir or set output.overwrite=true")
        return FINISHED if self.finished else RESUME

    # ------------------------------------------------------------------ changes
    def clear(self) -> None:
        shutil.rmtree(self.shards_dir, ignore_errors=True)
        for path in (self.results, self.run_yaml):
            if os.path.exists(path):
                os.remove(path)

    def prepare(self, cfg, restart_count: int = 0, log=None) -> None:
        """Rank 0, before the others look: start afresh if asked (never in a requeued job resuming its own
        run), and record the config."""
        if cfg.output.overwrite and restart_count:
            if log:
                log.warning("output.overwrite ignored: this is a requeued Slurm job (restart %d) resuming its "
                            "own run", restart_count)
        elif cfg.output.overwrite:
            self.clear()
        os.makedirs(self.path, exist_ok=True)
        if not self.started:
            with open(self.run_yaml, "w", encoding="utf-8") as f:
                f.write(to_yaml(cfg))

    def writer(self, rank: int) -> ShardWriter:
        return ShardWriter(self.shard_path(rank))

    def write_results(self, tree: dict, attrs: dict) -> str:
        from randopt_hpc.results import write_results

        return write_results(self.results, tree, attrs)

    # ------------------------------------------------------------------ shards
    def shard_path(self, rank: int) -> str:
        return os.path.join(self.shards_dir, f"rank-{rank:05d}.jsonl")

    def shard_files(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.shards_dir, "rank-*.jsonl")))

    @staticmethod
    def shard_rank(path: str) -> int:
        return int(os.path.basename(path)[len("rank-"):-len(".jsonl")])

    def records(self) -> list[records.Record]:
        """Every complete record of every shard (any past rank count)."""
        return [r for path in self.shard_files() for r in read_shard(path)]

    def done(self) -> records.Done:
        return records.Done.of(self.records())

    def count_done(self) -> int:
        """Distinct finished candidates. Incremental: each call reads only what the shards gained since
        the last (rank 0's progress line calls it every few seconds while the shards grow)."""
        indices: set[int] = set()
        for path in self.shard_files():
            offset, seen = self._counted.get(path, (0, set()))
            with open(path, "rb") as f:
                f.seek(offset)
                for line in f:
                    if not line.endswith(b"\n"):
                        break
                    try:
                        r = records.from_json(line.decode("utf-8"))
                    except (ValueError, UnicodeDecodeError):
                        break
                    offset += len(line)
                    if r.kind == "candidate":
                        seen.add(r.index)
            self._counted[path] = (offset, seen)
            indices |= seen
        return len(indices)
