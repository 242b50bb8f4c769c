"""Load an RWKV checkpoint of any architecture and format into the model-ready weights dict. No PyTorch.

One path for every version and format:
    1. sniff and read    the format is told by the file's bytes (rwkv_np/formats); the reader checks
                         its headers and returns lazy tensors, nothing read yet
    2. rename            the format's names -> BlinkDL's (Hugging Face's), the architecture found from
                         them (rwkv_np.registry), its own names, and what the format's writer
                         transformed undone (rwkv.cpp's converter); two tensors for one name are refused
    3. check             the sizes read off the tensors, then every tensor's name and shape against the
                         architecture's table, and the sizes the file's metadata states
    4. materialise       each tensor read once, checked for NaN/inf, as float32 (or, with keep_16bit,
                         as stored; quantized; kept in ggml blocks; or left in the file: FileRows)
"""

import os
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import formats, registry
from .architecture import Architecture
from .config import RWKVConfig
from .errors import CheckpointError, RWKVError
from .formats.base import BadFile, Contents, Derived, FileRows
from .quantize import LAYOUT, BlockMatrix, Int8Matrix, as_float32, check_quantize

TOKENIZER_NAMES = ("tokenizer.json", "20B_tokenizer.json")


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    weights:        model-ready dict ({BlinkDL name: array} in the architecture's table order and shapes,
                    float32 C-contiguous; RWKV-4's `att.time_decay` = ln w as in BlinkDL's checkpoints);
                    with keep_16bit, 16-bit matrices stay as stored (float16, or bfloat16 as uint16);
                    with lazy_embedding, "emb.weight" is a FileRows (rows read from the file on demand)
    config:         sizes inferred from the weights' shapes; config.version names the architecture
    format:         "pth", "hf-safetensors", "hf-bin", "safetensors" or "rwkv.cpp"
    source_dtype:   dtype holding most of the elements on disk: "float32", "bfloat16", "float16", "Q5_1", ...
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
    """Load a checkpoint file or Hugging Face folder; raise CheckpointError on any problem.

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
        For architectures whose engine reads int8 (RWKV-4).
    keep_blocks: the Q4_0, Q4_1, Q5_0 and Q5_1 matrices of an rwkv.cpp file stay in their ggml
        blocks as rwkv_np.quantize.BlockMatrix (when all of them have the same format; a file
        mixing formats is dequantized; for architectures whose engine reads them: RWKV-4). With
        quantize="int8" too, they stay blocks and the other matrices (rwkv.cpp keeps the head
        fp16) become int8.
    Tensors of rwkv.cpp's quantized formats are otherwise dequantized to float32 as ggml does.
    """
    path = Path(path)
    quantize = check_quantize(quantize)
    options = dict(keep_16bit=keep_16bit, lazy_embedding=lazy_embedding, quantize=quantize,
                   keep_blocks=bool(keep_blocks))
    try:
        with ExitStack() as stack:
            return _load(path, formats.read(path, stack), **options)
    except RWKVError:
        raise
    except MemoryError:
        raise CheckpointError(f"{path}: not enough memory to hold the weights in float32") from None
    except Exception as e:  # last line of defence: a bug in a reader must still name the file
        raise CheckpointError(f"{path}: internal error while reading ({type(e).__name__}: {str(e)[:200]}); "
                              "the file is probably malformed - please report this") from e


def _load(path: Path, contents: Contents, keep_16bit: bool, lazy_embedding: bool, quantize: str | None,
          keep_blocks: bool) -> Checkpoint:
    arch, tensors, original = _rename(path, contents)
    if quantize is not None and not arch.quantizable:
        raise CheckpointError(f"{path}: an {arch.title} checkpoint; quantize={quantize!r} is implemented for "
                              "RWKV-4 only (load it without quantize)")
    config = _check(path, arch, contents, tensors, original)
    weights = _materialise(path, arch, config, tensors, original, keep_16bit=keep_16bit,
                           lazy_embedding=lazy_embedding, quantize=quantize,
                           keep_blocks=keep_blocks and arch.quantizable)
    if arch.validate is not None:
        arch.validate(weights, str(path), original)
    counts = Counter()
    for t in contents.tensors.values():
        counts[t.dtype] += t.numel
    folder = contents.tokenizer_dir or path.parent
    tokenizer = next((folder / n for n in TOKENIZER_NAMES if (folder / n).is_file()), None)
    return Checkpoint(weights, config, contents.format, counts.most_common(1)[0][0], path, tokenizer)


