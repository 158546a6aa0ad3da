"""Pre-flight check of a model folder: one line naming the bad file, before MPI starts.

A truncated safetensors file, a missing tokenizer or a broken config.json otherwise surfaces as a long
transformers or vLLM traceback after MPI has started (under mpiexec: an abort of the whole world).
`check_model` finds those faults with plain file reads: config.json, the index and the other small JSON
files are parsed; of each safetensors file only the 8-byte length and the JSON header are read (never
the tensor data), and the header's tensor table is checked against itself and the file's size. No torch,
transformers or vLLM import; it takes milliseconds on any checkpoint size, so every rank can run it.

What it cannot see: wrong numbers inside tensor data; inside a tokenizer.json over TOKENIZER_FULL_PARSE
bytes (only its first and last bytes are read); a tokenizer that parses but does not fit the model; an
architecture the installed transformers or vLLM does not know.
"""
from __future__ import annotations

import json
import os
import struct

__all__ = ["ModelError", "check_model", "DTYPE_BITS", "MLP_TYPE", "mlp_shapes"]

INDEX = "model.safetensors.index.json"
MAX_HEADER = 100_000_000          # the safetensors loader's own limit on the JSON header length
MAX_JSON = 256 * 1024 * 1024      # no config, index or tokenizer file is this big
MAX_DIM = 2**31 - 1               # "sane" upper bound for config.json sizes
# A big tokenizer.json (Llama 3: 9 MB, Gemma: 34 MB) takes 0.1-1 s to parse in Python; over this size it
# gets the shallow check only (see _read_object). Configs and the index are always parsed in full.
TOKENIZER_FULL_PARSE = 2 * 2**20

# Bits per element of every dtype the safetensors format defines (safetensors 0.8: Dtype in tensor.rs).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
}
CONFIG_SIZES = ("hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads")
# Files read by AutoTokenizer / GenerationConfig when present; each must then be a JSON object.
OPTIONAL_OBJECTS = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "chat_template.json", "generation_config.json")
SLOW_VOCABS = ("tokenizer.model", "vocab.json", "vocab.txt")
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class ModelError(ValueError):
    """A model folder fault, as one line: `model.path: <file>: <what is wrong>`."""

    def __init__(self, where: str, problem: str):
        text = f"model.path: {where}: {problem}"
        # File and tensor names come from the folder (hostile input): keep the message on one line.
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in text))


def check_model(path: str, tokenizer: bool = True) -> None:
    """Raise ModelError naming the first faulty file of the model folder at `path`, or return None;
    tokenizer=False for a backend that reads numbers, not text (mlp)."""
    if not path:
        raise ModelError("(empty)", "no model folder given")
    if not os.path.exists(path):
        raise ModelError(path, "no such directory")
    if not os.path.isdir(path):
        raise ModelError(path, "not a directory (expected a Hugging Face model folder)")
    try:
        names = set(os.listdir(path))
    except OSError as e:
        raise ModelError(path, f"cannot list the folder: {_os_reason(e)}") from None
    _check_config(path)
    _check_weights(path, names)
    if tokenizer:
        _check_tokenizer(path)
    for rel in OPTIONAL_OBJECTS:
        if _present(path, rel):
            _read_object(path, rel)
    _check_stop_ids(path)


# --- config.json ---------------------------------------------------------------------------------------

def _check_config(path: str) -> None:
    if not _present(path, "config.json"):
        raise ModelError(os.path.join(path, "config.json"), "missing (expected a Hugging Face model folder)")
    cfg = _read_object(path, "config.json")
    where = os.path.join(path, "config.json")
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        got = "no model_type key" if model_type is None else f"model_type is {_show(model_type)}"
        raise ModelError(where, f"{got}; expected a string such as \"llama\"")
    _check_sizes(where, cfg, "")
    if isinstance(cfg.get("text_config"), dict):    # multimodal configs keep the language model's here
        _check_sizes(where, cfg["text_config"], "text_config.")


