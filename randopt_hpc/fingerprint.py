"""The result-defining part of a config, and what a run folder may change between launches.

Three kinds of fields besides the result-defining ones, which a resumed run must match exactly:
- NON_RESULT_FIELDS cannot change any result (where a run writes, how it reports, how it talks between ranks,
  the Slurm request);
- SETTINGS may change how an answer comes out (padding and reduction order can flip a greedy argmax) but not
  what is asked; a run continues under new ones, and every record says which settings produced it
  (randopt_hpc.records.Answers.settings), so the results show which part came from which;
- GROWABLE fields change what the run computes, never what a computed record means (candidate i is the same
  model at any N; a member's test answers do not depend on which K it serves): a finished or stopped run
  grows to the new value, computing only what is missing.
results.h5 records the hash of the fields outside the first two kinds.
"""
from __future__ import annotations

import hashlib

import yaml

from randopt_hpc.config import Config, to_dict

# A section name stands for all its fields.
NON_RESULT_FIELDS = ("output.dir", "output.overwrite", "output.save_text", "runtime.comm",
                     "runtime.progress_every_s", "runtime.noise_impl", "runtime.stage_dir", "runtime.stop_grace_s",
                     "runtime.schedule", "runtime.decoder", "slurm", "es.checkpoint_every")
SETTINGS = ("generation.batch_size", "runtime.threads")
GROWABLE = ("population.size", "selection.top_k", "selection.control", "selection.control_size", "selection.task",
            "selection.schedule", "selection.halving.first", "selection.halving.eta", "selection.halving.keep",
            "generation.samples", "task.test_size", "es.iterations", "es.eval_every")


def _flat(cfg: Config) -> dict:
    flat: dict = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v
    walk(to_dict(cfg), "")
    return flat


def result_fingerprint(cfg: Config) -> dict:
    """The flattened fields that define results (GROWABLE ones included)."""
    flat = {k: v for k, v in _flat(cfg).items()
            if k not in SETTINGS and k not in NON_RESULT_FIELDS and k.split(".")[0] not in NON_RESULT_FIELDS}
    # Fields that mean nothing to this run are left out, so a one-search RandOpt run's hash stays what it was
    # before ES and rounds existed: how a distillation would go, and the other algorithm's section.
    if cfg.rounds == 1:
        flat = {k: v for k, v in flat.items() if k != "rounds" and not k.startswith("distill.")}
    if cfg.algorithm == "randopt":
        return {k: v for k, v in flat.items() if k != "algorithm" and not k.startswith("es.")}
    return {k: v for k, v in flat.items() if not k.startswith("selection.")}


def settings(cfg: Config) -> dict:
    """The SETTINGS values a record is produced under."""
    flat = _flat(cfg)
    return {k: flat[k] for k in SETTINGS}


def changes(old: Config, new: Config) -> dict:
    """{field: (old value, new value)} for every field that differs, NON_RESULT_FIELDS but output.save_text
    left out (where a run writes and how it reports are not changes of the run)."""
    a, b = _flat(old), _flat(new)
    quiet = [f for f in NON_RESULT_FIELDS if f != "output.save_text"]
    return {k: (a.get(k), v) for k, v in b.items()
            if a.get(k) != v and k not in quiet and k.split(".")[0] not in quiet}


def growth_refusal(old: Config, new: Config) -> str | None:
    """Why a run folder holding a run of `old` cannot go on as a run of `new` (None: it can, computing only
    what is missing). One line naming the first field at fault."""
    a, b = result_fingerprint(old), result_fingerprint(new)
    fixed = [k for k in b if a.get(k) != b[k] and k not in GROWABLE]
    if fixed:
        k = fixed[0]
        return f"{k}: {a.get(k)!r} there, {b[k]!r} here; a run may change only {', '.join(GROWABLE + SETTINGS)}"
    p = new.population
    if new.algorithm == "es" and old.population.size != p.size:
        return (f"population.size: {old.population.size} there, {p.size} here; every ES update depends on N, "
                "so it cannot grow; start a new output.dir")
    if old.population.size != p.size and p.sigma_assignment == "blocked" and len(p.sigmas) > 1:
        return (f"population.size: {old.population.size} there, {p.size} here, but blocked σ assignment gives "
                "candidate i another σ at another N; start a new output.dir")
    return None


def _hash(fields: dict) -> str:
    return hashlib.sha256(yaml.safe_dump(fields, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint_hash(cfg: Config) -> str:
    return _hash(result_fingerprint(cfg))


# How far an ES run goes and what it evaluates: θ_t does not depend on them (N, which it depends on, cannot grow).
THETA_FREE = ("es.iterations", "es.eval_every", "task.test_size")


def theta_fingerprint(cfg: Config) -> str:
    """What θ_t of an ES run depends on, hashed: its checkpoints carry it, so they stay valid as the run grows."""
    return _hash({k: v for k, v in result_fingerprint(cfg).items() if k not in THETA_FREE})