def load_reference(path: str | os.PathLike):
    """(reference module, nested float32 params, options) of a checkpoint, to run the plain-NumPy reference
    of its architecture without building a model (NumPy only):
    `ref, params, options = load_reference(path); ref.forward(params, tokens, **options)`."""
    checkpoint = load_checkpoint(path)
    arch = registry.get(checkpoint.config.version)
    params = arch.nest({k: as_float32(v) for k, v in checkpoint.weights.items()}, checkpoint.config.n_layer)
    return registry.reference(arch), params, checkpoint.config.reference_options()


# ---- 2. names ----------------------------------------------------------------------------------

def _renamed(path: Path, names: dict, rename, original: dict) -> dict:
    """{rename(name): value}, refusing two names that become one (naming both as the file spells them)."""
    out: dict = {}
    for name, value in names.items():
        new = rename(name)
        if new in out:
            raise CheckpointError(f"{path}: tensors {original.get(out[new][0], out[new][0])!r} and "
                                  f"{original.get(name, name)!r} are both {new!r}; refusing the file")
        out[new] = (name, value)
    for new, (name, _) in out.items():
        original[new] = original.get(name, name)
    return {new: value for new, (_, value) in out.items()}


def _rename(path: Path, contents: Contents) -> tuple[Architecture, dict[str, Derived], dict[str, str]]:
    """The architecture, {table name: Derived}, and table name -> the name in the file (for messages)."""
    original: dict[str, str] = {}
    tensors = _renamed(path, contents.tensors, contents.rename or (lambda n: n), original)
    arch = registry.detect(tensors)
    if contents.only is not None and arch.name not in contents.only:
        raise CheckpointError(f"{path}: {contents.only_why.format(title=arch.title)}")
    tensors = _renamed(path, tensors, arch.rename, original)
    derived: dict[str, tuple[str, Derived]] = {}
    for name, t in tensors.items():
        try:
            parts = contents.convert(arch.name, name, t) if contents.convert else [(name, Derived(t, tuple(t.shape)))]
        except BadFile as e:
            raise CheckpointError(f"{path}: {e}") from None
        for new, d in parts:
            if new in derived:
                raise CheckpointError(f"{path}: tensors {original[derived[new][0]]!r} and {original[name]!r} "
                                      f"both hold {new!r}; refusing the file")
            derived[new] = (name, d)
    for new, (name, _) in derived.items():
        original[new] = original[name]
    return arch, {new: d for new, (_, d) in derived.items()}, original


# ---- 3. the table ------------------------------------------------------------------------------

