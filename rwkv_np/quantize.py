"""Weights held other than as float32: 16-bit bit patterns, ggml's block formats (rwkv.cpp's quantized
files) and rwkv_np's int8 mode. The NumPy side; rwkv_np/products.py multiplies them in compiled code.

16-bit weights kept as a checkpoint stores them: float16 arrays, and bfloat16 bit patterns as uint16
(NumPy has no bfloat16); `as_float32` widens either exactly.

ggml's block formats (rwkv.cpp files of version 101; the layouts of ggml since its May 2023
"bit shuffling" change). Every format cuts each row of a matrix (PyTorch's last axis, ggml's ne0)
into blocks of 32 consecutive weights; a block is stored as:
    Q4_0  fp16 d, 16 bytes of nibbles                    w = d * (q - 8)      18 bytes
    Q4_1  fp16 d, fp16 m, 16 bytes of nibbles            w = d * q + m        20 bytes
    Q5_0  fp16 d, uint32 qh, 16 bytes of nibbles         w = d * (q - 16)     22 bytes
    Q5_1  fp16 d, fp16 m, uint32 qh, 16 bytes of nibbles w = d * q + m        24 bytes
    Q8_0  fp16 d, 32 int8 q                              w = d * q            34 bytes
The nibbles: byte j (0..15) holds weight j in its low 4 bits and weight j + 16 in its high 4 bits.
Q5's fifth bit of weight i is bit i of qh (little-endian). The arithmetic is ggml's dequantize_row_*:
float32, the fp16 scales widened exactly, q an exact small integer, one rounding per product and
one for the + m (no fused multiply-add).

rwkv_np's int8 mode (`load_model(path, quantize="int8")`): every matrix but the embedding is held as
`Int8Matrix`: symmetric, per block of 32 consecutive weights along each row (the last block of a
row may be shorter), q = round(w / s) in [-127, 127] with s = max|w| / 127 of the block, s kept as
float32 (N, ceil(K / 32)) beside the int8 (N, K). 1.125 bytes per weight. A weight's error is at
most s / 2, i.e. 1/254 of the largest magnitude in its block: per block rather than per row because
one large weight then coarsens only its 31 neighbours, not its whole row (tests and docs/performance.md
measure both). A Q8_0 block maps onto it exactly (s = d).

`BlockMatrix` (`load_model(path, keep_blocks=True)`): an rwkv.cpp file's Q4_0, Q4_1, Q5_0 or Q5_1
matrix kept as the file's bytes (0.5625 to 0.75 bytes per weight), each row its blocks;
rwkv_np/products.py unpacks them in registers.
"""

from __future__ import annotations

import numpy as np

from .errors import ArgumentError

BLOCK = 32
#: ggml type id -> (name, bytes per block of 32 weights)
GGML_FORMATS = {2: ("Q4_0", 18), 3: ("Q4_1", 20), 7: ("Q5_0", 22), 8: ("Q5_1", 24), 9: ("Q8_0", 34)}
BLOCK_BYTES = {name: size for name, size in GGML_FORMATS.values()}
#: the 4- and 5-bit formats: byte offsets in a block of the fp16 scale d, of the fp16 minimum m (or
#: None), of the uint32 fifth bits qh (or None), of the 16 bytes of nibbles; and the zero point
#: subtracted from q. w = d (q - zero), or d q + m. Everything that reads these blocks derives from it.
LAYOUT = {"Q4_0": (0, None, None, 2, 8), "Q4_1": (0, 2, None, 4, 0),
          "Q5_0": (0, None, 2, 6, 16), "Q5_1": (0, 2, 4, 8, 0)}
QUANTIZE_MODES = (None, "int8")


