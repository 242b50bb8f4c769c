"""Matrix-vector products by weight kind, for every version's compiled kernels.

A weight matrix is stored as one of:
  float32;
  16-bit as in the checkpoint: bfloat16 bit patterns as uint16, float16 bit patterns as int16 (Numba has
    no float16 on the CPU). `widen` turns one element into float32 exactly (bf16 is the top half of a
    float32; fp16 -> float32 is exact);
  int8 with a float32 scale per block of 32 weights along each row (rwkv_np/quantize.py's Int8Matrix);
  rwkv.cpp's Q4_0, Q4_1, Q5_0, Q5_1 blocks as the file holds them (quantize.BlockMatrix: uint8 rows of
    whole blocks), unpacked in vector registers one block of 32 at a time (`_ggml_dot`).
`row_dot` is the one place that tells the kinds apart; every product accumulates in float32. It can
also ask the memory for the rows ahead of the one it multiplies (`ahead` bytes; 0: not). The kernels
take matrices by address (`matrix_at`, `scales_at`), so that one compiled signature serves any model.
For the parallel form, which hands float32 matrices to BLAS: `widen_into`, `dequantize_into`,
`dequantize_blocks_into`. And `matvec`, one matrix-vector product on its own.
"""

import numpy as np
from llvmlite import ir
from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .quantize import BLOCK_BYTES, LAYOUT

# the dot products may reorder their float32 sums (that is what lets them use SIMD lanes)
DOT_MATH = {"reassoc", "contract", "nsz"}

@intrinsic
def _bf16_to_f32(typingctx, bits):
    def codegen(context, builder, signature, args):
        wide = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(wide, ir.FloatType())
    return types.float32(bits), codegen


