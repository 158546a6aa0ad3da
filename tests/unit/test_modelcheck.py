"""check_model: every model folder fault is one line naming the file, found by plain file reads.

Each case copies the shipped demo model (models/demo) into tmp and breaks one thing."""
import json
import os
import shutil
import struct
import subprocess
import sys
import time

import pytest

from randopt_hpc import modelcheck
from randopt_hpc.modelcheck import ModelError, check_model
from tests.conftest import fastest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "models", "demo")
ST = "model.safetensors"


@pytest.fixture
def model(tmp_path):
    dst = tmp_path / "demo"
    shutil.copytree(DEMO, dst)
    return dst


def fails(path, file, *words):
    """check_model(path) raises one line naming `file`; returns the message."""
    with pytest.raises(ModelError) as e:
        check_model(str(path))
    msg = str(e.value)
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg.startswith("model.path: "), msg
    assert file in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def read_st(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path, header, data, raw_header=None):
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def edit_header(path, fn):
    header, data = read_st(path)
    fn(header)
    write_st(path, header, data)


def first(header):
    return next(k for k in header if k != "__metadata__")


def last(header):
    return max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])


def truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def header_len(path):
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


# --- safetensors ------------------------------------------------------------------------------------------

def _cut_in_data(m):
    truncate(m / ST, (m / ST).stat().st_size - 1000)


def _cut_at_data_start(m):
    truncate(m / ST, 8 + header_len(m / ST))