def as_float32(a) -> np.ndarray:
    """A weight as float32; uint16 arrays are bfloat16 bit patterns (the top half of a float32)."""
    a = np.asarray(a)  # a FileRows embedding is read whole here; an Int8Matrix or BlockMatrix dequantized
    if a.dtype == np.uint16:
        return (a.astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(a, dtype=np.float32)


def kernel_array(a):
    """The array the compiled kernels read for a matrix: an int8 one's q, a ggml-blocks one's bytes."""
    return a.q if isinstance(a, Int8Matrix) else a.raw if isinstance(a, BlockMatrix) else a


def check_quantize(quantize) -> str | None:
    """The `quantize` argument, checked: None (weights as stored) or "int8"."""
    if quantize is None or (isinstance(quantize, str) and quantize in QUANTIZE_MODES):
        return quantize
    raise ArgumentError(f"quantize: expected None or 'int8', got {str(quantize)[:40]!r}")


# ---- ggml blocks -> float32 ------------------------------------------------------------------

def _fp16(raw: np.ndarray, at: int) -> np.ndarray:
    """The little-endian fp16 at byte `at` of every block (raw (n, block_bytes) uint8) as float32 (n, 1)."""
    return np.ascontiguousarray(raw[:, at:at + 2]).view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 16) bytes -> (n, 32) 4-bit values: the low nibbles are weights 0..15, the high ones 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _high_bits(raw: np.ndarray, at: int) -> np.ndarray:
    """Q5's 32 fifth bits (uint32 little-endian at byte `at`) as (n, 32) values 0 or 16."""
    qh = np.ascontiguousarray(raw[:, at:at + 4]).view("<u4")  # (n, 1)
    return (((qh >> np.arange(32, dtype=np.uint32)) & 1) << 4).astype(np.uint8)


def dequantize_blocks(raw: np.ndarray, fmt: str) -> np.ndarray:
    """Blocks raw (n, BLOCK_BYTES[fmt]) uint8 of ggml format fmt -> their weights, float32 (n, 32).
    A NaN or inf scale gives NaN or inf weights, quietly: the loader counts them and names the tensor."""
    with np.errstate(invalid="ignore", over="ignore"):
        return _dequantize(raw, fmt)


