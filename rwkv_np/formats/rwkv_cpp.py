"""Read an rwkv.cpp model file (ggml-style): a header of six int32, then one record per tensor.

Record: int32 n_dims, int32 key length, int32 data type, n_dims int32 sizes in REVERSE order of the
PyTorch shape, the UTF-8 key, the raw data. The keys are BlinkDL's names, but rwkv.cpp's converter
(python/convert_pytorch_to_ggml.py) stored some tensors transformed, per version; `convert` gives
BlinkDL's parameters back (see CONVERTED). ln_x's epsilon is rwkv.cpp's own (LN_X_EPS).

Quantized tensors (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, in files of version 101) are `QuantizedTensor`s:
read() dequantizes them exactly as ggml does (rwkv_np/quantize.py); a Q8_0 tensor can also be
taken as it is stored (`int8()`). Version-100 files used ggml's older block layouts and the
retired Q4_1_O, Q4_2, Q4_3 formats: their quantized tensors are refused by name.
"""

import struct
from dataclasses import dataclass

import numpy as np

from ..quantize import BLOCK, BLOCK_BYTES, GGML_FORMATS, dequantize_blocks, int8_from_q8_0, q8_0_blocks
from .base import BadFile, Buffer, Contents, Derived, LazyTensor, describe, elements

MAGIC = 0x67676D66  # "ggmf"
VERSIONS = (100, 101)
_TYPES = {0: "float32", 1: "float16"}
_QUANTIZED = {2: "Q4_0", 3: "Q4_1", 4: "Q4_1_O", 5: "Q4_2", 6: "Q4_3", 7: "Q5_0", 8: "Q5_1", 9: "Q8_0"}
MAX_KEY_BYTES = 1024
# blocks dequantized per step: bounds the temporaries (about 1 KiB per block) whatever the tensor
_BLOCKS_PER_READ = 1 << 15


def _quantized_error(dtype: int, where: str, version: int) -> BadFile:
    if dtype in GGML_FORMATS:  # readable, but not in a version-100 file
        return BadFile(f"{where} has data type {dtype} ({_QUANTIZED[dtype]}) in a file of version {version}, "
                       "whose quantized blocks use ggml's layout from before May 2023, which rwkv_np does not "
                       "read; quantize the model again with a current rwkv.cpp (file version 101)")
    return BadFile(f"{where} has data type {dtype} ({_QUANTIZED[dtype]}), a quantized format that rwkv.cpp "
                   "itself retired; rwkv_np reads Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 (file version 101), FP32 "
                   "and FP16")


def _readable(dtype: int, version: int) -> bool:
    return dtype in _TYPES or (dtype in GGML_FORMATS and version >= 101)