def _cut_in_header(m):
    truncate(m / ST, 8 + header_len(m / ST) // 2)


def _cut_in_length(m):
    truncate(m / ST, 5)


def _empty_file(m):
    truncate(m / ST, 0)


def _padded(m):
    with open(m / ST, "ab") as f:
        f.write(b"\0" * 7)


def _length_past_end(m):
    raw = bytearray((m / ST).read_bytes())
    raw[:8] = struct.pack("<Q", len(raw))
    (m / ST).write_bytes(raw)


def _length_huge(m):
    raw = bytearray((m / ST).read_bytes())
    raw[:8] = struct.pack("<Q", 2**63 + 5)
    (m / ST).write_bytes(raw)


def _not_safetensors(m):
    (m / ST).write_bytes(b"PK\x03\x04" + os.urandom(4000))   # a zip (torch.save) under the wrong name


def _header_garbage(m):
    raw = bytearray((m / ST).read_bytes())
    raw[8:12] = b"<<<<"
    (m / ST).write_bytes(raw)


def _header_not_utf8(m):
    raw = bytearray((m / ST).read_bytes())
    raw[20] = 0xFF
    (m / ST).write_bytes(raw)


def _header_array(m):
    header, data = read_st(m / ST)
    write_st(m / ST, None, data, raw_header=b"[" + json.dumps(header).encode() + b"]")


def _header_deep(m):
    _, data = read_st(m / ST)
    write_st(m / ST, None, data, raw_header=b"[" * 100_000 + b"]" * 100_000)


def _header_huge_int(m):
    _, data = read_st(m / ST)
    write_st(m / ST, None, data, raw_header=b'{"a": {"dtype": "U8", "shape": [' + b"9" * 5000 + b"]}}")


def _shape_mismatch(m):
    edit_header(m / ST, lambda h: h[first(h)].update(shape=[100, 127]))


def _offsets_short(m):
    def fn(h):
        t = h[first(h)]
        t["data_offsets"] = [t["data_offsets"][0], t["data_offsets"][1] - 4]
    edit_header(m / ST, fn)


def _offsets_reversed(m):
    edit_header(m / ST, lambda h: h[first(h)].update(data_offsets=h[first(h)]["data_offsets"][::-1]))


def _offsets_overlap(m):
    def fn(h):    # a later tensor made to point at the first tensor's bytes (same length, so sizes agree)
        a, b = h["lm_head.weight"], h["model.embed_tokens.weight"]
        b["data_offsets"] = list(a["data_offsets"])
    edit_header(m / ST, fn)


def _unknown_dtype(m):
    edit_header(m / ST, lambda h: h[first(h)].update(dtype="F31"))


def _dtype_lowercase(m):
    edit_header(m / ST, lambda h: h[first(h)].update(dtype="float32"))


def _negative_dim(m):
    edit_header(m / ST, lambda h: h[first(h)].update(shape=[-100, -128]))


def _bool_dim(m):
    edit_header(m / ST, lambda h: h[first(h)].update(shape=[True, 128]))


def _entry_not_object(m):
    edit_header(m / ST, lambda h: h.update({first(h): [1, 2]}))


def _metadata_not_strings(m):
    edit_header(m / ST, lambda h: h.update(__metadata__={"format": 1}))


def _last_tensor_dropped(m):
    # The header forgets the last tensor: the file is then longer than the header says (padded).
    edit_header(m / ST, lambda h: h.pop(last(h)))


def _no_weights(m):
    (m / ST).unlink()


def _only_bin(m):
    (m / ST).rename(m / "pytorch_model.bin")


def _only_sharded_bin(m):
    (m / ST).rename(m / "pytorch_model-00001-of-00002.bin")
    (m / "pytorch_model.bin.index.json").write_text('{"weight_map": {}}')


def _weights_dir(m):
    (m / ST).unlink()
    (m / ST).mkdir()


def _weights_broken_link(m):
    (m / ST).unlink()
    (m / ST).symlink_to(m / "gone.safetensors")


def _extra_without_index(m):
    (m / "consolidated.safetensors").write_bytes(b"junk")   # no index: every *.safetensors is a weight


def _valid_extra_without_index(m):
    # Intact, but transformers would read model.safetensors alone and vLLM both.
    shutil.copy(m / ST, m / "consolidated.safetensors")


def _renamed_without_index(m):
    (m / ST).rename(m / "weights.safetensors")


WEIGHT_CASES = [
    (_cut_in_data, ST, "truncated"),
    (_cut_at_data_start, ST, "truncated"),
    (_cut_in_header, ST, "runs past the end"),
    (_cut_in_length, ST, "too short"),
    (_empty_file, ST, "0 bytes"),
    (_padded, ST, "7 bytes after the last tensor"),
    (_length_past_end, ST, "runs past the end"),
    (_length_huge, ST, "limit"),
    (_not_safetensors, ST, "header length"),
    (_header_garbage, ST, "header not valid JSON"),
    (_header_not_utf8, ST, "header not UTF-8"),
    (_header_array, ST, "header is a JSON array"),
    (_header_deep, ST, "nested too deeply"),
    (_header_huge_int, ST, "header not readable JSON"),
    (_shape_mismatch, ST, "needs 50800 bytes"),
    (_offsets_short, ST, "lm_head.weight"),
    (_offsets_reversed, ST, "begin <= end"),
    (_offsets_overlap, ST, "overlap"),
    (_unknown_dtype, ST, "unknown dtype 'F31'"),
    (_dtype_lowercase, ST, "unknown dtype 'float32'"),
    (_negative_dim, ST, "non-negative"),
    (_bool_dim, ST, "non-negative"),
    (_entry_not_object, ST, "not an object"),
    (_metadata_not_strings, ST, "__metadata__"),
    (_last_tensor_dropped, ST, "bytes after the last tensor"),
    (_no_weights, ST, "no *.safetensors"),
    (_only_bin, "pytorch_model.bin", "only safetensors"),
    (_only_sharded_bin, "pytorch_model", "only safetensors"),
    (_weights_dir, ST, "not a regular file"),
    (_weights_broken_link, ST, "broken symbolic link"),
    (_extra_without_index, "consolidated.safetensors", "too short"),
    (_valid_extra_without_index, "model.safetensors.index.json", "2 safetensors file(s) (consolidated"),
    (_renamed_without_index, "weights.safetensors", "must be one model.safetensors"),
]


@pytest.mark.parametrize("break_it,file,words", WEIGHT_CASES, ids=[c[0].__name__[1:] for c in WEIGHT_CASES])
def test_broken_weights(model, break_it, file, words):
    break_it(model)
    fails(model, file, words)


def test_pickle_message_says_how_to_convert(model):
    _only_bin(model)
    msg = fails(model, "pytorch_model.bin", "can run code", "save_pretrained", "safe_serialization=True")
    assert len(msg) < 400


# --- config.json, tokenizer, generation config ----------------------------------------------------------

def _write(rel, content):
    def fn(m):
        p = m / rel
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return fn


def _remove(*rels):
    def fn(m):
        for rel in rels:
            (m / rel).unlink()
    return fn


def _config_edit(**changes):
    def fn(m):
        cfg = json.loads((m / "config.json").read_text())
        for k, v in changes.items():
            if v is KeyError:
                cfg.pop(k)
            else:
                cfg[k] = v
        (m / "config.json").write_text(json.dumps(cfg))
    return fn


def _truncated(rel, keep=0.5):
    def fn(m):
        raw = (m / rel).read_bytes()
        (m / rel).write_bytes(raw[:int(len(raw) * keep)])
    return fn


FILE_CASES = [
    ("config_missing", _remove("config.json"), "config.json", "missing"),
    ("config_truncated", _truncated("config.json"), "config.json", "not valid JSON"),
    ("config_empty", _write("config.json", ""), "config.json", "empty"),
    ("config_array", _write("config.json", "[1, 2]"), "config.json", "JSON array"),
    ("config_not_utf8", _write("config.json", b'{"model_type": "ll\xe9ma"}'), "config.json", "not UTF-8"),
    ("config_utf16", _write("config.json", '{"model_type": "llama"}'.encode("utf-16")), "config.json", "UTF-8"),
    ("config_deep", _write("config.json", "[" * 50_000 + "]" * 50_000), "config.json", "nested too deeply"),
    ("config_huge_int", _write("config.json", '{"model_type": "llama", "vocab_size": ' + "7" * 5000 + "}"),
     "config.json", "too many digits"),
    ("config_no_model_type", _config_edit(model_type=KeyError), "config.json", "no model_type"),
    ("config_model_type_number", _config_edit(model_type=7), "config.json", "model_type is 7"),
    ("config_hidden_negative", _config_edit(hidden_size=-128), "config.json", "hidden_size is -128"),
    ("config_layers_string", _config_edit(num_hidden_layers="4"), "config.json", "num_hidden_layers is '4'"),
    ("config_vocab_float", _config_edit(vocab_size=100.5), "config.json", "vocab_size"),
    ("config_heads_zero", _config_edit(num_attention_heads=0), "config.json", "num_attention_heads is 0"),
    ("config_heads_bool", _config_edit(num_attention_heads=True), "config.json", "num_attention_heads is true"),
    ("config_text_config", _config_edit(text_config={"hidden_size": 2**40}), "config.json",
     "text_config.hidden_size"),
    ("config_is_dir", lambda m: (_remove("config.json")(m), (m / "config.json").mkdir()), "config.json",
     "not a regular file"),
    ("tokenizer_missing", _remove("tokenizer.json"), "tokenizer.json", "no tokenizer"),
    ("tokenizer_all_missing", _remove("tokenizer.json", "tokenizer_config.json"), "tokenizer.json", "missing"),
    ("tokenizer_truncated", _truncated("tokenizer.json"), "tokenizer.json", "not valid JSON"),
    ("tokenizer_cut_short", _truncated("tokenizer.json", 0.99), "tokenizer.json", "not valid JSON"),
    ("tokenizer_string", _write("tokenizer.json", '"tokenizer"'), "tokenizer.json", "JSON string"),
    ("tokenizer_not_utf8", _write("tokenizer.json", b"\xff\xfe{}"), "tokenizer.json", "not UTF-8"),
    ("tokenizer_broken_link", lambda m: (_remove("tokenizer.json")(m), (m / "tokenizer.json").symlink_to("nowhere")),
     "tokenizer.json", "broken symbolic link"),
    ("vocab_json_broken", lambda m: (_remove("tokenizer.json")(m), _write("vocab.json", '{"a": 1,')(m)),
     "vocab.json", "not valid JSON"),
    ("vocab_txt_empty", lambda m: (_remove("tokenizer.json")(m), _write("vocab.txt", "")(m)), "vocab.txt", "empty"),
    ("tokenizer_config_array", _write("tokenizer_config.json", "[]"), "tokenizer_config.json", "JSON array"),
    ("tokenizer_config_truncated", _truncated("tokenizer_config.json"), "tokenizer_config.json", "not valid JSON"),
    ("generation_config_broken", _truncated("generation_config.json"), "generation_config.json", "not valid JSON"),
    ("generation_config_null", _write("generation_config.json", "null"), "generation_config.json", "JSON null"),
    ("special_tokens_map_array", _write("special_tokens_map.json", "[]"), "special_tokens_map.json", "array"),
    # The stop ids both backends read (randopt_hpc.backends.base.stop_token_ids).
    ("generation_eos_string", _write("generation_config.json", '{"eos_token_id": "</s>"}'),
     "generation_config.json", "eos_token_id must be a token id"),
    ("generation_eos_negative", _write("generation_config.json", '{"eos_token_id": [2, -1]}'),
     "generation_config.json", "[2, -1]"),
    ("generation_eos_bool", _write("generation_config.json", '{"eos_token_id": true}'),
     "generation_config.json", "eos_token_id"),
    ("config_eos_without_generation_config",
     lambda m: (_remove("generation_config.json")(m), _config_edit(eos_token_id=[1.5])(m)), "config.json",
     "eos_token_id must be"),
]


@pytest.mark.parametrize("break_it,file,words", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_broken_files(model, break_it, file, words):
    break_it(model)
    fails(model, file, words)


@pytest.mark.parametrize("make_slow", [
    lambda m: (m / "tokenizer.json").rename(m / "vocab.json"),      # a JSON-object vocabulary
    lambda m: (m / "tokenizer.json").rename(m / "tokenizer.model"),  # sentencepiece: existence only
    lambda m: (_remove("tokenizer.json")(m), _write("vocab.txt", "a\nb\n")(m)),
], ids=["vocab_json", "tokenizer_model", "vocab_txt"])
def test_slow_tokenizer_vocabulary_is_enough(model, make_slow):
    make_slow(model)
    assert not (model / "tokenizer.json").exists()
    check_model(str(model))


def test_big_tokenizer_gets_the_shallow_check(model, monkeypatch):
    monkeypatch.setattr(modelcheck, "TOKENIZER_FULL_PARSE", 100)   # the demo's 3 kB tokenizer.json is "big"
    check_model(str(model))
    raw = (model / "tokenizer.json").read_bytes()
    (model / "tokenizer.json").write_bytes(raw[:-200])
    fails(model, "tokenizer.json", "truncated")
    (model / "tokenizer.json").write_bytes(raw[:2000] + b"\n\n")
    fails(model, "tokenizer.json", "truncated")
    # The price of the shallow check: what lies inside is not read, and a cut just after an inner "}"
    # (here: the last byte, "}\n}" -> "}\n") is not seen.
    (model / "tokenizer.json").write_bytes(raw[:500] + b"\xff" + raw[501:])
    check_model(str(model))
    (model / "tokenizer.json").write_bytes(raw.rstrip()[:-1])
    check_model(str(model))
    (model / "tokenizer.json").write_bytes(b"\n  [" + raw[1:])
    fails(model, "tokenizer.json", "does not start with '{'")


# --- folder ---------------------------------------------------------------------------------------------

def test_folder_missing_or_a_file(tmp_path):
    fails(tmp_path / "nope", "nope", "no such directory")
    (tmp_path / "file").write_text("x")
    fails(tmp_path / "file", "file", "not a directory")
    with pytest.raises(ModelError, match="^model.path: "):
        check_model("")


def test_intact_demo_copy_passes(model):
    check_model(str(model))
    check_model(DEMO)


def test_hostile_names_stay_on_one_line(model):
    # A tensor name with a newline, and a very long one: the message stays one short line.
    edit_header(model / ST, lambda h: h.update({"evil\nname\r" + "x" * 10_000: h.pop(first(h))}))
    (model / "tokenizer.json").unlink()
    (model / "vocab.json").write_text('{"a": 1}')
    check_model(str(model))   # names are fine as such
    edit_header(model / ST, lambda h: h[first(h)].update(dtype="X\n" * 5000))
    msg = fails(model, ST, "unknown dtype")
    assert len(msg) < 400


# --- sharded models and the index -----------------------------------------------------------------------

@pytest.fixture
def sharded(model):
    """The demo model re-saved as two safetensors shards and an index, with safetensors.torch."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(model / ST))
    (model / ST).unlink()
    names = sorted(tensors)
    files = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
             "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for f, part in files.items():
        save_file({n: tensors[n] for n in part}, str(model / f), metadata={"format": "pt"})
        weight_map.update({n: f for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (model / modelcheck.INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                     indent=2))
    return model


def index(m):
    return json.loads((m / modelcheck.INDEX).read_text())


def set_index(m, obj):
    (m / modelcheck.INDEX).write_text(json.dumps(obj))


S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


def test_sharded_model_passes(sharded):
    check_model(str(sharded))


def test_model_safetensors_beside_an_index_is_checked_too(sharded):
    # transformers loads model.safetensors when it exists, whatever the index says.
    (sharded / ST).write_bytes(b"junk")
    fails(sharded, ST, "too short")


def test_sharded_model_with_a_stray_unlisted_file_passes(sharded):
    # A Mistral folder: consolidated.safetensors beside the HF shards; the index says which are the weights.
    (sharded / "consolidated.safetensors").write_bytes(b"not even a safetensors file")
    (sharded / "pytorch_model.bin").write_bytes(b"pickle")
    check_model(str(sharded))


def test_shard_named_by_the_index_missing(sharded):
    (sharded / S2).unlink()
    fails(sharded, S2, "missing", modelcheck.INDEX)


def test_index_names_a_file_that_does_not_exist(sharded):
    idx = index(sharded)
    idx["weight_map"]["model.norm.weight"] = "model-00003-of-00002.safetensors"
    set_index(sharded, idx)
    fails(sharded, "model-00003-of-00002.safetensors", "missing", "model.norm.weight")


def test_tensor_in_the_index_but_not_in_its_file(sharded):
    idx = index(sharded)
    name = next(n for n, f in idx["weight_map"].items() if f == S1)
    idx["weight_map"][name] = S2                 # mapped to the other shard, which does not hold it
    set_index(sharded, idx)
    fails(sharded, S2, "has no tensor", name)


def test_tensor_in_the_index_nowhere(sharded):
    idx = index(sharded)
    idx["weight_map"]["model.layers.9.mlp.up_proj.weight"] = S1
    set_index(sharded, idx)
    fails(sharded, S1, "model.layers.9.mlp.up_proj.weight")


def test_truncated_second_shard(sharded):
    truncate(sharded / S2, (sharded / S2).stat().st_size - 1)
    fails(sharded, S2, "truncated")


@pytest.mark.parametrize("idx,words", [
    ("[]", "JSON array"),
    ('{"metadata": {}}', "no weight_map"),
    ('{"weight_map": {}}', "weight_map is {}"),
    ('{"weight_map": ["a"]}', "weight_map is"),
    ('{"weight_map": {"lm_head.weight": 3}}', "expected a file name"),
    ('{"weight_map": {"lm_head.weight": "../model.safetensors"}}', "outside the model folder"),
    ('{"weight_map": {"lm_head.weight": "/etc/passwd"}}', "outside the model folder"),
    ('{"weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors",', "not valid JSON"),
], ids=["array", "no_map", "empty_map", "map_array", "file_number", "dotdot", "absolute", "truncated"])
def test_broken_index(sharded, idx, words):
    (sharded / modelcheck.INDEX).write_text(idx)
    fails(sharded, modelcheck.INDEX, words)


def test_unusual_dtypes(tmp_path, model):
    # Sub-byte and float8 dtypes the format defines: F4 holds two elements a byte, F6 four in three bytes.
    header = {"__metadata__": {"format": "pt"},
              "a": {"dtype": "F4", "shape": [2, 3], "data_offsets": [0, 3]},
              "b": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [3, 6]},
              "c": {"dtype": "F8_E4M3", "shape": [5], "data_offsets": [6, 11]},
              "d": {"dtype": "BF16", "shape": [0, 7], "data_offsets": [11, 11]},
              "e": {"dtype": "C64", "shape": [], "data_offsets": [11, 19]}}
    (model / ST).unlink()
    write_st(model / ST, header, bytes(19))
    check_model(str(model))
    header["a"]["shape"] = [3]                      # 12 bits: not whole bytes
    write_st(model / ST, header, bytes(19))
    fails(model, ST, "does not fill whole bytes")


# --- cost -----------------------------------------------------------------------------------------------

def test_check_is_fast_and_reads_no_tensor_data(model):
    check_model(str(model))
    times = []
    for _ in range(30):
        t = time.perf_counter()
        check_model(str(model))
        times.append(time.perf_counter() - t)
    median = sorted(times)[len(times) // 2]
    print(f"check_model on the demo model: median {median * 1e3:.2f} ms")
    assert median < 0.05     # ~1 ms; the bound is loose for loaded CI machines
    # A 1 TB sparse shard: only its header is read.
    header, _ = read_st(model / ST)
    big = {"__metadata__": {}, "w": {"dtype": "BF16", "shape": [2**19, 2**20], "data_offsets": [0, 2**40]}}
    h = json.dumps(big).encode()
    with open(model / ST, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        f.truncate(8 + len(h) + 2**40)
    _, seconds = fastest(check_model, str(model))
    assert seconds < 0.5, f"{seconds:.2f} s"


def test_no_heavy_imports():
    code = ("import sys; from randopt_hpc.modelcheck import check_model; check_model(sys.argv[1]); "
            "heavy = {'torch', 'transformers', 'vllm', 'safetensors', 'numpy', 'mpi4py'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code, DEMO], check=True, cwd=ROOT)