@intrinsic
def _fp16_to_f32(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(bits), codegen


def widen(v):
    """One stored weight element as float32 (float32, bf16 bits as uint16, fp16 bits as int16)."""
    raise NotImplementedError("only callable from compiled code")


@overload(widen, inline="always")
def _widen_overload(v):
    if v == types.float32:
        return lambda v: v
    if v == types.uint16:
        return lambda v: _bf16_to_f32(v)
    if v == types.int16:
        return lambda v: _fp16_to_f32(v)
    return None


@njit(fastmath=DOT_MATH, cache=True, error_model="numpy")
def dot(w, x):
    """sum_j w[j] x[j] of a stored weight row w (n,) and float32 x (n,), accumulated in float32."""
    acc = np.float32(0.0)
    for j in range(x.shape[0]):
        acc += widen(w[j]) * x[j]
    return acc


QBLOCK = 32  # int8 weights: one scale per this many consecutive weights of a row (rwkv_np/quantize.py);
# _dot_int8 divides by it with a shift


@njit(fastmath=DOT_MATH, cache=True, error_model="numpy")
def _dot_int8(q, s, x):
    """sum_j s[j // QBLOCK] q[j] x[j] of an int8 row q (n,) with scales s, accumulated in float32.

    One flat loop, each product scaled: a loop per block of 32 (sum, then one multiply by the
    scale) is what the arithmetic suggests, but LLVM runs a 32-long loop in its scalar remainder
    path (its vector loop wants more iterations than that), many times slower."""
    acc = np.float32(0.0)
    for j in range(x.shape[0]):
        acc += np.float32(q[j]) * x[j] * s[j >> 5]
    return acc


# ggml's 4- and 5-bit blocks, told apart by their size in bytes: size -> rwkv_np.quantize.LAYOUT's
# (offset of d, of m or None, of qh or None, of the nibbles, zero point)
GGML_LAYOUT = {BLOCK_BYTES[fmt]: layout for fmt, layout in LAYOUT.items()}
_Q4_0, _Q4_1, _Q5_0, _Q5_1 = (BLOCK_BYTES[fmt] for fmt in ("Q4_0", "Q4_1", "Q5_0", "Q5_1"))


def _ggml_dot(block_bytes):
    """An intrinsic dot(row, x, nb): sum over the nb blocks of one row of ggml blocks (uint8) of
    d * sum_k (q_k - zero) x_k  [+ m * sum_k x_k], with x float32 (32 nb,).

    Written as LLVM vector code because Numba's loops do not vectorise it: a loop over a block's 32
    weights runs one weight at a time (see _dot_int8), and the flat form _dot_int8 uses cannot
    unpack nibbles. Per block:
    the 16 bytes of nibbles as two 16-lane vectors (low nibbles = weights 0-15, high = 16-31), Q5's
    fifth bits or-ed in from qh, converted exactly to float32, multiplied by x, summed into a
    16-lane partial sum that is scaled by d once per block; the m-term likewise with the sum of x.
    The 16 lanes are added up at the end. Each product (q - zero) x is rounded once, as in dot."""
    d_at, m_at, qh_at, qs_at, zero = GGML_LAYOUT[block_bytes]

    @intrinsic
    def dot(typingctx, row, x, nb):
        def codegen(context, builder, signature, args):
            qa = context.make_array(signature.args[0])(context, builder, args[0]).data
            xa = context.make_array(signature.args[1])(context, builder, args[1]).data
            i8, i32, f32, n = ir.IntType(8), ir.IntType(32), ir.FloatType(), 16
            vi8, vi32, vf = ir.VectorType(i8, n), ir.VectorType(i32, n), ir.VectorType(f32, n)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vf, vf]), "llvm.fma.v16f32")
            intp = args[2].type

            def at(ptr, offset, ty):  # an unaligned load of ty at ptr + offset
                return builder.load(builder.bitcast(builder.gep(ptr, [offset]), ty.as_pointer()), align=1)

            def splat(value, ty):
                one = builder.insert_element(ir.Constant(ty, ir.Undefined), value, i32(0))
                return builder.shuffle_vector(one, ir.Constant(ty, ir.Undefined), ir.Constant(vi32, [0] * n))

            def lanes(values):
                return ir.Constant(vi32, list(values))

            acc = cgutils.alloca_once_value(builder, ir.Constant(vf, [0.0] * n))
            macc = cgutils.alloca_once_value(builder, ir.Constant(vf, [0.0] * n))
            with cgutils.for_range(builder, args[2]) as loop:
                b = loop.index
                blk = builder.mul(b, intp(block_bytes))
                d = builder.fpext(at(qa, builder.add(blk, intp(d_at)), ir.HalfType()), f32)
                qs = at(qa, builder.add(blk, intp(qs_at)), vi8)
                lo = builder.zext(builder.and_(qs, ir.Constant(vi8, [15] * n)), vi32)  # weights 0..15
                hi = builder.zext(builder.lshr(qs, ir.Constant(vi8, [4] * n)), vi32)  # weights 16..31
                if qh_at is not None:  # weight k's fifth bit is bit k of qh
                    qh = splat(at(qa, builder.add(blk, intp(qh_at)), i32), vi32)
                    lo = builder.or_(lo, builder.shl(builder.and_(builder.lshr(qh, lanes(range(n))), lanes([1] * n)), lanes([4] * n)))
                    hi = builder.or_(hi, builder.shl(builder.and_(builder.lshr(qh, lanes(range(n, 2 * n))), lanes([1] * n)),
                                                     lanes([4] * n)))
                flo, fhi = builder.sitofp(lo, vf), builder.sitofp(hi, vf)
                if zero:  # exact: small integers
                    flo = builder.fsub(flo, ir.Constant(vf, [float(zero)] * n))
                    fhi = builder.fsub(fhi, ir.Constant(vf, [float(zero)] * n))
                x0 = at(xa, builder.mul(b, intp(32)), vf)
                x1 = at(xa, builder.add(builder.mul(b, intp(32)), intp(16)), vf)
                t = builder.call(fma, [fhi, x1, builder.fmul(flo, x0)])
                builder.store(builder.call(fma, [t, splat(d, vf), builder.load(acc)]), acc)
                if m_at is not None:
                    m = builder.fpext(at(qa, builder.add(blk, intp(m_at)), ir.HalfType()), f32)
                    builder.store(builder.call(fma, [builder.fadd(x0, x1), splat(m, vf), builder.load(macc)]), macc)
            lanes_sum = builder.fadd(builder.load(acc), builder.load(macc))
            total = builder.extract_element(lanes_sum, i32(0))
            for k in range(1, n):
                total = builder.fadd(total, builder.extract_element(lanes_sum, i32(k)))
            return total
        return types.float32(row, x, types.intp), codegen
    return dot