@dataclass(frozen=True)
class QuantizedTensor(LazyTensor):
    """A tensor in one of ggml's block formats (dtype "Q4_0", ..., "Q8_0"): rows of the last axis
    cut into blocks of 32 weights (rwkv_np/quantize.py). read() and stored() give float32,
    dequantized as ggml does; int8() gives a Q8_0 tensor's blocks as an Int8Matrix, blocks() any
    format's bytes as stored."""

    quantized = True

    @property
    def nbytes(self) -> int:
        return self.numel // BLOCK * BLOCK_BYTES[self.dtype]

    def _blocks(self):
        """(first block, raw (n, block bytes) uint8) over the tensor, a bounded number at a time."""
        size = BLOCK_BYTES[self.dtype]
        n = self.numel // BLOCK
        for a in range(0, n, _BLOCKS_PER_READ):
            m = min(_BLOCKS_PER_READ, n - a)
            yield a, elements(self.buf, "u1", (m * size,), self.offset + a * size).reshape(m, size)

    def read(self) -> np.ndarray:
        out = np.empty((self.numel // BLOCK, BLOCK), np.float32)
        for a, raw in self._blocks():
            out[a:a + len(raw)] = dequantize_blocks(raw, self.dtype)
        return out.reshape(self.shape)

    def stored(self, copy: bool) -> np.ndarray:
        return self.read()

    def blocks(self) -> np.ndarray:
        """A 2-D tensor's blocks as they are stored: (rows, row length / 32 * block bytes) uint8."""
        size = BLOCK_BYTES[self.dtype]
        out = np.empty((self.numel // BLOCK, size), np.uint8)
        for a, raw in self._blocks():
            out[a:a + len(raw)] = raw
        return out.reshape(self.shape[0], -1)

    def int8(self):
        """A 2-D Q8_0 tensor as an Int8Matrix holding its blocks as they are (no rounding)."""
        if self.dtype != "Q8_0" or len(self.shape) != 2:
            raise ValueError(f"int8() needs a 2-D Q8_0 tensor, not {self.dtype} {self.shape}")
        n = self.numel // BLOCK
        q, d = np.empty((n, BLOCK), np.int8), np.empty(n, np.float32)
        for a, raw in self._blocks():
            q[a:a + len(raw)], d[a:a + len(raw)] = q8_0_blocks(raw)
        return int8_from_q8_0(q, d, self.shape)


def read_rwkv_cpp(buf: Buffer) -> tuple[dict[str, LazyTensor], dict[str, int]]:
    """Parse an rwkv.cpp file into ({name: LazyTensor}, header {n_vocab, n_embd, n_layer, data_type})."""
    if len(buf) < 24:
        raise BadFile(f"file of {len(buf)} bytes is too short for an rwkv.cpp header (24 bytes)")
    magic, version, n_vocab, n_embd, n_layer, data_type = struct.unpack("<6i", buf[0:24])
    if magic != MAGIC:
        raise BadFile(f"magic {magic:#x} is not rwkv.cpp's {MAGIC:#x}")
    if version not in VERSIONS:
        raise BadFile(f"rwkv.cpp file version {version} is not one of {VERSIONS}")
    if data_type in _QUANTIZED and not _readable(data_type, version):
        raise _quantized_error(data_type, "the file header", version)
    if not _readable(data_type, version):
        raise BadFile(f"the file header has unknown data type {data_type}; expected 0 (FP32), 1 (FP16) or "
                      "a quantized format (2 Q4_0, 3 Q4_1, 7 Q5_0, 8 Q5_1, 9 Q8_0)")
    header = {"n_vocab": n_vocab, "n_embd": n_embd, "n_layer": n_layer, "data_type": data_type}
    tensors: dict[str, LazyTensor] = {}
    pos, size = 24, len(buf)
    while pos < size:
        if size - pos < 12:
            raise BadFile(f"truncated tensor record at byte {pos}")
        n_dims, key_len, dtype = struct.unpack("<3i", buf[pos:pos + 12])
        where = f"tensor record at byte {pos}"
        if not 1 <= n_dims <= 4:
            raise BadFile(f"{where} has {n_dims} dimensions; rwkv.cpp tensors have 1 to 4")
        if not 1 <= key_len <= MAX_KEY_BYTES:
            raise BadFile(f"{where} has a key of {key_len} bytes (expected 1..{MAX_KEY_BYTES})")
        if dtype in _QUANTIZED and not _readable(dtype, version):
            raise _quantized_error(dtype, where, version)
        if not _readable(dtype, version):
            raise BadFile(f"{where} has unknown data type {dtype}; expected 0 (FP32), 1 (FP16) or a "
                          "quantized format (2 Q4_0, 3 Q4_1, 7 Q5_0, 8 Q5_1, 9 Q8_0)")
        pos += 12
        if size - pos < 4 * n_dims + key_len:
            raise BadFile(f"{where} is truncated")
        dims = struct.unpack(f"<{n_dims}i", buf[pos:pos + 4 * n_dims])
        pos += 4 * n_dims
        if any(d < 0 for d in dims):
            raise BadFile(f"{where} has negative sizes {dims}")
        try:
            key = bytes(buf[pos:pos + key_len]).decode("utf-8")
        except UnicodeDecodeError:
            raise BadFile(f"{where} has a key that is not UTF-8") from None
        pos += key_len
        if key in tensors:
            raise BadFile(f"tensor {describe(key)} appears twice")
        shape = tuple(reversed(dims))
        if dtype in GGML_FORMATS:
            # ggml quantizes whole blocks of 32 along each row (dims[0], its ne0)
            if dims[0] % BLOCK:
                raise BadFile(f"tensor {describe(key)} of shape {shape} is stored as {_QUANTIZED[dtype]}, "
                              f"but its rows of {dims[0]} weights are not whole blocks of {BLOCK}")
            t = QuantizedTensor(shape, GGML_FORMATS[dtype][0], buf, pos)
        else:
            t = LazyTensor(shape, _TYPES[dtype], buf, pos)
        if t.nbytes > size - pos:
            raise BadFile(f"tensor {describe(key)} of shape {t.shape} needs {t.nbytes} bytes but only "
                          f"{size - pos} remain (truncated or hostile file)")
        tensors[key] = t
        pos += t.nbytes
    return tensors, header


def sniff(head: bytes) -> bool:
    return len(head) >= 4 and int.from_bytes(head[:4], "little") == MAGIC


def read(buf: Buffer) -> Contents:
    tensors, header = read_rwkv_cpp(buf)
    return Contents("rwkv.cpp", tensors, convert=convert, settings=settings,
                    claims=tuple((key, key.replace("n_vocab", "vocab_size"), header[key])
                                 for key in ("n_vocab", "n_embd", "n_layer")),
                    claims_from="the rwkv.cpp header")


# ---- undoing rwkv.cpp's converter ---------------------------------------------------------------

# The epsilon of ln_x that rwkv.cpp uses: 1e-5 for RWKV-5, 64e-5 for 6 and 7 (BlinkDL's code: 64e-5
# for all). Its expected logits for the tiny 5.1 and 5.2 files follow: reproduced to 3e-6 with 1e-5,
# missed by up to 1.3 with 64e-5 (the models' cross-entropy on text is the same to 1e-3 nats either
# way, so the files cannot tell which one they were trained with). Each source gets its own peer's value.
LN_X_EPS = {"5.1": 1e-5, "5.2": 1e-5, "6": 64e-5, "7": 64e-5}


def settings(arch: str) -> dict:
    return {"ln_x_eps": LN_X_EPS[arch]} if arch in LN_X_EPS else {}


def _log_checked(a: np.ndarray, name: str, low: float, high: float) -> np.ndarray:
    """log(a) in float64, after checking a lies in [low, high] (a converter output outside it is not
    one rwkv.cpp could have written, and its log would be NaN)."""
    a = np.asarray(a, np.float64)
    if not np.all((a >= low) & (a <= high)):
        raise BadFile(f"tensor {name} holds values outside [{low}, {high}] (min {np.nanmin(a):.4g}, max "
                      f"{np.nanmax(a):.4g}), which rwkv.cpp's converter cannot have written")
    with np.errstate(divide="ignore"):  # log(0) = -inf is the right answer at the ends of the range
        return np.log(a)


def _rwkv4_decay(name: str):
    def ln_w(a: np.ndarray) -> np.ndarray:  # -w -> ln w
        with np.errstate(divide="ignore", invalid="ignore"):  # reported just below, naming the tensor
            out = np.log(-a.astype(np.float64))
        if not np.isfinite(out).all():
            raise BadFile(f"tensor {name} holds a decay -w that is not negative")
        return out
    return ln_w


def _decay_5(name: str):
    def omega(a: np.ndarray) -> np.ndarray:  # exp(-exp(omega)) -> omega
        with np.errstate(divide="ignore"):  # a stored 1.0 (no decay) -> log(0) = -inf, consistent
            return np.log(-_log_checked(a, name, 0.0, 1.0))
    return omega


def _log_of(name: str):
    return lambda a: _log_checked(a, name, 0.0, np.inf)


def _transposed(t: LazyTensor) -> Derived:
    return Derived(t, tuple(reversed(t.shape)), lambda a: a.T)


#: what the converter did, per version (BlinkDL's names; the time_* vectors are also squeezed):
#:   4:   time_decay stored as -exp(time_decay);
#:   5.1: time_decay as exp(-exp(time_decay)) and time_first as exp(time_first), both (H, 1, 1);
#:   5.2: time_decay as exp(-exp(time_decay)) and time_faaaa with a trailing axis of 1;
#:   6:   time_maa_w1, time_decay_w1 and time_decay_w2 transposed, time_maa_w2 with its last two
#:        axes swapped, time_decay reshaped to (H, N, 1), time_faaaa with a trailing axis of 1;
#:   7:   the LoRA matrices w1 w2 a1 a2 v1 v2 g1 g2 transposed, and x_r x_w x_k x_v x_a x_g
#:        concatenated, in that order, as x_rwkvag (6, 1, C).
#: The logs are taken in float64: exp(-exp(d)) near 1 (a slow decay) keeps the decay itself to float32
#: precision, and the round trip gives it back to within an ulp. (Trailing axes of 1 need no undoing.)
CONVERTED = {"4": ("time_decay",), "5.1": ("time_decay", "time_first"), "5.2": ("time_decay",),
             "6": ("time_maa_w1", "time_decay_w1", "time_decay_w2", "time_decay", "time_maa_w2"),
             "7": ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2", "x_rwkvag")}


def convert(arch: str, name: str, t: LazyTensor) -> list[tuple[str, Derived]]:
    """The BlinkDL parameters that tensor `name` of an rwkv.cpp file of architecture `arch` holds."""
    end = name.rsplit(".", 1)[-1] if ".att." in name else ""
    if end not in CONVERTED.get(arch, ()):
        return [(name, Derived(t, tuple(t.shape)))]
    if arch == "4":
        return [(name, Derived(t, tuple(t.shape), _rwkv4_decay(name)))]
    if arch in ("5.1", "5.2") and end == "time_decay":
        return [(name, Derived(t, tuple(t.shape), _decay_5(name)))]
    if end == "time_first":
        return [(name, Derived(t, tuple(t.shape), _log_of(name)))]
    if end == "time_decay":  # RWKV-6: (H, N, 1) -> (A,)
        return [(name, Derived(t, (t.numel,), lambda a: a.reshape(-1)))]
    if end == "time_maa_w2":
        shape = tuple(t.shape[:-2]) + (t.shape[-1], t.shape[-2]) if len(t.shape) >= 2 else tuple(t.shape)
        return [(name, Derived(t, shape, lambda a: a.swapaxes(-1, -2)))]
    if end == "x_rwkvag":
        if len(t.shape) < 1 or t.shape[0] != 6:
            raise BadFile(f"tensor {name} has shape {tuple(t.shape)}, expected (6, 1, C)")
        prefix = name[: -len("x_rwkvag")]
        return [(prefix + "x_" + c, Derived(t, tuple(t.shape[1:]), lambda a, j=j: a[j])) for j, c in enumerate("rwkvag")]
    return [(name, _transposed(t))]  # RWKV-6's w1 matrices, RWKV-7's LoRA matrices