def _check_sizes(where: str, cfg: dict, prefix: str) -> None:
    for key in CONFIG_SIZES:
        value = cfg.get(key)
        if value is None:                           # absent (or null): the architecture's default
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DIM:
            raise ModelError(where, f"{prefix}{key} is {_show(value)}; expected a positive integer")


# --- the 1-D toy's MLP (randopt_hpc.backends.mlp) ------------------------------------------------------------

MLP_TYPE = "randopt_mlp"          # config.json model_type of an MLP checkpoint


def mlp_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Checkpoint tensor -> shape of the MLP config.json describes: Linear(ctx, width), depth - 2 ×
    (ReLU, Linear(width, width)), ReLU, Linear(width, 1), named as the reference's ModuleList (ReLUs take
    the odd places). Here, not in the backend, so that the preflight checks a folder without torch."""
    sizes = {k: config.get(k) for k in ("ctx", "width", "depth")}
    for k, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or not (2 if k == "depth" else 1) <= v <= 1 << 20:
            raise ValueError(f"{k} is {_show(v)}; expected an integer in [{2 if k == 'depth' else 1}, 1048576]")
    ctx, width, depth = sizes["ctx"], sizes["width"], sizes["depth"]
    dims = [ctx] + [width] * (depth - 1) + [1]
    out = {}
    for j in range(depth):
        out[f"layers.{2 * j}.weight"] = (dims[j + 1], dims[j])
        out[f"layers.{2 * j}.bias"] = (dims[j + 1],)
    return out


# --- weights ---------------------------------------------------------------------------------------------

def _check_weights(path: str, names: set[str]) -> None:
    if _present(path, INDEX):
        if _present(path, "model.safetensors"):     # transformers loads this one and ignores the index
            _check_safetensors(path, "model.safetensors")
        _check_index(path)
        return
    shards = sorted(n for n in names if n.endswith(".safetensors") and _present(path, n))
    if shards:
        for rel in shards:
            _check_safetensors(path, rel)
        if shards != ["model.safetensors"]:
            # Without an index transformers reads model.safetensors alone and vLLM every file: the two
            # backends would load different weights, or one of them none.
            raise ModelError(os.path.join(path, shards[0] if "model.safetensors" not in shards else INDEX),
                             f"{len(shards)} safetensors file(s) ({', '.join(shards[:3])}) and no {INDEX}: "
                             "without an index the weights must be one model.safetensors; add an index "
                             "listing the weights' files or remove the others")
        return
    pickles = sorted(n for n in names if n in PICKLES or (n.startswith("pytorch_model") and n.endswith(".bin")))
    if pickles:
        raise ModelError(os.path.join(path, pickles[0]),
                         "only safetensors weights are loaded (pickled .bin files can run code when loaded); "
                         "convert once on a trusted machine, e.g. AutoModelForCausalLM.from_pretrained(dir)"
                         ".save_pretrained(out, safe_serialization=True), and point model.path at out")
    raise ModelError(os.path.join(path, "model.safetensors"), "missing: the folder holds no *.safetensors weights")


def _check_index(path: str) -> None:
    where = os.path.join(path, INDEX)
    index = _read_object(path, INDEX)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        got = "no weight_map key" if weight_map is None else f"weight_map is {_show(weight_map)}"
        raise ModelError(where, f"{got}; expected an object mapping tensor names to .safetensors files")
    wanted: dict[str, list[str]] = {}               # file -> the tensor names the index puts there
    for tensor, rel in weight_map.items():
        if not isinstance(rel, str) or not rel:
            raise ModelError(where, f"weight_map[{_show(tensor)}] is {_show(rel)}; expected a file name")
        norm = os.path.normpath(rel)
        if os.path.isabs(rel) or norm == ".." or norm.startswith(".." + os.sep):
            raise ModelError(where, f"weight_map[{_show(tensor)}] names {_show(rel)}, outside the model folder")
        wanted.setdefault(rel, []).append(tensor)
    for rel, tensors in wanted.items():           # every listed file exists before any is read
        if not _present(path, rel):
            raise ModelError(os.path.join(path, rel),
                             f"missing: {INDEX} maps {len(tensors)} tensor(s) to it, e.g. {_show(tensors[0])}")
    for rel, tensors in wanted.items():
        held = _check_safetensors(path, rel)
        absent = [t for t in tensors if t not in held]
        if absent:
            raise ModelError(os.path.join(path, rel),
                             f"has no tensor {_show(absent[0])}, which {INDEX} maps to it"
                             + (f" ({len(absent)} such tensors)" if len(absent) > 1 else ""))


def _check_safetensors(path: str, rel: str) -> set[str]:
    """The file's tensor names, after checking its header against itself and the file's size."""
    where = os.path.join(path, rel)
    try:
        with open(where, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise ModelError(where, f"{size} bytes: too short for a safetensors file (truncated?)")
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER:
                raise ModelError(where, f"header length {n} is over the {MAX_HEADER}-byte limit "
                                        "(not a safetensors file, or corrupt)")
            if 8 + n > size:
                raise ModelError(where, f"header length {n} runs past the end of the {size}-byte file "
                                        "(truncated, or not a safetensors file)")
            raw = f.read(n)
    except OSError as e:
        raise ModelError(where, f"cannot read: {_os_reason(e)}") from None
    if len(raw) != n:
        raise ModelError(where, "shrank while being read")
    header = _parse_json(where, raw, "header ")
    if not isinstance(header, dict):
        raise ModelError(where, f"header is a JSON {_kind(header)}, not an object")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise ModelError(where, "header __metadata__ must map strings to strings")
            continue
        spans.append((*_tensor_span(where, name, info), name))
    spans.sort()
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            what = "a gap" if begin > end else "an overlap"
            raise ModelError(where, f"tensor {_show(name)} starts at data byte {begin}, expected {end} "
                                    f"({what} between tensors: corrupt header)")
        end = stop
    data = size - 8 - n
    if data < end:
        raise ModelError(where, f"truncated: the header describes {end} bytes of tensor data, the file holds "
                                f"{data} ({size} bytes, expected {8 + n + end})")
    if data > end:
        raise ModelError(where, f"{data - end} bytes after the last tensor ({size} bytes, expected {8 + n + end}): "
                                "corrupt or not one safetensors file")
    return {name for _, _, name in spans}


def _tensor_span(where: str, name: str, info) -> tuple[int, int]:
    t = f"tensor {_show(name)}"
    if not isinstance(info, dict):
        raise ModelError(where, f"header entry for {t} is a JSON {_kind(info)}, not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise ModelError(where, f"{t} has unknown dtype {_show(dtype)}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise ModelError(where, f"{t} has shape {_show(shape)}; expected a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets)
            or offsets[0] > offsets[1]):
        raise ModelError(where, f"{t} has data_offsets {_show(offsets)}; expected [begin, end], 0 <= begin <= end")
    bits = DTYPE_BITS[dtype]
    for d in shape:
        bits *= d
        if bits > 8 * 2**64:
            raise ModelError(where, f"{t} has an impossible shape {_show(shape)}")
    begin, stop = offsets
    if bits % 8:
        raise ModelError(where, f"{t} ({dtype} {_show(shape)}) does not fill whole bytes")
    if stop - begin != bits // 8:
        raise ModelError(where, f"{t} ({dtype} {_show(shape)}) needs {bits // 8} bytes but its data_offsets "
                                f"[{begin}, {stop}] span {stop - begin}")
    return begin, stop


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# --- tokenizer -------------------------------------------------------------------------------------------

def _check_tokenizer(path: str) -> None:
    if _present(path, "tokenizer.json"):
        _read_object(path, "tokenizer.json", TOKENIZER_FULL_PARSE)
        return
    for rel in SLOW_VOCABS:                         # a slow (Python) tokenizer's vocabulary
        if _present(path, rel):
            if rel == "vocab.json":
                _read_object(path, rel, TOKENIZER_FULL_PARSE)
            elif os.path.getsize(os.path.join(path, rel)) == 0:
                raise ModelError(os.path.join(path, rel), "empty file")
            return
    raise ModelError(os.path.join(path, "tokenizer.json"),
                     "missing, and no tokenizer.model, vocab.json or vocab.txt either: the folder has no tokenizer")


# --- helpers ---------------------------------------------------------------------------------------------

def _present(path: str, rel: str) -> bool:
    """True for a regular file (or a link to one); False when nothing is there; ModelError otherwise."""
    full = os.path.join(path, rel)
    if os.path.isfile(full):
        return True
    if os.path.islink(full):
        raise ModelError(full, f"broken symbolic link (to {os.readlink(full)})")
    if os.path.lexists(full):
        raise ModelError(full, "not a regular file")
    return False


def _read_object(path: str, rel: str, full_parse_limit: int = MAX_JSON) -> dict | None:
    """The file's JSON object. A file over full_parse_limit bytes gets a shallow check only, its first
    and last 4 KiB: it starts with `{` and ends with `}` (which catches a truncated file); None then."""
    where = os.path.join(path, rel)
    try:
        with open(where, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_JSON:
                raise ModelError(where, f"over {MAX_JSON // 2**20} MiB: not a plausible JSON metadata file")
            if size > full_parse_limit:
                head = f.read(4096)
                f.seek(max(0, size - 4096))
                tail = f.read()
                if head.lstrip(b" \t\r\n")[:1] != b"{":
                    raise ModelError(where, "not a JSON object (does not start with '{')")
                if tail.rstrip(b" \t\r\n")[-1:] != b"}":
                    raise ModelError(where, "not valid JSON: does not end with '}' (truncated?)")
                return None
            raw = f.read()
    except OSError as e:
        raise ModelError(where, f"cannot read: {_os_reason(e)}") from None
    obj = _parse_json(where, raw, "")
    if not isinstance(obj, dict):
        raise ModelError(where, f"is a JSON {_kind(obj)}, expected an object")
    return obj


def _decode(where: str, raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelError(where, f"{what}not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None


def _parse_json(where: str, raw: bytes, what: str):
    text = _decode(where, raw, what)
    if not text.strip():
        raise ModelError(where, f"{what}empty, expected JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelError(where, f"{what}not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise ModelError(where, f"{what}JSON nested too deeply") from None
    except ValueError:                              # an integer literal over Python's 4300-digit limit
        raise ModelError(where, f"{what}not readable JSON: a number with too many digits") from None


def _show(value, limit: int = 80) -> str:
    """A short, one-line rendering of a value read from the folder (which may be huge or deep)."""
    if isinstance(value, str):
        s = repr(value[:limit + 1])
    elif isinstance(value, (list, dict)) and len(value) > 16:
        s = f"a JSON {_kind(value)} of {len(value)} items"
    else:
        try:
            s = json.dumps(value, ensure_ascii=True)
        except (RecursionError, ValueError):
            s = f"a JSON {_kind(value)}"
    return s if len(s) <= limit else s[:limit] + "..."


def _kind(value) -> str:
    return {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null", dict: "object"}.get(type(value), type(value).__name__)


def _os_reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


# --- stop tokens -----------------------------------------------------------------------------------------

def _check_stop_ids(path: str) -> None:
    """eos_token_id of generation_config.json (else config.json) as the backends read it to stop."""
    from randopt_hpc.backends.base import eos_ids

    rel = "generation_config.json" if _present(path, "generation_config.json") else "config.json"
    try:
        eos_ids(os.path.join(path, rel))
    except ValueError as e:
        raise ModelError(os.path.join(path, rel), str(e)) from None


def has_chat_template(path: str) -> bool:
    """Where transformers finds one: tokenizer_config.json, chat_template.jinja/.json, additional_chat_templates/."""
    try:
        with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as f:
            if (json.load(f) or {}).get("chat_template"):
                return True
    except (OSError, ValueError, AttributeError):
        pass
    if any(os.path.isfile(p) and os.path.getsize(p) for p in
           (os.path.join(path, "chat_template.jinja"), os.path.join(path, "chat_template.json"))):
        return True
    extra = os.path.join(path, "additional_chat_templates")
    return os.path.isdir(extra) and any(n.endswith(".jinja") for n in os.listdir(extra))
