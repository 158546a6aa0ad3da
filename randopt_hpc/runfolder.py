"""The run folder (output.dir): its layout, its state, its shards. run, status, progress and launch all
go through `RunFolder`; nothing else knows the file names.

  run.yaml                  the resolved config of the run living here (a rerun must match it)
  shards/rank-NNNNN.jsonl   records (randopt_hpc.records), one JSON line each, appended and fsynced by one
                            rank each; a folder may hold the shards of several launches with other rank counts
  results.h5                written by rank 0 to a temporary name, then renamed (randopt_hpc.results)
  test-jobs.json            what answers after the ranking (written by rank 0 once it is known), so that the
                            status command can count that phase too

A sweep's root folder (randopt_hpc.launch) holds launch.yaml, listing each point's job and run folder.

Shards are JSON lines rather than HDF5 on purpose: a rank killed mid-append can at worst tear its last
line, which the reader drops and the next writer cuts off; an HDF5 file killed during a metadata write
can be unreadable.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from dataclasses import dataclass, field

from randopt_hpc import atomic, records
from randopt_hpc.config import ConfigError, from_dict, to_yaml
from randopt_hpc.fingerprint import changes, growth_refusal
from randopt_hpc.lock import RunLock
from randopt_hpc.textio import read_yaml_file

RUN_YAML = "run.yaml"
LAUNCH_YAML = "launch.yaml"   # in a sweep's root folder: its points (randopt_hpc.launch), not a run folder
RESULTS = "results.h5"
SHARDS = "shards"
TEST_JOBS = "test-jobs.json"

FRESH, RESUME, FINISHED = "fresh", "resume", "finished"


class ShardWriter:
    """One rank's append-only record log."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _drop_torn_tail(path)
        self._f = open(path, "ab")

    def append(self, record: records.Record) -> None:
        line = (records.to_json(record) + "\n").encode("utf-8")
        half = len(line) // 2
        self._f.write(line[:half])
        self._f.flush()
        atomic.reach("write:shard")
        self._f.write(line[half:])
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _drop_torn_tail(path: str, chunk: int = 1 << 16) -> None:
    """Cut a partial last line left by a killed writer, so the next append starts on a clean line."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            block = f.read(pos - start)
            if pos == end and block.endswith(b"\n"):
                return
            nl = block.rfind(b"\n")
            if nl >= 0:
                f.truncate(start + nl + 1)
                return
            pos = start
        f.truncate(0)


@dataclass
class Scan:
    """What one shard holds: its whole records, and the lines it could not use (line number, why)."""
    records: list = field(default_factory=list)
    damaged: list = field(default_factory=list)


def scan_shard(path: str) -> Scan:
    """Every whole record of a shard. A damaged line (not UTF-8, not JSON, not a record) is skipped and
    reported, wherever it is: the records after it count, and what it held is recomputed. An unterminated
    last line is a write cut short; it is reported too, and the next writer cuts it off."""
    scan = Scan()
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                scan.damaged.append((number, "unterminated last line (a write cut short)"))
                break
            try:
                scan.records.append(records.from_json(raw.decode("utf-8")))
            except UnicodeDecodeError:
                scan.damaged.append((number, "not UTF-8"))
            except ValueError as e:
                scan.damaged.append((number, str(e).splitlines()[0][:80] if str(e) else "not a record"))
    return scan


def read_shard(path: str) -> list[records.Record]:
    return scan_shard(path).records


class RunFolder:
    def __init__(self, path: str):
        self.path = path
        self.run_yaml = os.path.join(path, RUN_YAML)
        self.results = os.path.join(path, RESULTS)
        self.test_jobs_file = os.path.join(path, TEST_JOBS)
        self.shards_dir = os.path.join(path, SHARDS)
        self.lock = RunLock(path)
        self._counted: dict[str, tuple[int, dict]] = {}   # count()'s progress per shard: (offset, what it saw)
        self._scores: dict[int, float] = {}   # each candidate's first record's score, for the progress line

    def __repr__(self) -> str:
        return f"RunFolder({self.path!r})"

    # ------------------------------------------------------------------ state
    @property
    def started(self) -> bool:
        return os.path.exists(self.run_yaml)

    def read_config(self) -> dict:
        """run.yaml as a plain mapping; a damaged one is a one-line ConfigError."""
        data = read_yaml_file(self.run_yaml, f"output.dir: {RUN_YAML}")
        if not isinstance(data, dict):
            raise ConfigError(f"output.dir: {self.run_yaml} is damaged (holds no config mapping); if the shards "
                              "belong to this config remove it to resume, else choose another output.dir")
        return data

    def config(self):
        """The config of the run living here, validated (paths as they were: they may be another machine's)."""
        try:
            return from_dict(self.read_config()).validate(paths=False)
        except ConfigError as e:
            raise ConfigError(f"output.dir: {self.run_yaml} is damaged ({e})") from None

    def results_damage(self, cfg) -> str | None:
        """Why results.h5 does not stand for a finished run of cfg ("missing" when there is none)."""
        if not os.path.exists(self.results):
            return "missing"
        from randopt_hpc.results import damage

        return damage(self.results, cfg)

    def state(self, cfg) -> str:
        """FRESH, RESUME or FINISHED for a run of cfg here (cfg.output.overwrite: always FRESH); a folder
        holding another config's run, or results of an unknown one, is a ConfigError. A run that differs
        from cfg only in what may grow or in settings (randopt_hpc.fingerprint) resumes as cfg's. FINISHED
        only with a results.h5 that opens, has this schema and the shapes cfg implies; else the shards
        rebuild it."""
        if cfg.output.overwrite or not os.path.isdir(self.path):
            return FRESH
        if not self.started:
            if os.path.exists(self.results) or os.path.isdir(self.shards_dir):
                raise ConfigError(f"output.dir: {self.path} holds results of an unknown config; "
                                  "choose another output.dir or set output.overwrite=true")
            return FRESH
        refusal = growth_refusal(self.config(), cfg)
        if refusal:
            raise ConfigError(f"output.dir: {self.path} holds a run with another config ({refusal}); choose "
                              "another output.dir or set output.overwrite=true")
        return FINISHED if self.results_damage(cfg) is None else RESUME

    def check_writable(self) -> None:
        """A ConfigError now, before MPI starts, if the run could not write here later. Probes the folder,
        or the nearest one above it that exists, with a uniquely named folder of its own that it removes:
        nothing is left behind, and ranks probing at once do not meet."""
        problem = atomic.folder_problem(self.path)
        if problem:
            raise ConfigError(f"output.dir: {self.path}: {problem}")
        problem = self.layout_problem()
        if problem:
            raise ConfigError(f"output.dir: {problem}; remove it or choose another output.dir")

    def layout_problem(self) -> str | None:
        """A file of the run's where a folder goes, or the other way round (a link that leads nowhere too): the
        run would fail on it at its end, status would misread it."""
        for path in (self.results, self.run_yaml):
            if os.path.lexists(path) and not os.path.isfile(path):
                return f"{path} is not a file"
        if os.path.lexists(self.shards_dir) and not os.path.isdir(self.shards_dir):
            return f"{self.shards_dir} is not a folder"
        return None

    # ------------------------------------------------------------------ changes (rank 0, lock held)
    def clear(self) -> None:
        shutil.rmtree(self.shards_dir, ignore_errors=True)
        for path in (self.results, self.run_yaml, self.test_jobs_file):
            if os.path.exists(path):
                os.remove(path)

    def prepare(self, cfg, restart_count: int = 0, log=None) -> None:
        """Rank 0, holding the lock, before the others look: start afresh if asked (never in a requeued job
        resuming its own run), remove temporaries of writers that died, record the config."""
        if cfg.output.overwrite and restart_count:
            if log:
                log.warning("output.overwrite ignored: this is a requeued Slurm job (restart %d) resuming its "
                            "own run", restart_count)
        elif cfg.output.overwrite:
            self.clear()
        os.makedirs(self.path, exist_ok=True)
        removed = atomic.remove_temporaries(self.path, (RUN_YAML, RESULTS, TEST_JOBS))
        if removed and log:
            log.warning("removed %d temporary file(s) of an earlier run that died while writing: %s",
                        len(removed), ", ".join(removed))
        changed = {} if not self.started else changes(self.config(), cfg)
        if changed and log:   # grown or under new settings (state() allowed it)
            log.info("the run in %s goes on as this config's: %s", self.path,
                     ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
        if not self.started or changed:
            atomic.write_text(self.run_yaml, to_yaml(cfg), fault_point="write:run.yaml")
        damage = self.results_damage(cfg)
        if damage not in (None, "missing") and log and not changed:
            log.warning("%s is damaged (%s); rebuilding it from the shards", self.results, damage)

    def write_test_jobs(self, population_size: int, jobs: list, test_ids: list) -> None:
        atomic.write_text(self.test_jobs_file, json.dumps({"population_size": population_size, "jobs": jobs,
                                                           "test_ids": test_ids}))

    def test_jobs(self, population_size: int) -> tuple[list, list] | None:
        """The jobs after the ranking of this population size, as (kind, key) pairs, and the test examples' ids
        they answer; None when not known yet (or written for another size of a grown run)."""
        try:
            with open(self.test_jobs_file, encoding="utf-8") as f:
                data = json.load(f)
            if data["population_size"] == population_size:
                return [tuple(j) for j in data["jobs"]], list(data["test_ids"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

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

    def scan(self) -> dict[str, Scan]:
        """Every shard's whole records and damaged lines, by shard file (any past rank count)."""
        return {path: scan_shard(path) for path in self.shard_files()}

    def records(self) -> list[records.Record]:
        return [r for scan in self.scan().values() for r in scan.records]

    def done(self, log=None) -> records.Done:
        """What the shards hold; damaged lines are reported to `log` (what they held is recomputed)."""
        scans = self.scan()
        if log:
            for path, scan in scans.items():
                for number, why in scan.damaged:
                    log.warning("%s line %d skipped: %s", path, number, why)
        return records.Done.of(r for scan in scans.values() for r in scan.records)

    def first_candidate(self) -> records.CandidateRecord | None:
        """A candidate record of the shards (the first whole one found), without reading them all."""
        for path in self.shard_files():
            with open(path, "rb") as f:
                for line in f:
                    try:
                        r = records.from_json(line.decode("utf-8"))
                    except (ValueError, UnicodeDecodeError):
                        continue
                    if r.kind == "candidate":
                        return r
        return None

    def count_done(self) -> int:
        """Distinct finished candidates (any index)."""
        return len(set().union(*(seen.get("candidate", {}) for seen in self._scan_new().values())))

    def count(self, kind: str, keys, ids=None) -> tuple[int, tuple | None]:
        """How many of `keys` have a record of `kind` in the shards (with `ids`: records answering all those
        examples between them, as a grown test split needs), and for candidates the best (score, index) among
        them. Incremental: each call reads only what the shards gained since the last (rank 0's progress line
        calls it every few seconds while the shards grow)."""
        found: dict = {}
        for seen in self._scan_new().values():
            for key, value in seen.get(kind, {}).items():
                found[key] = found.get(key, set()) | value
        need = set(ids or ())
        hits = [k for k in keys if k in found and (None in found[k] or need <= found[k])]
        if kind != "candidate" or ids is not None:   # a halving rung: the scores so far are on other examples
            return len(hits), None
        scores = self._scores
        best = max(((scores[k], -k) for k in hits), default=None)
        return len(hits), None if best is None else (best[0], -best[1])

    def _scan_new(self) -> dict[str, dict]:
        """Per shard: {kind: {key: the candidate's score, or the example ids answered (None: a record from
        before ids were recorded)}}, brought up to date with the lines appended since."""
        for path in self.shard_files():
            offset, seen = self._counted.get(path, (0, {}))
            with open(path, "rb") as f:
                f.seek(offset)
                for line in f:
                    if not line.endswith(b"\n"):
                        break        # being written: read it whole next time
                    offset += len(line)
                    try:
                        r = records.from_json(line.decode("utf-8"))
                    except (ValueError, UnicodeDecodeError):
                        continue     # damaged: its record is recomputed and appended later
                    if r.kind == "candidate":
                        self._scores.setdefault(r.key, r.score)
                    seen.setdefault(r.kind, {}).setdefault(r.key, set()).update(r.answers.ids or (None,))
            self._counted[path] = (offset, seen)
        return {path: seen for path, (_, seen) in self._counted.items()}
