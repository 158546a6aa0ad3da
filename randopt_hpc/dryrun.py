"""What `python -m randopt_hpc.launch --dry-run` prints: the batch script a submission would write, made
by submitit's own public submission path against stand-ins, so that it needs no Slurm and matches a real
submission byte for byte."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

# Characters that need no shell quoting and mean nothing to Slurm's filename patterns: a folder made of
# them is written into #SBATCH lines as it is, by submitit and here alike.
FOLDER_SAFE = re.compile(r"[\w@+=:,./-]+", re.ASCII)
FOLDER_CHARS = "letters, digits and _@+=:,./-"


# The same submission as `submit` (executor, parameters, a batch of N jobs), run by a child process
# against stand-ins: submitit finds `srun` and calls `sbatch` on PATH, and the child's PATH starts with
# ours, which need no Slurm. A child because the package never writes os.environ.
_STAND_IN_SUBMISSION = """
import json, sys
import submitit
r = json.load(sys.stdin)
ex = submitit.SlurmExecutor(folder=r["folder"], python=r["python"])
ex.update_parameters(**r["params"])
with ex.batch():
    for _ in range(r["jobs"]):
        ex.submit(int)
"""


def script(folder: str, params: dict, python: str, n_jobs: int) -> str:
    """The batch script that submitting n_jobs with these parameters would write into FOLDER (an array
    when n_jobs > 1), through submitit's public submission path into a temporary folder whose name is
    then replaced by FOLDER; nothing is written anywhere else. Neither name needs shell quoting (FOLDER
    passed check_folder), so submitit writes both as they are and the plain text replacement prints what a
    real submission would write."""
    if not FOLDER_SAFE.fullmatch(folder):
        raise RuntimeError(f"--dry-run: {folder!r} cannot be written into #SBATCH lines (see check_folder)")
    with tempfile.TemporaryDirectory(prefix="randopt-dry-run-") as tmp:
        stand_ins, script, fake = os.path.join(tmp, "bin"), os.path.join(tmp, "script.sh"), os.path.join(tmp, "s")
        if not FOLDER_SAFE.fullmatch(fake):
            raise RuntimeError(f"--dry-run: the temporary folder {tmp!r} would be quoted in the script and printed "
                               f"unlike FOLDER; point TMPDIR at a path with {FOLDER_CHARS} only")
        os.mkdir(stand_ins)
        # Only this interpreter and shell builtins: PATH may hold nothing else (and no Slurm at all).
        keep = "import shutil, sys; shutil.copyfile(sys.argv[1], sys.argv[2]); print('Submitted batch job 1')"
        _executable(os.path.join(stand_ins, "sbatch"),
                    f'exec {shlex.quote(sys.executable)} -c "{keep}" "$1" {shlex.quote(script)}')
        _executable(os.path.join(stand_ins, "srun"), 'echo "srun: a stand-in for --dry-run" >&2; exit 1')
        request = {"folder": os.path.join(fake, "%j"), "python": python, "params": params, "jobs": n_jobs}
        env = {**os.environ, "PATH": os.pathsep.join([stand_ins, os.environ.get("PATH", "")])}
        p = subprocess.run([sys.executable, "-c", _STAND_IN_SUBMISSION], input=json.dumps(request), env=env,
                           capture_output=True, text=True, timeout=120)
        if p.returncode != 0 or not os.path.exists(script):
            # The exception's own line, not the last of a multi-line message (submitit lists valid parameters).
            raised = re.findall(r"^[\w.]+: .*", p.stderr, re.MULTILINE) or p.stderr.strip().splitlines()[-1:]
            why = raised[-1] if raised else "no output"
            raise RuntimeError(f"--dry-run: submitit failed against the stand-ins for sbatch and srun in {tmp} "
                               f"({why}; if TMPDIR is mounted noexec, point it elsewhere)")
        with open(script, encoding="utf-8") as f:
            return f.read().replace(fake, folder)


def _executable(path: str, body: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"#!/bin/sh\n{body}\n")
    os.chmod(path, 0o755)