_dot_q4_0, _dot_q4_1, _dot_q5_0, _dot_q5_1 = (_ggml_dot(size) for size in (_Q4_0, _Q4_1, _Q5_0, _Q5_1))


@njit(inline="always", error_model="numpy")
def _dot_blocks(row, x):
    """sum_j w[j] x[j] of one row of ggml blocks (uint8, whole blocks) and float32 x (32 nb,); the
    format is told by the bytes per block."""
    nb = x.shape[0] >> 5
    size = row.shape[0] // nb
    if size == _Q4_0:
        return _dot_q4_0(row, x, nb)
    if size == _Q4_1:
        return _dot_q4_1(row, x, nb)
    if size == _Q5_0:
        return _dot_q5_0(row, x, nb)
    return _dot_q5_1(row, x, nb)


@intrinsic
def _prefetch(typingctx, row, j):
    """Ask the memory system for the cache line holding row[j], without waiting for it."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        i8p = ir.IntType(8).as_pointer()
        fn = builder.module.declare_intrinsic("llvm.prefetch", fnty=ir.FunctionType(
            ir.VoidType(), [i8p, ir.IntType(32), ir.IntType(32), ir.IntType(32)]))
        i32 = ir.IntType(32)  # read (0), keep in every cache level (3), data (1)
        builder.call(fn, [builder.bitcast(builder.gep(data, [args[1]]), i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.void(row, types.intp), codegen


# Asking for the rows ~6 KB ahead of the one being multiplied keeps the memory busy where the hardware
# prefetcher alone leaves it idle, and slows other machines down: so the distance is an argument,
# `ahead` (0: no request), that RWKV.choose_prefetch picks by timing both (benchmarks/NOTES.md,
# "Prefetching the rows").
PREFETCH_BYTES = 6144
PREFETCH_CHOICES = (PREFETCH_BYTES, 0)  # what warm-up times, the default first


@njit(inline="always")
def _prefetch_row(w, r):
    if r < w.shape[0]:
        row = w[r]
        for j in range(0, row.shape[0], max(1, 64 // row.itemsize)):
            _prefetch(row, j)


def row_dot(w, s, r, x, ahead):
    """Row r of a weight matrix w (any kind: float32, 16-bit, int8 with scales s, or ggml blocks as
    uint8) dotted with x.

    Rows are meant to be read in increasing r: with ahead > 0, each call first asks for the row
    about ahead bytes further on (at least the next one)."""
    raise NotImplementedError("only callable from compiled code")


@overload(row_dot)
def _row_dot_overload(w, s, r, x, ahead):
    if w.dtype == types.uint8:
        def blocks_row_dot(w, s, r, x, ahead):
            if ahead > 0:
                _prefetch_row(w, r + max(1, ahead // w.shape[1]))
            return _dot_blocks(w[r], x)
        return blocks_row_dot

    if w.dtype == types.int8:
        def int8_row_dot(w, s, r, x, ahead):
            if ahead > 0:
                nxt = r + max(1, ahead // w.shape[1])
                _prefetch_row(w, nxt)
                _prefetch_row(s, nxt)
            return _dot_int8(w[r], s[r], x)
        return int8_row_dot

    def float_row_dot(w, s, r, x, ahead):
        if ahead > 0:
            _prefetch_row(w, r + max(1, ahead // (w.shape[1] * w.itemsize)))
        return dot(w[r], x)
    return float_row_dot


@intrinsic
def _address_as_pointer(typingctx, address, like):
    ptr = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(ptr))
    return ptr(address, like), codegen


def _stored_cols(like, cols):
    """How many elements of like's dtype hold a row of cols weights: cols, except for ggml blocks
    (uint8; like (bytes per block,)), where a row is cols / 32 blocks of bytes."""
    raise NotImplementedError("only callable from compiled code")


@overload(_stored_cols, inline="always")
def _stored_cols_overload(like, cols):
    if like.dtype == types.uint8:
        return lambda like, cols: (cols >> 5) * like.shape[0]
    return lambda like, cols: cols


@njit(inline="always", error_model="numpy")
def matrix_at(address, like, rows, cols):
    """The C-contiguous matrix of rows x cols weights stored in like's dtype at a memory address."""
    return carray(_address_as_pointer(address, like), (rows, _stored_cols(like, cols)))