def _shape_ok(found: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Size-1 axes aside, the same shape: vectors are (1, 1, C) in .pth/HF files and (C,) in rwkv.cpp's."""
    return tuple(d for d in found if d != 1) == tuple(d for d in expected if d != 1)


def _check(path: Path, arch: Architecture, contents: Contents, tensors: dict[str, Derived],
           original: dict[str, str]) -> RWKVConfig:
    """The config, after checking every tensor against the architecture's table and the file's claims."""
    shapes = {name: d.shape for name, d in tensors.items()}
    dims = arch.read_dims(shapes, str(path), original)
    zero = [f"{k}={v}" for k, v in dims.items() if v < 1]
    if zero:
        raise CheckpointError(f"{path}: sizes read off the tensors are zero: {', '.join(zero)}; not a usable "
                              f"{arch.title} checkpoint")
    settings = contents.settings(arch.name)
    config = arch.configure(dims, **settings)
    expected = arch.shapes(dims)
    problems = [f"missing tensor {n} (expected shape {s})" for n, s in expected.items() if n not in tensors]
    unexpected = [n for n in tensors if n not in expected]
    problems += [f"unexpected tensor {original[n][:100]} of shape {tensors[n].shape}" for n in unexpected]
    problems += [f"tensor {original[n]} has shape {tensors[n].shape}, expected {s}"
                 for n, s in expected.items() if n in tensors and not _shape_ok(tensors[n].shape, s)]
    if problems:
        sizes = ", ".join(f"{k}={v}" for k, v in _sizes(config).items())
        more = f" (and {len(problems) - 5} more problems)" if len(problems) > 5 else ""
        newer = (" (tensors of a newer architecture than rwkv_np runs, such as RWKV-8?)"
                 if unexpected and len(unexpected) == len(problems) else "")
        raise CheckpointError(f"{path}: not a valid {arch.title} checkpoint for {sizes}: "
                              + "; ".join(problems[:5]) + more + newer)
    for key, field, value in contents.claims:
        if type(value) is not int:  # "1" or 1.0 or true would print as the number it is not
            raise CheckpointError(f"{path}: {contents.claims_from} {key} is {_json(value)} (a JSON "
                                  f"{_JSON_TYPES.get(type(value), type(value).__name__)}); expected an integer")
        if value != getattr(config, field):
            raise CheckpointError(f"{path}: {contents.claims_from} says {key}={value} but the weights have "
                                  f"{field}={getattr(config, field)}")
    return config


def _sizes(config: RWKVConfig) -> dict[str, int]:
    sizes = {"n_layer": config.n_layer, "n_embd": config.n_embd, "vocab_size": config.vocab_size,
             "ffn_dim": config.ffn_dim}
    if config.n_head:
        sizes.update(n_head=config.n_head, head_size=config.head_size)
    return sizes | dict(config.lora)


def _json(value) -> str:
    import json

    return json.dumps(value)[:40]


_JSON_TYPES = {str: "string", float: "number with a fraction or exponent", bool: "boolean", list: "array",
               dict: "object"}


# ---- 4. the weights ----------------------------------------------------------------------------

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


def _materialise(path: Path, arch: Architecture, config: RWKVConfig, tensors: dict[str, Derived],
                 original: dict[str, str], keep_16bit: bool, lazy_embedding: bool, quantize: str | None,
                 keep_blocks: bool) -> dict[str, np.ndarray]:
    expected = arch.shapes(config.dims)
    # the Linear layers' matrices, emb and head (2-D, named *.weight; LoRA matrices are small and not)
    matrices = {n for n, s in expected.items() if len(s) == 2 and n.endswith(".weight")}
    # the 4- and 5-bit formats of the matrices; kept as blocks only if there is one
    block_formats = {tensors[n].source.dtype for n in matrices if n != "emb.weight"} & set(LAYOUT)
    keep_blocks = keep_blocks and len(block_formats) == 1
    weights = {}
    for name, shape in expected.items():
        d = tensors[name]
        t = d.source
        quantized = getattr(t, "quantized", False)
        if d.transform is None and name in matrices and name != "emb.weight" and \
                (keep_blocks and t.dtype in block_formats or quantize == "int8"):
            if keep_blocks and t.dtype in block_formats:
                a = BlockMatrix(t.blocks(), t.dtype, shape)  # the bytes as the file holds them
                bad = _non_finite(a.scales())
            elif t.dtype == "Q8_0":
                a = t.int8()  # ggml's blocks are this scheme already: taken as they are, no rounding
                bad = _non_finite(a.scales)
            else:
                # the embedding stays as stored: one row of it is read per token, so its size does not
                # set the speed, and lazy_embedding can leave it in the file
                a = t.read()
                bad = _non_finite(a)
                if not bad:
                    a = Int8Matrix.quantize(a)
        elif d.transform is None and name in matrices and (t.dtype == "float32" or keep_16bit) and not quantized:
            a = t.stored(copy=True).reshape(shape)  # as stored (bfloat16 as its bit pattern), a new array
            bad = _non_finite(a)
            if (lazy_embedding and name == "emb.weight" and t.source is not None and not bad
                    and t.strides is None):  # rows of elements, contiguous in the file
                a = FileRows(t.source, t.offset, shape, a.dtype)  # checked; left in the file from now on
        else:
            a = t.read()
            bad = _non_finite(a)
            if not bad and d.transform is not None:
                try:
                    a = d.transform(a)
                except BadFile as e:
                    raise CheckpointError(f"{path}: {e}") from None
            a = np.ascontiguousarray(np.reshape(a, shape), dtype=np.float32)
        if bad:
            raise CheckpointError(f"{path}: tensor {original[name]} has {bad} non-finite values (NaN or inf)")
        weights[name] = a
    return weights