def _dequantize(raw: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "Q8_0":
        return raw[:, 2:34].view(np.int8).astype(np.float32) * _fp16(raw, 0)
    if fmt not in LAYOUT:
        raise ValueError(f"unknown ggml block format {fmt!r}")
    d_at, m_at, qh_at, qs_at, zero = LAYOUT[fmt]
    q = _nibbles(raw[:, qs_at:qs_at + 16])
    if qh_at is not None:
        q = q | _high_bits(raw, qh_at)
    if m_at is None:
        return (q.astype(np.float32) - np.float32(zero)) * _fp16(raw, d_at)
    return q.astype(np.float32) * _fp16(raw, d_at) + _fp16(raw, m_at)


def q8_0_blocks(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 blocks raw (n, 34) -> (q (n, 32) int8, d (n,) float32): the same numbers, not dequantized."""
    return raw[:, 2:34].view(np.int8).copy(), _fp16(raw, 0)[:, 0]


# ---- int8 mode -----------------------------------------------------------------------------------

class Int8Matrix:
    """A (N, K) matrix quantized symmetric per block of 32 along each row: q (N, K) int8 and
    scales (N, ceil(K / 32)) float32; weight [n, j] = scales[n, j // 32] * q[n, j].

    np.asarray(m) gives the float32 matrix (dequantized); m[rows] the float32 rows; m[a:b] an
    Int8Matrix of those rows (no copy)."""

    dtype = np.dtype(np.int8)
    ndim = 2

    def __init__(self, q: np.ndarray, scales: np.ndarray):
        q, scales = np.ascontiguousarray(q, np.int8), np.ascontiguousarray(scales, np.float32)
        if q.ndim != 2 or scales.shape != (q.shape[0], -(-q.shape[1] // BLOCK)):
            raise ArgumentError(f"Int8Matrix: scales of shape {scales.shape} do not fit q of shape {q.shape}")
        self.q, self.scales = q, scales
        self.shape = q.shape
        self.size = q.size
        self.nbytes = q.nbytes + scales.nbytes

    @classmethod
    def quantize(cls, w: np.ndarray) -> "Int8Matrix":
        """Quantize a float (N, K) matrix (the module docstring states the scheme)."""
        w = np.asarray(w, np.float32)
        N, K = w.shape
        nb = -(-K // BLOCK)
        q = np.empty((N, K), np.int8)
        scales = np.empty((N, nb), np.float32)
        rows = max(1, (1 << 20) // max(K, 1))  # a few MiB of temporaries at a time
        for a in range(0, N, rows):
            part = w[a:a + rows]
            blocks = _padded(part, nb)  # (n, nb, 32) float64, zeros past the row's end
            amax = np.abs(blocks).max(axis=2)
            s = (amax / 127.0).astype(np.float32)
            with np.errstate(divide="ignore", invalid="ignore"):
                # dividing by the float32 scale actually stored, so that q * s is the nearest point
                inv = np.where(s > 0, 1.0 / s.astype(np.float64), 0.0)
            qq = np.clip(np.rint(blocks * inv[:, :, None]), -127, 127).astype(np.int8)
            q[a:a + rows] = qq.reshape(len(part), nb * BLOCK)[:, :K]
            scales[a:a + rows] = s
        return cls(q, scales)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._dequantize(self.q, self.scales)
        return out if dtype is None else out.astype(dtype, copy=False)

    @staticmethod
    def _dequantize(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
        n, K = q.shape
        s = np.repeat(scales, BLOCK, axis=1)[:, :K]
        return q.astype(np.float32) * s

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Int8Matrix(self.q[index], self.scales[index])
        idx = np.asarray(index)
        q, s = self.q[idx.reshape(-1)], self.scales[idx.reshape(-1)]
        out = self._dequantize(q, s)
        return out[0] if idx.ndim == 0 else out

    def __repr__(self) -> str:
        return f"Int8Matrix(shape={self.shape})"


class BlockMatrix:
    """A (N, K) matrix of an rwkv.cpp file kept in its ggml blocks (`load_model(..., keep_blocks=True)`):
    raw (N, K / 32 * BLOCK_BYTES[fmt]) uint8, each row the row's blocks exactly as the file holds them
    (fmt one of Q4_0, Q4_1, Q5_0, Q5_1). The recurrent form reads them directly (kernels._dot_blocks);
    np.asarray(m) gives the float32 matrix, dequantized as ggml does; m[rows] the float32 rows;
    m[a:b] a BlockMatrix of those rows (no copy)."""

    dtype = np.dtype(np.uint8)
    ndim = 2

    def __init__(self, raw: np.ndarray, fmt: str, shape: tuple[int, int]):
        N, K = shape
        if fmt not in LAYOUT or K % BLOCK or raw.shape != (N, K // BLOCK * BLOCK_BYTES[fmt]):
            raise ArgumentError(f"BlockMatrix: {raw.shape} bytes are not {fmt} blocks of a {shape} matrix")
        self.raw, self.fmt = np.ascontiguousarray(raw, np.uint8), fmt
        self.shape = (N, K)
        self.size = N * K
        self.nbytes = self.raw.nbytes

    def scales(self) -> np.ndarray:
        """Every block's fp16 numbers (d, and m for Q4_1 / Q5_1), float16 (N, K / 32, 1 or 2)."""
        blocks = self.raw.reshape(self.shape[0], -1, BLOCK_BYTES[self.fmt])
        count = 1 if LAYOUT[self.fmt][1] is None else 2  # d, then m where there is one: bytes 0-3
        return np.ascontiguousarray(blocks[:, :, :2 * count]).view("<f2")

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._dequantize(self.raw)
        return out if dtype is None else out.astype(dtype, copy=False)

    def _dequantize(self, raw: np.ndarray) -> np.ndarray:
        n = raw.shape[0]
        return dequantize_blocks(raw.reshape(-1, BLOCK_BYTES[self.fmt]), self.fmt).reshape(n, self.shape[1])

    def __getitem__(self, index):
        if isinstance(index, slice):
            raw = self.raw[index]
            return BlockMatrix(raw, self.fmt, (raw.shape[0], self.shape[1]))
        idx = np.asarray(index)
        out = self._dequantize(self.raw[idx.reshape(-1)])
        return out[0] if idx.ndim == 0 else out

    def __repr__(self) -> str:
        return f"BlockMatrix({self.fmt}, shape={self.shape})"


def _padded(w: np.ndarray, nb: int) -> np.ndarray:
    n, K = w.shape
    out = np.zeros((n, nb * BLOCK), np.float64)
    out[:, :K] = w
    return out.reshape(n, nb, BLOCK)


def int8_from_q8_0(q: np.ndarray, d: np.ndarray, shape: tuple[int, int]) -> Int8Matrix:
    """A Q8_0 tensor's blocks (q (n, 32), d (n,)) in row order, as the Int8Matrix of shape (N, K)."""
    N, K = shape
    return Int8Matrix(q.reshape(N, K), d.reshape(N, K // BLOCK))
