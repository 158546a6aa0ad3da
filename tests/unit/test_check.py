"""randopt_hpc.check on real model folders (tiny ones of each kind, built here): what the backend refuses at
start-up, the chat template, the task data, memory per rank and the Slurm request, one line each, exit 2."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from randopt_hpc import check, memplan, run
from randopt_hpc.config import load_config
from tests.archs import arch_model
from tests.conftest import ROOT, child_env

GH200 = str(ROOT / "configs" / "gh200-countdown.yaml")
GPT2 = "backend: vllm: model_type 'gpt2' is not supported by randopt_hpc.tp"

_gpt2: dict = {}


def gpt2_model(tmp_path_factory) -> Path:
    """A tiny GPT-2 (an architecture transformers runs and the vLLM backend's noise layout does not know),
    with the tiny archs' character tokenizer; built once per session."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _gpt2:
        from transformers import GPT2Config, GPT2LMHeadModel

        src, out = arch_model(tmp_path_factory, "llama"), tmp_path_factory.mktemp("gpt2")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(src / name, out / name)
        vocab = json.loads((src / "config.json").read_text())["vocab_size"]
        GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=vocab, n_positions=4096,
                                   bos_token_id=1, eos_token_id=2)).save_pretrained(out, safe_serialization=True)
        _gpt2[key] = out
    return _gpt2[key]


def copy_of(tmp_path, src: Path, name: str = "m") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def gh200(model, tmp_path, *more) -> list[str]:
    """The GH200 config on a model here: synthetic Countdown problems, output in tmp_path."""
    return [GH200, f"model.path={model}", "task.data=null", f"output.dir={tmp_path}/out", *more]


def run_check(*args):
    return subprocess.run([sys.executable, "-m", "randopt_hpc.check", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=child_env())


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return arch_model(tmp_path_factory, "qwen2")


def test_an_unsupported_model_is_one_line_and_exit_2(tmp_path_factory, tmp_path):
    p = run_check(*gh200(gpt2_model(tmp_path_factory), tmp_path))
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"randopt_hpc.check: {GPT2} (supported: llama, "), p.stderr
    assert lines[0].endswith("; backend hf runs any model transformers loads")
    assert not (tmp_path / "out").exists()


def test_a_supported_model_prints_its_memory_per_rank(qwen2, tmp_path):
    p = run_check(*gh200(qwen2, tmp_path))
    assert p.returncode == 0 and p.stderr == "", p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("memory per rank: weights ") and "pristine copy" in lines[0]
    assert "(device), KV cache 76.0 GiB available" in lines[0] and "needed for 200 sequences of " in lines[0]
    assert lines[1].startswith("memory basis: 0.85 × 89.4 GiB GPU")
    assert lines[-2:] == ["ranks: 32 (8 nodes × 4)", "check: ok"]


def test_files_on_another_machine_are_one_note_and_the_rest_is_checked():
    p = run_check(GH200)
    assert p.returncode == 0 and p.stdout.splitlines() == ["ranks: 32 (8 nodes × 4)", "check: ok"]
    assert p.stderr.splitlines() == [
        "randopt_hpc.check: note: not on this machine: model.path /scratch/models/Qwen2.5-3B-Instruct, task.data "
        "/scratch/data/countdown.json; the model, tokenizer, data and memory checks are skipped"]
    p = run_check(GH200, "slurm.gpus_per_task=0", "population.size=16", "selection.top_k=[1]")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.splitlines()[1:] == [
        "randopt_hpc.check: slurm.nodes: 32 ranks (8 nodes × 4) for population.size 16: 16 ranks would have no "
        "candidate; ask for fewer nodes or slurm.tasks_per_node",
        "randopt_hpc.check: slurm.gpus_per_task: 0, but runtime.device is cuda: the ranks would see no GPU"]
    p = run_check(GH200, "population.sise=3")
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1
    assert p.stderr.startswith("randopt_hpc.check: error: population.sise: unknown key")


