"""Load an RWKV checkpoint, in any format we support, into the model-ready weights dict. No PyTorch.

The RWKV version (4, 5.1, 5.2, 6, 7) is recognised from the tensor names (rwkv_np.versions); RWKV-4
is checked against rwkv_np.schema, the later versions against rwkv_np.versions.param_shapes, and
both are read through the same readers, limits and non-finite checks below.

The format is detected from the bytes, never from the file name. Every reader in `rwkv_np.formats`
returns lazy tensors; here names are mapped to BlinkDL's, the config is inferred from the shapes and
EVERY tensor is checked before any weight is copied, then each is converted to float32 once (or, with
`keep_16bit`, copied as stored; with `lazy_embedding`, the embedding stays in the file, a `FileRows`).
"""

import json
import os
import re
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import numpy as np

from . import schema
from .config import RWKVConfig
from .errors import CheckpointError, RWKVError
from .formats import BadFile, LazyTensor, read_rwkv_cpp, read_safetensors, read_torch_zip
from .formats._common import FileBytes, json_int
from .formats.rwkv_cpp import MAGIC as RWKV_CPP_MAGIC

SUPPORTED = ("supported formats: a BlinkDL .pth (torch.save zip archive); a Hugging Face RWKV-4 folder "
             "(config.json + model.safetensors or pytorch_model.bin); a .safetensors file with BlinkDL or "
             "Hugging Face names; an rwkv.cpp .bin (FP32, FP16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)")
TOKENIZER_NAMES = ("tokenizer.json", "20B_tokenizer.json")
MAX_JSON_BYTES = 16 << 20

# Names that only RWKV-5/6/7 checkpoints have (BlinkDL and Hugging Face spellings).
_NEWER_RWKV = re.compile(r"time_faaaa|\.ln_x\.|\.gate\.|time_maa|time_decay_w\d|time_state|"
                         r"\.(att|attention)\.(w0|w1|w2|a0|a1|a2|v0|v1|v2|g1|g2|k_k|k_a|r_k|x_[rwkvag])$")