def scales_at(address, like, rows, cols):
    """The float32 scales of an int8 (rows, cols) matrix at a memory address; for other kinds,
    which have none, a (1, 1) array at the address (which must hold one float32)."""
    raise NotImplementedError("only callable from compiled code")


@intrinsic
def _address_as_f32_pointer(typingctx, address):
    ptr = types.CPointer(types.float32)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(ptr))
    return ptr(address), codegen


@overload(scales_at)
def _scales_overload(address, like, rows, cols):
    if like.dtype == types.int8:
        return lambda address, like, rows, cols: carray(_address_as_f32_pointer(address),
                                                        (rows, (cols + QBLOCK - 1) // QBLOCK))
    return lambda address, like, rows, cols: carray(_address_as_f32_pointer(address), (1, 1))


@njit(cache=True, error_model="numpy")
def widen_into(w, out):
    """out (N, K) float32 <- stored weights w (N, K), exactly (the 16-bit parallel form hands
    out to BLAS: a matrix product reuses each weight T times, so widening once per chunk is cheap)."""
    for n in range(w.shape[0]):
        for j in range(w.shape[1]):
            out[n, j] = widen(w[n, j])


@njit(cache=True, error_model="numpy")
def dequantize_into(q, s, out):
    """out (N, K) float32 <- int8 weights q (N, K) times their block scales s (N, ceil(K / 32)):
    the int8 parallel form's counterpart of widen_into (each product is exact in float32's
    rounding: one rounding, as in quantize.Int8Matrix's own dequantization)."""
    for n in range(q.shape[0]):
        qn, sn, on = q[n], s[n], out[n]
        for j in range(q.shape[1]):
            on[j] = np.float32(qn[j]) * sn[j >> 5]


def block_layout(fmt: str) -> tuple:
    """dequantize_blocks_into's layout argument for a format: (bytes per block, offset of d, of m,
    of qh, of the nibbles, zero point), -1 for a number the format does not have."""
    return (BLOCK_BYTES[fmt],) + tuple(-1 if v is None else v for v in LAYOUT[fmt])


@njit(cache=True, error_model="numpy")
def dequantize_blocks_into(raw, layout, out):
    """out (N, K) float32 <- rows of ggml blocks raw (N, K / 32 * size) uint8, laid out as
    block_layout(fmt) says: the parallel form's counterpart of _dot_blocks, with ggml's arithmetic
    (rwkv_np.quantize.dequantize_blocks, which the tests hold it to bit for bit): (q - zero) * d,
    or q * d + m with two roundings (no fused multiply-add)."""
    size, d_at, m_at, qh_at, qs_at, zero = layout
    for n in range(out.shape[0]):
        row, dst = raw[n], out[n]
        for b in range(out.shape[1] >> 5):
            o = b * size
            d = _fp16_to_f32(np.uint16(row[o + d_at] | (np.uint16(row[o + d_at + 1]) << 8)))
            m = np.float32(0.0)
            if m_at >= 0:
                m = _fp16_to_f32(np.uint16(row[o + m_at] | (np.uint16(row[o + m_at + 1]) << 8)))
            qh = np.uint32(0)
            if qh_at >= 0:
                for k in range(4):
                    qh |= np.uint32(row[o + qh_at + k]) << np.uint32(8 * k)
            for j in range(16):
                byte = row[o + qs_at + j]
                lo = np.int32(byte & 15) | np.int32(((qh >> np.uint32(j)) & np.uint32(1)) << np.uint32(4))
                hi = np.int32(byte >> 4) | np.int32(((qh >> np.uint32(j + 16)) & np.uint32(1)) << np.uint32(4))
                if m_at >= 0:
                    dst[32 * b + j] = np.float32(lo) * d + m
                    dst[32 * b + j + 16] = np.float32(hi) * d + m
                else:
                    dst[32 * b + j] = np.float32(lo - zero) * d
                    dst[32 * b + j + 16] = np.float32(hi - zero) * d
    return out


@njit(parallel=True, cache=True, error_model="numpy")
def matvec(w, x, out, scales=None, ahead=PREFETCH_BYTES):
    """out (N,) = w (N, K) @ x (K,) for stored weights w (int8 ones with their scales),
    accumulated in float32; rows prefetched ahead bytes in advance (0: not)."""
    for n in prange(w.shape[0]):
        out[n] = row_dot(w, scales, n, x, ahead)


# ---- many vectors at once: the recurrent form over a batch ------------------------------------------

def _widen_row(w, s, r, out):
    """out (K,) float32 <- row r of stored weights w (float32, 16-bit, or int8 with scales s)."""
    raise NotImplementedError("only callable from compiled code")


@overload(_widen_row, inline="always")
def _widen_row_overload(w, s, r, out):
    if w.dtype == types.int8:
        def int8_row(w, s, r, out):  # as dequantize_into: one rounding
            wr, sr, K = w[r], s[r], out.shape[0]
            full = K >> 5
            for blk in range(full):  # 32 at a time, one scale each: a loop of fixed length, vectorized
                sb, base = sr[blk], blk << 5
                for t in range(32):
                    out[base + t] = np.float32(wr[base + t]) * sb
            for j in range(full << 5, K):
                out[j] = np.float32(wr[j]) * sr[j >> 5]
        return int8_row

    def float_row(w, s, r, out):
        wr = w[r]
        for j in range(out.shape[0]):
            out[j] = widen(wr[j])
    return float_row


#: matmat's rows per block: each block's rows are widened once into float32 and dotted with every vector
MATMAT_ROWS = 4


@njit(fastmath=DOT_MATH, parallel=True, cache=True, error_model="numpy")
def matmat(w, scales, x, out):
    """out (B, N) = x (B, K) @ w (N, K).T for stored weights w (float32, 16-bit, or int8 with scales;
    other kinds: scales is a (1, 1) array never read), accumulated in float32: the recurrent form's
    products for B sequences at once. Each weight is read from memory once, widened to float32 once
    (a block of MATMAT_ROWS rows at a time, kept in the cache) and multiplied by all B vectors, two at a
    time against the four rows: eight independent sums, each load of a weight or of x serving two or
    four products. For a few vectors this beats widening the whole matrix for BLAS (which writes and
    reads it again as float32)."""
    N, K, B = w.shape[0], x.shape[1], x.shape[0]
    R = MATMAT_ROWS
    for blk in prange((N + R - 1) // R):
        r0 = blk * R
        nr = min(R, N - r0)
        buf = np.empty((R, K), np.float32)
        for i in range(nr):
            _widen_row(w, scales, r0 + i, buf[i])
        if nr == R:
            w0, w1, w2, w3 = buf[0], buf[1], buf[2], buf[3]
            for b in range(0, B - 1, 2):
                xa, xb = x[b], x[b + 1]
                a0 = a1 = a2 = a3 = c0 = c1 = c2 = c3 = np.float32(0.0)
                for j in range(K):
                    u, v = xa[j], xb[j]
                    a0 += w0[j] * u
                    a1 += w1[j] * u
                    a2 += w2[j] * u
                    a3 += w3[j] * u
                    c0 += w0[j] * v
                    c1 += w1[j] * v
                    c2 += w2[j] * v
                    c3 += w3[j] * v
                out[b, r0], out[b, r0 + 1], out[b, r0 + 2], out[b, r0 + 3] = a0, a1, a2, a3
                out[b + 1, r0], out[b + 1, r0 + 1], out[b + 1, r0 + 2], out[b + 1, r0 + 3] = c0, c1, c2, c3
            if B % 2:
                xa = x[B - 1]
                a0 = a1 = a2 = a3 = np.float32(0.0)
                for j in range(K):
                    u = xa[j]
                    a0 += w0[j] * u
                    a1 += w1[j] * u
                    a2 += w2[j] * u
                    a3 += w3[j] * u
                out[B - 1, r0], out[B - 1, r0 + 1], out[B - 1, r0 + 2], out[B - 1, r0 + 3] = a0, a1, a2, a3
        else:
            for i in range(nr):
                wi = buf[i]
                for b in range(B):
                    xb = x[b]
                    a = np.float32(0.0)
                    for j in range(K):
                        a += wi[j] * xb[j]
                    out[b, r0 + i] = a