def test_an_output_folder_the_run_would_refuse_is_refused_here(tmp_path):
    """What the run refuses before MPI about output.dir, check says too (where its parent is on this machine)."""
    (tmp_path / "busy" / "results.h5").mkdir(parents=True)
    for out, says in (("/proc/randopt-check", "output.dir: /proc/randopt-check: cannot write there ("),
                      (tmp_path / "busy", f"output.dir: {tmp_path / 'busy' / 'results.h5'} is not a file")):
        p = run_check(GH200, f"output.dir={out}")
        assert p.returncode == 2 and p.stdout == "", p.stderr
        assert p.stderr.splitlines()[1].startswith(f"randopt_hpc.check: {says}"), p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["busy"]
    assert run_check(GH200, f"output.dir={tmp_path}/new").returncode == 0   # absent, in a folder here: fine
    assert run_check(GH200, "output.dir=/scratch-elsewhere/out").returncode == 0   # the cluster's: not judged


def test_a_quantized_checkpoint_is_refused_for_vllm_and_not_for_hf(qwen2, tmp_path):
    model = copy_of(tmp_path, qwen2)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "fp8"}}))
    assert check.problems(load_config(GH200, gh200(model, tmp_path)[1:])) == [
        "backend: vllm: qwen2: quantized checkpoints are not supported by randopt_hpc.tp; backend hf runs any "
        "model transformers loads"]
    assert check.problems(load_config(GH200, gh200(model, tmp_path, "backend=hf")[1:])) == []


def test_checkpoint_tensors_vllm_drops_are_refused_unless_left_out(tmp_path_factory, tmp_path):
    """Qwen3's o_proj bias: the HF model has it under attention_bias, vLLM's model does not."""
    from safetensors.torch import load_file, save_file

    model = copy_of(tmp_path, arch_model(tmp_path_factory, "qwen3"))
    tensors = load_file(str(model / "model.safetensors"))
    tensors["model.layers.0.self_attn.o_proj.bias"] = tensors["model.norm.weight"].clone()
    save_file(tensors, str(model / "model.safetensors"))
    args = gh200(model, tmp_path)
    assert check.problems(load_config(args[0], args[1:])) == [
        "backend: vllm: checkpoint tensors with no known place in vLLM's model (model_type qwen3): "
        "model.layers.0.self_attn.o_proj.bias; select others with population.include/exclude"]
    assert check.problems(load_config(args[0], [*args[1:], "population.exclude=[o_proj.bias]"])) == []
    assert check.problems(load_config(args[0], [*args[1:], "population.include=[nothing]"])) == [
        f"population.include: with population.exclude, it selects no tensor of the checkpoint in {model}"]


def test_chat_true_needs_a_chat_template(qwen2, tmp_path):
    model = copy_of(tmp_path, qwen2)
    args = gh200(model, tmp_path, "model.chat=true")
    assert check.problems(load_config(args[0], args[1:])) == [
        f"model.chat: true, but the tokenizer of {model} has no chat template (tokenizer_config.json's "
        "chat_template, chat_template.jinja or chat_template.json); set model.chat: false or auto"]
    (model / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}\n{% endfor %}")
    cfg = load_config(args[0], args[1:])
    assert check.problems(cfg) == []
    assert "(~" not in check.estimate(cfg)[1] and "chat template +64" in check.estimate(cfg)[1]


def test_bad_task_data_is_its_own_one_line(qwen2, tmp_path):
    data = tmp_path / "countdown.json"
    data.write_text(json.dumps([{"nums": [1, 2]}] * 3))
    args = gh200(qwen2, tmp_path, f"task.data={data}", "task.train_size=1", "task.test_size=1")
    found = check.problems(load_config(args[0], args[1:]))
    assert len(found) == 1 and found[0].startswith(f"task.data: {data}: "), found
    p = run_check(*args)
    assert p.returncode == 2 and p.stderr.splitlines() == [f"randopt_hpc.check: {found[0]}"]


def test_memory_that_does_not_fit_names_the_key_to_change(qwen2, tmp_path):
    args = gh200(qwen2, tmp_path)
    assert check.problems(load_config(args[0], args[1:]), gpu_gib=1e-4)[0].startswith(
        "vllm.gpu_memory_utilization: nothing is left for the KV cache (0.85 × 0.0001 GiB GPU")
    [line] = check.problems(load_config(args[0], [*args[1:], "vllm.kv_cache_gib=100"]))
    assert line.startswith("vllm.kv_cache_gib: 100 GiB of KV cache next to ") and "over the GPU's 89.4 GiB" in line
    [line] = check.problems(load_config(args[0], [*args[1:], "vllm.max_model_len=8192"]))
    assert line == "vllm.max_model_len: 8192 is over the model's max_position_embeddings (4096)"