_HF_RENAMES = [(r"^rwkv\.embeddings\.", "emb."), (r"^rwkv\.", ""), (r"\.pre_ln\.", ".ln0."),
               (r"\.attention\.", ".att."), (r"\.feed_forward\.", ".ffn."), (r"time_mix_key$", "time_mix_k"),
               (r"time_mix_value$", "time_mix_v"), (r"time_mix_receptance$", "time_mix_r")]


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    weights:        model-ready dict (BlinkDL names, float32 C-contiguous, vectors (C,); `att.time_decay`
                    = ln w as in BlinkDL's checkpoints, see rwkv_np/schema.py);
                    with keep_16bit, 16-bit matrices stay as stored (float16, or bfloat16 as uint16);
                    with lazy_embedding, "emb.weight" is a FileRows (rows read from the file on demand)
    config:         sizes inferred from the weights' shapes
    format:         "pth", "hf-safetensors", "hf-bin", "safetensors" or "rwkv.cpp"
    source_dtype:   dtype holding most of the elements on disk: "float32", "bfloat16" or "float16"
    path:           the file or folder loaded
    tokenizer_path: tokenizer.json / 20B_tokenizer.json found beside the file or in the folder
    """

    weights: dict[str, np.ndarray]
    config: RWKVConfig
    format: str
    source_dtype: str
    path: Path
    tokenizer_path: Path | None


def load_checkpoint(path: str | os.PathLike, keep_16bit: bool = False, lazy_embedding: bool = False,
                    quantize: str | None = None, keep_blocks: bool = False) -> Checkpoint:
    """Load an RWKV-4 checkpoint file or Hugging Face folder; raise CheckpointError on any problem.

    keep_16bit: matrices stored as bfloat16 or float16 are returned as stored, not widened to
        float32: float16 arrays, and bfloat16 bit patterns as uint16 (numpy has no bfloat16).
        Half the memory; rwkv_np.RWKV widens them exactly inside its products.
    lazy_embedding: the embedding (V, C), when it can be used as stored (float32, or 16-bit with
        keep_16bit), is left in the file as a `FileRows`: a model reads one row of it per token,
        so those rows are read from the file when needed and the embedding takes no memory (it
        is checked for NaN/inf like every tensor while loading). A model using it raises
        CheckpointError if the file is truncated or rewritten in place meanwhile (see FileRows for
        what can and cannot be detected). (The other matrices are read whole for every token, so
        they are copied into memory.)
    quantize: None, or "int8": every matrix but the embedding becomes an rwkv_np.quantize.Int8Matrix
        (symmetric, per block of 32 along each row; a Q8_0 tensor of an rwkv.cpp file is taken
        as stored), one matrix at a time, so that at most one float32 copy exists at once.
    keep_blocks: the Q4_0, Q4_1, Q5_0 and Q5_1 matrices of an rwkv.cpp file (RWKV-4) stay in their
        ggml blocks as rwkv_np.quantize.BlockMatrix (when all of them have the same format; a file
        mixing formats is dequantized). With quantize="int8" too, they stay blocks and the other
        matrices (rwkv.cpp keeps the head fp16) become int8.
    Tensors of rwkv.cpp's quantized formats are otherwise dequantized to float32 as ggml does.
    """
    from .quantize import check_quantize

    path = Path(path)
    quantize = check_quantize(quantize)
    try:
        return _load(path, keep_16bit, lazy_embedding, quantize, bool(keep_blocks))
    except RWKVError:
        raise
    except MemoryError:
        raise CheckpointError(f"{path}: not enough memory to hold the weights in float32") from None
    except Exception as e:  # last line of defence: a bug in a reader must still name the file
        raise CheckpointError(f"{path}: internal error while reading ({type(e).__name__}: {str(e)[:200]}); "
                              "the file is probably malformed - please report this") from e


def _load(path: Path, keep_16bit: bool = False, lazy_embedding: bool = False, quantize: str | None = None,
          keep_blocks: bool = False) -> Checkpoint:
    options = dict(keep_16bit=keep_16bit, lazy_embedding=lazy_embedding, quantize=quantize, keep_blocks=keep_blocks)
    if path.is_dir():
        return _load_folder(path, options)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder; {SUPPORTED}")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file or folder; {SUPPORTED}")
    with ExitStack() as stack:
        fmt, tensors, cpp_header = _read_file(path, stack)
        if fmt == "pth" and _is_hf(tensors):
            fmt = "hf-bin"
        return _build(path, tensors, fmt, hf_config=None, cpp_header=cpp_header,
                      tokenizer_dir=path.parent, **options)


def _load_folder(folder: Path, options: dict) -> Checkpoint:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder}: a folder must be a Hugging Face model folder with config.json, "
                              f"but there is none; {SUPPORTED}")
    hf_config = _read_json(cfg_path)
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{cfg_path}: not a JSON object")
    model_type = hf_config.get("model_type")
    if isinstance(model_type, str) and re.fullmatch(r"rwkv[-_]?[5-9]", model_type):
        # the Hugging Face conversions of RWKV-5/6/7 (Rwkv5ForCausalLM, the RWKV7 remote code) rename
        # the tensors in ways no fixture here lets us verify: refused rather than guessed
        raise CheckpointError(f"{cfg_path}: model_type {model_type!r}: a Hugging Face conversion of a later "
                              "RWKV, which rwkv_np does not read; load the BlinkDL .pth (or a .safetensors "
                              "with BlinkDL's names) of the same model instead")
    if model_type not in (None, "rwkv"):
        raise CheckpointError(f"{cfg_path}: model_type {str(model_type)[:50]!r} is not 'rwkv' (RWKV-4)")
    with ExitStack() as stack:
        for fmt, single, index in (("hf-safetensors", "model.safetensors", "model.safetensors.index.json"),
                                   ("hf-bin", "pytorch_model.bin", "pytorch_model.bin.index.json")):
            if (folder / single).is_file():
                _, tensors, _ = _read_file(folder / single, stack)
                break
            if (folder / index).is_file():
                tensors = _read_shards(folder / index, stack)
                break
        else:
            raise CheckpointError(f"{folder}: has config.json but neither model.safetensors nor "
                                  "pytorch_model.bin (nor their .index.json shard lists)")
        return _build(folder, tensors, fmt, hf_config=hf_config, cpp_header=None, tokenizer_dir=folder, **options)


def _read_shards(index_path: Path, stack: ExitStack) -> dict[str, LazyTensor]:
    index = _read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index_path}: no weight_map of tensor name -> shard file")
    tensors: dict[str, LazyTensor] = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or shard in (".", ".."):  # shards live in the folder itself
            raise CheckpointError(f"{index_path}: shard {shard[:100]!r} is not a file name in the folder")
        if not (index_path.parent / shard).is_file():
            raise CheckpointError(f"{index_path}: shard {shard[:100]!r} is missing")
        _, part, _ = _read_file(index_path.parent / shard, stack)
        for name in part.keys() & tensors.keys():
            raise CheckpointError(f"{index_path}: tensor {name!r} appears in two shards")
        tensors.update(part)
    return tensors


def _read_json(path: Path) -> object:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            raise CheckpointError(f"{path}: larger than {MAX_JSON_BYTES} bytes; not a config file")
        return json.loads(data.decode("utf-8"), parse_int=json_int)
    except CheckpointError:
        raise
    except BadFile as e:  # an integer of thousands of digits
        raise CheckpointError(f"{path}: has {e}; refusing it") from None
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: cannot read as JSON ({type(e).__name__}: {str(e)[:120]})") from None


def _read_file(path: Path, stack: ExitStack) -> tuple[str, dict[str, LazyTensor], dict | None]:
    """Open the file and parse it with the reader its first bytes call for: (format, tensors, cpp header).

    The file is read with pread, never mapped (see FileBytes): a file truncated meanwhile gives a
    short read, our error, where a mapping would give SIGBUS. When the load finishes, a file whose
    size or modification time changed meanwhile is refused (its bytes may mix two versions); a file
    replaced by another (renamed over it) is harmless, as the open one is read to the end. Not
    detected: a rewrite in place that leaves size and modification time as they were."""
    buf = stack.enter_context(FileBytes(path))
    stack.push(_unchanged_on_success(buf))
    if len(buf) == 0:
        raise CheckpointError(f"{path}: the file is empty; {SUPPORTED}")
    head = buf[:16]
    try:
        if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            return "pth", _from(buf, read_torch_zip(buf)), None
        if len(head) >= 4 and int.from_bytes(head[:4], "little") == RWKV_CPP_MAGIC:
            tensors, header = read_rwkv_cpp(buf)
            return "rwkv.cpp", _from(buf, tensors), header
        if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 40:
            return "safetensors", _from(buf, read_safetensors(buf)[0]), None
    except BadFile as e:
        raise CheckpointError(f"{path}: {e}") from None
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise CheckpointError(f"{path}: a bare pickle, i.e. the legacy (pre-1.6, non-zip) torch.save format, "
                              "which is not supported (unpickling it safely is not possible); re-save it with "
                              "a recent PyTorch: torch.save(torch.load(f), f)")
    raise CheckpointError(f"{path}: not a recognised checkpoint (starts with {head[:8]!r}); {SUPPORTED}")


def _unchanged_on_success(buf: FileBytes):
    def check(exc_type, exc, tb) -> None:
        if exc_type is None and buf.changed():
            raise CheckpointError(f"{buf.path}: the file changed (size or modification time) while it was "
                                  "being loaded; refusing weights that may mix two versions - load it again")
    return check


def _from(buf: FileBytes, tensors: dict[str, LazyTensor]) -> dict[str, LazyTensor]:
    return {name: replace(t, source=buf) for name, t in tensors.items()}


class FileRows:
    """A (V, C) matrix left in its checkpoint file, read a few rows at a time: the embedding, of
    which a model reads one row per token. `rows[tokens]` is a new (T, C) array (`rows[i]`: (C,))
    in the stored dtype (bfloat16 as uint16); `np.asarray(rows)` reads the whole matrix.

    Rows are read with pread, not through a memory map: a mapped file's pages count in the
    process's memory, the kernel maps them in large folios (up to 2 MiB for one 1.5 KB row), and
    a mapped file truncated by another process kills this one with SIGBUS.

    A file that changes while the model uses it (it is read from the file the checkpoint was
    loaded from, the same inode even if the path now names another file):
    - truncated, or grown or rewritten in place: the next read raises CheckpointError - a short
      read, or fstat showing another size or modification time than when the load began;
    - replaced by a new file (rename, or delete and write, as most tools save): not seen, and no
      harm: the rows still come from the old file, which stays readable while it is open;
    - not detected: a rewrite in place that keeps the size and the modification time (a tool that
      restores the time, or a write within the same clock tick as the file's previous write),
      and a write that lands between the read and the fstat check (those rows are from before).
    """

    def __init__(self, source: FileBytes | Path, offset: int, shape: tuple[int, int], dtype: np.dtype) -> None:
        self._fb = source.reopen() if isinstance(source, FileBytes) else FileBytes(Path(source))
        self.path, self.offset = self._fb.path, offset
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.ndim, self.size = 2, shape[0] * shape[1]
        self.nbytes = self.size * self.dtype.itemsize
        self._row_bytes = shape[1] * self.dtype.itemsize

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            index = np.arange(self.shape[0])[index]
        idx = np.asarray(index)
        if idx.dtype.kind not in "iu" or idx.ndim > 1:
            raise IndexError(f"FileRows: index with an int or a 1-D array of ints, got {idx.dtype} {idx.shape}")
        n_rows = self.shape[0]
        rows = idx.reshape(-1).astype(np.int64, copy=False)
        rows = np.where(rows < 0, rows + n_rows, rows)  # negative indices count from the end
        bad = (rows < 0) | (rows >= n_rows)
        if bad.any():
            raise IndexError(f"FileRows: row {int(idx.reshape(-1)[np.argmax(bad)])} is out of range for {n_rows} rows")
        out = np.empty((rows.size, self.shape[1]), self.dtype)
        for n, i in enumerate(rows.tolist()):
            self._read_into(out[n], self.offset + i * self._row_bytes)
        self._check_unchanged()
        return out[0] if idx.ndim == 0 else out

    def _read_into(self, row: np.ndarray, at: int) -> None:
        try:
            got = self._fb.read_at(row, at)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read the embedding from the file ({e.strerror or e})") from None
        if got != row.nbytes:
            raise CheckpointError(f"{self.path}: the file is shorter than when it was loaded (truncated while in use?)")

    def _check_unchanged(self) -> None:
        if self._fb.changed():
            raise CheckpointError(f"{self.path}: the file changed (size or modification time) since it was loaded, "
                                  "and the model reads its embedding from it; load it again")

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        a = np.empty(self.shape, self.dtype)
        if a.size:
            self._read_into(a.reshape(-1), self.offset)  # the rows are contiguous in the file
            self._check_unchanged()
        return a if dtype is None else a.astype(dtype, copy=False)

    def copy(self) -> np.ndarray:
        """The whole matrix, read into memory."""
        return np.asarray(self)

    def __repr__(self) -> str:
        return f"FileRows({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


def _is_hf(tensors: dict[str, LazyTensor]) -> bool:
    return any(k.startswith("rwkv.") for k in tensors)


def _hf_to_blinkdl(name: str) -> str:
    for pattern, repl in _HF_RENAMES:
        name = re.sub(pattern, repl, name)
    return name


def _build(path: Path, tensors: dict[str, LazyTensor], fmt: str, hf_config: dict | None,
           cpp_header: dict | None, tokenizer_dir: Path, keep_16bit: bool = False,
           lazy_embedding: bool = False, quantize: str | None = None, keep_blocks: bool = False) -> Checkpoint:
    from .versions import detect_version

    version = detect_version(_hf_to_blinkdl(k) for k in tensors)
    if version != "4":
        if _is_hf(tensors):
            raise CheckpointError(f"{path}: Hugging Face names on an RWKV-{version} checkpoint: rwkv_np reads "
                                  "later versions with BlinkDL's names only (a .pth or .safetensors)")
        if quantize is not None:
            raise CheckpointError(f"{path}: an RWKV-{version} checkpoint; quantize={quantize!r} is implemented for "
                                  "RWKV-4 only (load it without quantize)")
        return _build_later(path, tensors, fmt, version, cpp_header, tokenizer_dir, keep_16bit, lazy_embedding)
    newer = sorted(k for k in tensors if _NEWER_RWKV.search(k))
    if newer:
        raise CheckpointError(f"{path}: has tensors like {newer[0]!r}, which RWKV-4 does not have, but not the "
                              "markers of RWKV-5.1/5.2/6/7 (att.ln_x, att.gate, att.time_maa_x, att.k_k) in "
                              "block 0: an unknown or newer RWKV that rwkv_np cannot run")
    if _is_hf(tensors):
        original = {_hf_to_blinkdl(k): k for k in tensors}
        if len(original) != len(tensors):
            raise CheckpointError(f"{path}: Hugging Face names map onto the same BlinkDL name twice")
        tensors = {new: tensors[old] for new, old in original.items()}
    else:
        original = {k: k for k in tensors}
    eps = 1e-5
    if hf_config is not None:
        value = hf_config.get("layer_norm_epsilon", eps)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
            raise CheckpointError(f"{path}: config.json layer_norm_epsilon {str(value)[:50]} is not a small "
                                  "positive number")
        eps = float(value)
    config = _infer_config(path, tensors, original, eps)
    _validate_shapes(path, tensors, original, config)
    _cross_check(path, config, hf_config, cpp_header)
    counts = Counter()
    for t in tensors.values():
        counts[t.dtype] += t.numel
    weights = _materialize(path, tensors, original, config, decay_is_neg_stored=fmt == "rwkv.cpp",
                           keep_16bit=keep_16bit, lazy_embedding=lazy_embedding, quantize=quantize,
                           keep_blocks=keep_blocks)
    tokenizer = next((tokenizer_dir / n for n in TOKENIZER_NAMES if (tokenizer_dir / n).is_file()), None)
    return Checkpoint(weights, config, fmt, counts.most_common(1)[0][0], path, tokenizer)


def _infer_config(path: Path, tensors: dict[str, LazyTensor], original: dict[str, str],
                  eps: float) -> RWKVConfig:
    emb = tensors.get("emb.weight")
    if emb is None:
        found = ", ".join(sorted(original.values())[:6]) or "no tensors at all"
        raise CheckpointError(f"{path}: no emb.weight (or rwkv.embeddings.weight) tensor, so not an RWKV-4 "
                              f"checkpoint (found: {found})")
    if len(emb.shape) != 2 or 0 in emb.shape:
        raise CheckpointError(f"{path}: tensor {original['emb.weight']} has shape {emb.shape}, expected "
                              "(vocab_size, n_embd)")
    vocab_size, n_embd = emb.shape
    layers = {int(m.group(1)) for k in tensors if (m := re.match(r"blocks\.(\d{1,9})\.", k))}
    if not layers:
        raise CheckpointError(f"{path}: no blocks.N tensors; an RWKV-4 checkpoint has at least one block")
    n_layer = max(layers) + 1
    if len(layers) != n_layer:
        # the layer count a name claims is not trusted: only the blocks present are counted, and
        # the first gaps are found in at most len(layers) + 5 steps, whatever the largest index
        missing = list(islice((i for i in range(n_layer) if i not in layers), 5))
        raise CheckpointError(f"{path}: block indices must run 0..{n_layer - 1} without gaps; blocks "
                              f"{missing}{' and more' if n_layer - len(layers) > 5 else ''} are missing")
    ffn_key = tensors.get("blocks.0.ffn.key.weight")
    if ffn_key is None:
        raise CheckpointError(f"{path}: missing tensor blocks.0.ffn.key.weight (needed for the FFN width)")
    if len(ffn_key.shape) != 2 or ffn_key.shape[0] == 0:
        raise CheckpointError(f"{path}: tensor {original['blocks.0.ffn.key.weight']} has shape "
                              f"{ffn_key.shape}, expected (ffn_dim, {n_embd})")
    return RWKVConfig(n_layer, n_embd, vocab_size, ffn_key.shape[0], eps)


def expected_shapes(config: RWKVConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of an RWKV-4 checkpoint (raw BlinkDL names) with its shape; vectors as (C,)."""
    return schema.shapes(config)


def _shape_ok(found: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    if len(expected) == 1:  # time_mix is (1, 1, C) in .pth/HF files and (C,) in rwkv.cpp ones
        return found[-1:] == expected and all(d == 1 for d in found[:-1])
    return found == expected


def _validate_shapes(path: Path, tensors: dict[str, LazyTensor], original: dict[str, str],
                     config: RWKVConfig) -> None:
    expected = expected_shapes(config)
    problems = [f"missing tensor {n} (expected shape {s})" for n, s in expected.items() if n not in tensors]
    problems += [f"unexpected tensor {original[n][:100]} of shape {t.shape}"
                 for n, t in tensors.items() if n not in expected]
    problems += [f"tensor {original[n]} has shape {tensors[n].shape}, expected {s}"
                 for n, s in expected.items() if n in tensors and not _shape_ok(tensors[n].shape, s)]
    if problems:
        more = f" (and {len(problems) - 5} more problems)" if len(problems) > 5 else ""
        raise CheckpointError(f"{path}: not a valid RWKV-4 checkpoint for n_layer={config.n_layer}, "
                              f"n_embd={config.n_embd}, vocab_size={config.vocab_size}, "
                              f"ffn_dim={config.ffn_dim}: " + "; ".join(problems[:5]) + more)


def _cross_check(path: Path, config: RWKVConfig, hf_config: dict | None, cpp_header: dict | None) -> None:
    claims = {}
    if hf_config is not None:
        claims = {"num_hidden_layers": ("n_layer", hf_config.get("num_hidden_layers")),
                  "hidden_size": ("n_embd", hf_config.get("hidden_size")),
                  "attention_hidden_size": ("n_embd", hf_config.get("attention_hidden_size")),
                  "vocab_size": ("vocab_size", hf_config.get("vocab_size")),
                  "intermediate_size": ("ffn_dim", hf_config.get("intermediate_size"))}
        where = "config.json"
    if cpp_header is not None:
        claims = {k: (k.replace("n_vocab", "vocab_size"), cpp_header[k]) for k in ("n_vocab", "n_embd", "n_layer")}
        where = "the rwkv.cpp header"
    for key, (field, value) in claims.items():
        if value is None:
            continue
        if type(value) is not int:  # "1" or 1.0 or true would print as the number it is not
            raise CheckpointError(f"{path}: {where} {key} is {json.dumps(value)[:40]} (a JSON "
                                  f"{_JSON_TYPES.get(type(value), type(value).__name__)}); expected an integer")
        if value != getattr(config, field):
            raise CheckpointError(f"{path}: {where} says {key}={value} but the weights have "
                                  f"{field}={getattr(config, field)}")


_JSON_TYPES = {str: "string", float: "number with a fraction or exponent", bool: "boolean", list: "array",
               dict: "object"}


# inf/NaN have an all-ones exponent: the bits to test, by stored dtype
_EXPONENT = {np.dtype(np.float32): (np.uint32, 0x7F800000), np.dtype(np.uint16): (np.uint16, 0x7F80),
             np.dtype(np.float16): (np.uint16, 0x7C00)}


def _non_finite(a: np.ndarray) -> int:
    """The number of inf/NaN elements of a stored tensor: one pass over its bits, a block at a time."""
    bits, exponent = _EXPONENT[a.dtype]
    exponent = bits(exponent)
    src = a.reshape(-1).view(bits)
    block = 1 << 16
    masked, flags = np.empty(min(block, src.size), bits), np.empty(min(block, src.size), bool)
    bad = 0
    for start in range(0, src.size, block):
        chunk = src[start:start + block]
        n = chunk.size
        np.bitwise_and(chunk, exponent, out=masked[:n])
        np.equal(masked[:n], exponent, out=flags[:n])
        bad += int(np.count_nonzero(flags[:n]))
    return bad


def _materialize(path: Path, tensors: dict[str, LazyTensor], original: dict[str, str], config: RWKVConfig,
                 decay_is_neg_stored: bool, keep_16bit: bool = False,
                 lazy_embedding: bool = False, quantize: str | None = None,
                 keep_blocks: bool = False) -> dict[str, np.ndarray]:
    from .quantize import LAYOUT, BlockMatrix, Int8Matrix

    # the 4- and 5-bit formats of the matrices; kept as blocks only if there is one
    block_formats = {t.dtype for n, t in tensors.items() if len(t.shape) == 2 and n != "emb.weight"} & set(LAYOUT)
    keep_blocks = keep_blocks and len(block_formats) == 1
    weights = {}
    for name, shape in expected_shapes(config).items():
        t = tensors[name]
        if keep_blocks and len(shape) == 2 and name != "emb.weight" and t.dtype in block_formats:
            a = BlockMatrix(t.blocks(), t.dtype, shape)  # the bytes as the file holds them
            bad = _non_finite(a.scales())
        elif quantize == "int8" and len(shape) == 2 and name != "emb.weight":
            # the embedding stays as stored: one row of it is read per token, so its size does not
            # set the speed, and lazy_embedding can leave it in the file
            if t.dtype == "Q8_0":
                a = t.int8()  # ggml's blocks are this scheme already: taken as they are, no rounding
                bad = _non_finite(a.scales)
            else:
                a = t.read()
                bad = _non_finite(a)
                if not bad:
                    a = Int8Matrix.quantize(a)
        elif len(shape) == 2 and (t.dtype == "float32" or keep_16bit):
            a = t.stored(copy=True)  # as stored (bfloat16 as its bit pattern), read into a new array
            bad = _non_finite(a)
            if (lazy_embedding and name == "emb.weight" and t.source is not None and not bad
                    and not getattr(t, "quantized", False)):  # a quantized one is not rows of elements
                a = FileRows(t.source, t.offset, shape, a.dtype)  # checked; left in the file from now on
        else:
            a = t.read().reshape(shape)
            bad = _non_finite(a)
        if bad:
            raise CheckpointError(f"{path}: tensor {original[name]} has {bad} non-finite values (NaN or inf)")
        if decay_is_neg_stored and name.endswith("att.time_decay"):
            # rwkv.cpp stores -w; the library's convention is the checkpoints' ln w (rwkv_np/schema.py)
            with np.errstate(divide="ignore", invalid="ignore"):  # reported just below, naming the tensor
                a = np.log(-a.astype(np.float64)).astype(np.float32)
            if not np.isfinite(a).all():
                raise CheckpointError(f"{path}: tensor {original[name]} holds a decay -w that is not negative")
        if name.endswith("att.time_decay"):
            with np.errstate(over="ignore"):
                w = np.exp(a.astype(np.float64)).astype(np.float32)
            if not np.isfinite(w).all():
                raise CheckpointError(f"{path}: tensor {original[name]} gives a decay rate w = exp(time_decay) "
                                      "that overflows float32")
        weights[name] = a
    return weights


def _build_later(path: Path, tensors: dict[str, LazyTensor], fmt: str, version: str, cpp_header: dict | None,
                 tokenizer_dir: Path, keep_16bit: bool, lazy_embedding: bool) -> Checkpoint:
    """An RWKV-5.1/5.2/6/7 checkpoint (BlinkDL names; rwkv.cpp's converter undone): every tensor's
    name and shape checked first (versions.check_shapes, on the shapes alone), then each read once,
    checked for NaN/inf, and given in the references' convention (versions.from_rwkv_cpp).

    Weights: flat {BlinkDL name: array} with param_shapes' shapes: vectors and the small tensors
    float32; the Linear matrices, emb and head float32 or, with keep_16bit, as stored; emb possibly
    a FileRows."""
    from .versions import LN_X_EPS, LN_X_EPS_RWKV_CPP, check_shapes, config_from_weights, from_rwkv_cpp

    is_cpp = fmt == "rwkv.cpp"
    where = str(path)
    # the shapes after the converter's inverse, computed on zero-stride stand-ins (no data read)
    stand_in = {n: np.broadcast_to(np.zeros((), np.float32), t.shape) for n, t in tensors.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        shaped = from_rwkv_cpp(stand_in, version, where) if is_cpp else stand_in
    _, shapes = check_shapes(shaped, version, where)
    config = config_from_weights(shaped, version, LN_X_EPS_RWKV_CPP[version] if is_cpp else LN_X_EPS, where)
    _cross_check(path, config, None, cpp_header)
    counts = Counter()
    for t in tensors.values():
        counts[t.dtype] += t.numel
    # the big matrices are the ones kept as stored; everything else is small and read as float32
    # (the Linear layers, emb and head: the 2-D tensors named *.weight; LoRA matrices are not)
    big = {n for n, s in shapes.items() if len(s) == 2 and n.endswith(".weight")}
    raw = {}
    for name, t in tensors.items():
        if name in big and (t.dtype == "float32" or keep_16bit):
            a = t.stored(copy=True)
            bad = _non_finite(a)
            if lazy_embedding and name == "emb.weight" and t.source is not None and not bad and a.ndim == 2:
                a = FileRows(t.source, t.offset, a.shape, a.dtype)
        else:
            a = t.read()
            bad = _non_finite(a)
        if bad:
            raise CheckpointError(f"{path}: tensor {name} has {bad} non-finite values (NaN or inf)")
        raw[name] = a
    lazy = {n: a for n, a in raw.items() if isinstance(a, FileRows)}  # kept in the file, not converted
    flat = from_rwkv_cpp({n: a for n, a in raw.items() if n not in lazy}, version, where) if is_cpp else raw
    flat.update(lazy)
    weights = {}
    for name, shape in shapes.items():
        a = flat[name]
        if isinstance(a, FileRows):
            weights[name] = a
            continue
        a = np.ascontiguousarray(np.asarray(a).reshape(shape))
        if a.dtype == np.float64:  # the converter's inverse works in float64
            a = a.astype(np.float32)
        weights[name] = a
    tokenizer = next((tokenizer_dir / n for n in TOKENIZER_NAMES if (tokenizer_dir / n).is_file()), None)
    return Checkpoint(weights, config, fmt, counts.most_common(1)[0][0], path, tokenizer)