def test_memory_of_qwen25_3b_from_the_formulas():
    """The GH200 config's own model, from its config.json sizes alone: 3.09e9 bfloat16 parameters."""
    from types import SimpleNamespace

    from randopt_hpc import tp

    config = {"model_type": "qwen2", "hidden_size": 2048, "intermediate_size": 11008, "num_attention_heads": 16,
              "num_key_value_heads": 2, "num_hidden_layers": 36, "vocab_size": 151936, "tie_word_embeddings": True}
    shape = tp.ModelShape.from_hf_config(SimpleNamespace(**config))
    model = check.Model(config, {n: tp.source_shape(n, shape) for n in tp.checkpoint_tensors(shape)})
    cfg = load_config(GH200, check_paths=False)
    m = memplan.memory(cfg, model, 150, gpu_gib=89.4, ranks_per_node=4, node_bytes=0)
    params = 3_085_938_688
    assert m.weights == m.pristine == params * 2 and m.pristine_at == "device"
    assert m.available == pytest.approx(0.85 * 89.4 * memplan.GIB - 4 * params)
    assert memplan.kv_bytes_per_token(config, 2) == 2 * 36 * 2 * 128 * 2
    assert m.tokens == 150 + 1024 and m.needed == 36864 * 1174 * 200
    host = memplan.memory(load_config(GH200, ["vllm.pristine=host", "vllm.tensor_parallel_size=2"], check_paths=False),
                        model, 150, gpu_gib=89.4, ranks_per_node=4, node_bytes=0)
    assert host.weights == host.pristine == params
    assert host.available == pytest.approx(0.85 * 89.4 * memplan.GIB - params)
    assert memplan.kv_bytes_per_token(config, 2, tp=4) == 2 * 36 * 1 * 128 * 2     # 2 K/V heads: replicated at TP 4


def test_the_slurm_request_against_the_config():
    cfg = lambda *o: load_config(GH200, list(o), check_paths=False)   # noqa: E731
    assert check.slurm_problems(cfg()) == []
    assert check.slurm_problems(cfg("vllm.tensor_parallel_size=2")) == [
        "slurm.gpus_per_task: 1, but vllm.tensor_parallel_size is 2: each rank's engine uses tensor_parallel_size "
        "GPUs; make them equal"]
    assert check.slurm_problems(cfg("vllm.tensor_parallel_size=2", "slurm.gpus_per_task=2")) == []
    assert check.slurm_problems(cfg("runtime.threads=100")) == [
        "runtime.threads: 100 threads per rank, but slurm.cpus_per_task gives each rank 72 CPUs"]
    assert check.slurm_problems(cfg("backend=hf", "slurm.gpus_per_task=2")) == [
        "slurm.gpus_per_task: 2, but backend hf runs each rank on one GPU; ask for 1"]
    assert check.slurm_problems(cfg("backend=hf", "runtime.device=cuda:1")) == [
        "runtime.device: cuda:1, but each rank sees 1 GPU(s) (slurm.gpus_per_task), numbered from 0; use cuda"]
    assert check.slurm_problems(cfg("slurm.nodes=1250")) == []                 # 5000 ranks, one candidate each
    assert check.slurm_problems(cfg("slurm.nodes=1251"))[0].startswith("slurm.nodes: 5004 ranks (1251 nodes × 4)")


def test_run_refuses_an_unsupported_layout_before_mpi_starts(tmp_path_factory, tmp_path, capsys):
    args = gh200(gpt2_model(tmp_path_factory), tmp_path, "runtime.device=cpu", "task.train_size=2",
                 "task.test_size=2")
    assert run.main(args) == 2
    assert capsys.readouterr().err.startswith(f"randopt_hpc: error: {GPT2}")
    assert not (tmp_path / "out").exists()


def test_the_file_checks_import_no_torch_transformers_or_vllm(qwen2, tmp_path):
    code = ("import sys; from randopt_hpc import check, config; "
            f"cfg = config.load_config({GH200!r}, {gh200(qwen2, tmp_path)[1:]!r}); "
            "assert check.problems(cfg) == [] and check.estimate(cfg); "
            "print(sorted(m for m in ('torch', 'transformers', 'vllm', 'numpy') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=child_env())
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stderr
