"""Compiled kernels of the engine (rwkv_np/engine.py): rwkv_np/reference.py's arithmetic, fused so
that every weight is read once per token and nothing waits on Python.

Eq. 14 is one function here, `wkv_step` (one channel, one token, float64): the loop body of
reference.time_mixing, used by both forms below and by the trainer's forward (rwkv_np/training/wkv_grad.py).

Recurrent form (generation; reference.step): one token costs a matrix-vector product with every
weight matrix, so its speed is set by memory bandwidth. `recurrent_tokens` runs whole tokens through
all layers in one call; per layer four parallel loops over output rows (a thread takes CHUNK rows at
a time), each row's elementwise work (token shift, eq. 14, gates) done in the same loop as its dot
products, so no (C,) vector goes back to Python and no thread waits for another more than four times
a layer.

Parallel form (prompts; reference.forward): the projections are matrix-matrix products (BLAS); the
kernels here fuse the elementwise work between them (LayerNorm + token shift + mixes; the scan of
eq. 14 + output gate; squared ReLU; gated residual add) so each (T, C) activation is read and written once.

Weights may be float32, or 16-bit kept as stored: bfloat16 bit patterns as uint16, float16 bit
patterns as int16 (Numba has no float16 on the CPU). `widen` turns one element into float32
exactly (bf16 is the top half of a float32; fp16 -> float32 is exact), and every product
accumulates in float32. Or int8 with a float32 scale per block of 32 weights along each row
(rwkv_np/quantize.py's Int8Matrix): `row_dot` is the one place that tells the kinds apart; for
int8 it accumulates q * x * scale in float32. Or rwkv.cpp's Q4_0, Q4_1, Q5_0, Q5_1 blocks kept as
the file holds them (quantize.BlockMatrix, uint8 rows of whole blocks): `_dot_blocks` unpacks them in
vector registers, one block of 32 at a time.
"""

import numpy as np
from llvmlite import ir
from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .quantize import BLOCK_BYTES, LAYOUT
from .reference import AA, ATT_X, BB, FFN_X, PP
from .schema import MATRICES, VECTORS

# error_model="numpy" everywhere: a division by zero gives inf instead of raising, which spares
# every division a branch and lets the loops around them vectorise.
# the dot products may reorder their float32 sums (that is what lets them use SIMD lanes)
_DOT_MATH = {"reassoc", "contract", "nsz"}
# fused multiply-adds only (one rounding instead of two, never a different order): the float64
# polynomials of the exponentials in the parallel form's WKV and gates (benchmarks/NOTES.md)
_FMA = {"contract"}

# rows of the per-layer vector table `vecs` (L, len(VECTORS), C): rwkv_np.schema.VECTORS, except
# that the time_decay row holds w = e^time_decay itself (computed once, when the table is built)
LN1_W, LN1_B, ATT_MK, ATT_MV, ATT_MR, DECAY_W, FIRST, LN2_W, LN2_B, FFN_MK, FFN_MR = (VECTORS.index(n) for n in (
    "ln1.weight", "ln1.bias", "att.time_mix_k", "att.time_mix_v", "att.time_mix_r", "att.time_decay",
    "att.time_first", "ln2.weight", "ln2.bias", "ffn.time_mix_k", "ffn.time_mix_r"))
N_VECS = len(VECTORS)
# rows of the address table of recurrent_tokens: the block's matrices, then the head
ATT_K, ATT_V, ATT_R, ATT_O, FFN_K, FFN_R, FFN_V = (MATRICES.index(n) for n in (
    "att.key.weight", "att.value.weight", "att.receptance.weight", "att.output.weight",
    "ffn.key.weight", "ffn.receptance.weight", "ffn.value.weight"))
HEAD = len(MATRICES)


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


@njit(fastmath=_DOT_MATH, cache=True, error_model="numpy")
def _dot(w, x):
    """sum_j w[j] x[j] of a stored weight row w (n,) and float32 x (n,), accumulated in float32."""
    acc = np.float32(0.0)
    for j in range(x.shape[0]):
        acc += widen(w[j]) * x[j]
    return acc


QBLOCK = 32  # int8 weights: one scale per this many consecutive weights of a row (rwkv_np/quantize.py);
# _dot_int8 divides by it with a shift


@njit(fastmath=_DOT_MATH, cache=True, error_model="numpy")
def _dot_int8(q, s, x):
    """sum_j s[j // QBLOCK] q[j] x[j] of an int8 row q (n,) with scales s, accumulated in float32.

    One flat loop, each product scaled: a loop per block of 32 (sum, then one multiply by the
    scale) is what the arithmetic suggests, but LLVM runs a 32-long loop in its scalar remainder
    path (its vector loop wants more iterations than that): 30 times slower."""
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
    The 16 lanes are added up at the end. Each product (q - zero) x is rounded once, as in _dot."""
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


# A matrix-vector product reads its rows in order, one thread per contiguous range of rows. On an
# Intel VM the hardware's own prefetcher alone reached 12-17 GB/s where BLAS read 20-24: asking for
# the rows ~6 KB ahead of the one being multiplied let the memory work on them meanwhile. On an AMD
# EPYC the same request made float32 and 16-bit generation 10-30% slower (and int8 5% faster), so the
# distance is an argument, `ahead` (0: no request), that the engine's warm-up picks by timing both
# (rwkv_np.engine.choose_prefetch; benchmarks/NOTES.md, "Prefetching the rows").
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
        return _dot(w[r], x)
    return float_row_dot


# The LayerNorm sums may be reordered (several partial sums, SIMD lanes): in float64, the order
# changes them by ~1e-16 relative, far below the float32 rounding of the result. In order, each
# addition waits for the previous one, and a row of 768 took longer than the rest of the LayerNorm.
_SUM_MATH = {"reassoc", "nsz"}


@njit(fastmath=_SUM_MATH, cache=True, error_model="numpy")
def _mean64(x):
    acc = 0.0
    for j in range(x.shape[0]):
        acc += np.float64(x[j])
    return acc / x.shape[0]


@njit(fastmath=_SUM_MATH, cache=True, error_model="numpy")
def _mean_square64(x, mean):
    acc = 0.0
    for j in range(x.shape[0]):
        d = np.float64(x[j]) - mean
        acc += d * d
    return acc / x.shape[0]


@njit(cache=True, error_model="numpy")
def _layer_norm_into(x, g, b, eps, out):
    # statistics in float64: C terms, so float32 rounding of the result is all that remains
    mean = _mean64(x)
    inv = 1.0 / np.sqrt(_mean_square64(x, mean) + eps)
    for j in range(x.shape[0]):
        out[j] = np.float32((x[j] - mean) * inv) * g[j] + b[j]


@intrinsic
def _bits_to_f64(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(bits), codegen


_LOG2E = 1.4426950408889634
_LN2_HI = 0.693147180369123816490  # ln 2 split in two so that n * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
# 1/k! for k = 13..2: Taylor terms of e^r for |r| <= ln(2)/2; r^13/13! is at most 1.7e-16
_INV_FACT = tuple(1.0 / float(np.prod(np.arange(1, k + 1))) for k in range(13, 1, -1))


@njit(inline="always", error_model="numpy")
def _exp_nonpos(x):
    """e^x for x <= 0 in float64, within 2 ulp of libm; 0 below -708 (the smallest normal).

    Written out (range reduction + polynomial) because a libm call cannot be vectorised: this
    lets the WKV loop run 8 channels per instruction."""
    xc = max(x, -708.0)
    n = np.rint(xc * _LOG2E)
    r = (xc - n * _LN2_HI) - n * _LN2_LO
    p = 0.0
    for c in _INV_FACT:
        p = p * r + c
    p = (p * r + 1.0) * r + 1.0
    scale = _bits_to_f64((np.int64(n) + 1023) << 52)  # 2^n, n in [-1021, 0]
    return p * scale if x >= -708.0 else 0.0


@njit(inline="always", error_model="numpy")
def _wkv_terms(p, ww):
    """(e^(p - q), e^(ww - q)) with q = max(p, ww): one factor is 1, the other e^-|p - ww|."""
    d = p - ww
    e = _exp_nonpos(-abs(d))
    return (1.0, e) if d >= 0.0 else (e, 1.0)


@njit(inline="always", error_model="numpy")
def wkv_step(aa, bb, pp, w, u, k, v):
    """Eq. 14 for one channel and one token, in float64: the compiled copy of the loop body of
    rwkv_np.reference.time_mixing, shared by every compiled kernel (both forms of the engine, and
    the trainer's forward). w > 0 is the decay rate, u the bonus; aa, bb, pp the state before.

    Returns (wkv_t, den, q, aa, bb, pp): wkv_t, the state after the token, and what the trainer's
    backward keeps (den = the denominator of wkv_t, q its exponent: it is den * e^q)."""
    e_past, e_now = _wkv_terms(pp, u + k)
    den = e_past * bb + e_now
    wkv = (e_past * aa + e_now * v) / den
    q = max(pp, u + k)
    # the state after the token: the past decays by e^-w; the token joins it without the bonus
    e_past, e_now = _wkv_terms(pp - w, k)
    return wkv, den, q, e_past * aa + e_now * v, e_past * bb + e_now, max(pp - w, k)


@njit(inline="always", error_model="numpy")
def _sigmoid(x):
    """1 / (1 + e^-x) of a float32, computed in float64 with the vectorisable exponential."""
    e = _exp_nonpos(-abs(np.float64(x)))
    # numerator 1 for x >= 0, e^x otherwise; written as a max so that loops over it vectorise
    return np.float32(max(e, np.float64(x >= 0)) / (1.0 + e))


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
def _matrix(address, like, rows, cols):
    """The C-contiguous matrix of rows x cols weights stored in like's dtype at a memory address."""
    return carray(_address_as_pointer(address, like), (rows, _stored_cols(like, cols)))


def _scales(address, like, rows, cols):
    """The float32 scales of an int8 (rows, cols) matrix at a memory address; for other kinds,
    which have none, a (1, 1) array at the address (which must hold one float32)."""
    raise NotImplementedError("only callable from compiled code")


@intrinsic
def _address_as_f32_pointer(typingctx, address):
    ptr = types.CPointer(types.float32)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(ptr))
    return ptr(address), codegen


@overload(_scales)
def _scales_overload(address, like, rows, cols):
    if like.dtype == types.int8:
        return lambda address, like, rows, cols: carray(_address_as_f32_pointer(address),
                                                        (rows, (cols + QBLOCK - 1) // QBLOCK))
    return lambda address, like, rows, cols: carray(_address_as_f32_pointer(address), (1, 1))


# The recurrent form's loops over output rows hand each thread chunks of this many rows, and within a
# chunk go through one matrix at a time (W_k's rows, then W_v's, then W_r's, then eq. 14 for them):
# one stream of rows per thread at a time. On an AMD EPYC, against three matrices' rows interleaved,
# paired in one process: int8 generation 1.07-1.12x faster, fp16 0.92-1.10x (median 1.03), fp32
# 1.04-1.10x (benchmarks/NOTES.md). The eq. 14 loop then reads k, v, r from the buffers kb, vb, rb.
CHUNK = 64
LOGITS_NONE, LOGITS_LAST, LOGITS_ALL = 0, 1, 2  # which tokens recurrent_tokens computes logits for


@njit(parallel=True, cache=True, error_model="numpy")
def recurrent_tokens(rows, like, head_like, addr, saddr, V, F, ln0, vecs, ln_out, eps, state, logits, logits_for,
                     ahead):
    """The recurrent form over tokens whose embedding rows are rows (T, C) (any stored float
    kind), advancing state (L, 5, C) float32 in place.

    The block matrices, all stored like like (1,) (for ggml blocks: (bytes per block,) uint8), and
    the head, stored like head_like, are passed by address: addr (HEAD + 1, L)
    int64 of att.key, att.value, att.receptance, att.output (C, C), ffn.key (F, C),
    ffn.receptance (C, C), ffn.value (C, F), and in column 0 of the last row head (V, C).
    Addresses keep the compiled signature the same for any number of layers and for read-only
    or writable arrays; the caller keeps the arrays alive. saddr, laid out like addr: for int8
    matrices the addresses of their float32 scales, for other kinds the address of one float32
    (never read). ln0 / ln_out (2, C) and vecs
    (L, N_VECS, C) are float32. logits_for: LOGITS_ALL to logits (T, V), LOGITS_LAST to logits
    (1, V) for the last token only, LOGITS_NONE for none. ahead: row_dot's prefetch distance in
    bytes (0: none).
    """
    L, C = vecs.shape[0], vecs.shape[2]
    kind = like
    head = _matrix(addr[HEAD, 0], head_like, V, C)
    head_s = _scales(saddr[HEAD, 0], head_like, V, C)
    x = np.empty(C, np.float32)
    xn = np.empty(C, np.float32)
    xk = np.empty(C, np.float32)
    xv = np.empty(C, np.float32)
    xr = np.empty(C, np.float32)
    y = np.empty(C, np.float32)
    kk = np.empty(F, np.float32)
    kb = np.empty(C, np.float32)
    vb = np.empty(C, np.float32)
    rb = np.empty(C, np.float32)
    one = np.float32(1.0)
    for t in range(rows.shape[0]):
        row = rows[t]
        for j in range(C):
            xn[j] = widen(row[j])
        _layer_norm_into(xn, ln0[0], ln0[1], eps, x)
        for i in range(L):
            p = vecs[i]
            s = state[i]
            # reference.time_mixing (eqs. 11-15)
            _layer_norm_into(x, p[LN1_W], p[LN1_B], eps, xn)
            for j in range(C):
                xk[j] = xn[j] * p[ATT_MK, j] + s[ATT_X, j] * (one - p[ATT_MK, j])
                xv[j] = xn[j] * p[ATT_MV, j] + s[ATT_X, j] * (one - p[ATT_MV, j])
                xr[j] = xn[j] * p[ATT_MR, j] + s[ATT_X, j] * (one - p[ATT_MR, j])
                s[ATT_X, j] = xn[j]
            wk, wv, wr = _matrix(addr[ATT_K, i], kind, C, C), _matrix(addr[ATT_V, i], kind, C, C), _matrix(addr[ATT_R, i], kind, C, C)
            sk, sv, sr = _scales(saddr[ATT_K, i], kind, C, C), _scales(saddr[ATT_V, i], kind, C, C), _scales(saddr[ATT_R, i], kind, C, C)
            for b in prange((C + CHUNK - 1) // CHUNK):
                lo, hi = b * CHUNK, min(C, b * CHUNK + CHUNK)
                for c in range(lo, hi):  # eq. 12
                    kb[c] = row_dot(wk, sk, c, xk, ahead)
                for c in range(lo, hi):  # eq. 13
                    vb[c] = row_dot(wv, sv, c, xv, ahead)
                for c in range(lo, hi):  # eq. 11
                    rb[c] = row_dot(wr, sr, c, xr, ahead)
                for c in range(lo, hi):  # eqs. 14-15 for channel c
                    wkv, _, _, s[AA, c], s[BB, c], s[PP, c] = wkv_step(
                        np.float64(s[AA, c]), np.float64(s[BB, c]), np.float64(s[PP, c]),
                        np.float64(p[DECAY_W, c]), np.float64(p[FIRST, c]), np.float64(kb[c]), np.float64(vb[c]))
                    y[c] = _sigmoid(rb[c]) * np.float32(wkv)
            wo, so = _matrix(addr[ATT_O, i], kind, C, C), _scales(saddr[ATT_O, i], kind, C, C)
            for c in prange(C):
                x[c] += row_dot(wo, so, c, y, ahead)
            # reference.channel_mixing (eqs. 16-18)
            _layer_norm_into(x, p[LN2_W], p[LN2_B], eps, xn)
            for j in range(C):
                xk[j] = xn[j] * p[FFN_MK, j] + s[FFN_X, j] * (one - p[FFN_MK, j])
                xr[j] = xn[j] * p[FFN_MR, j] + s[FFN_X, j] * (one - p[FFN_MR, j])
                s[FFN_X, j] = xn[j]
            wk, sk = _matrix(addr[FFN_K, i], kind, F, C), _scales(saddr[FFN_K, i], kind, F, C)
            for f in prange(F):
                k = max(row_dot(wk, sk, f, xk, ahead), np.float32(0.0))
                kk[f] = k * k
            wr, wv = _matrix(addr[FFN_R, i], kind, C, C), _matrix(addr[FFN_V, i], kind, C, F)
            sr, sv = _scales(saddr[FFN_R, i], kind, C, C), _scales(saddr[FFN_V, i], kind, C, F)
            for b in prange((C + CHUNK - 1) // CHUNK):
                lo, hi = b * CHUNK, min(C, b * CHUNK + CHUNK)
                for c in range(lo, hi):  # eq. 16
                    rb[c] = row_dot(wr, sr, c, xr, ahead)
                for c in range(lo, hi):  # eq. 18, residual
                    x[c] += _sigmoid(rb[c]) * row_dot(wv, sv, c, kk, ahead)
        if logits_for == LOGITS_ALL or (logits_for == LOGITS_LAST and t == rows.shape[0] - 1):
            out = logits[t if logits_for == LOGITS_ALL else 0]
            _layer_norm_into(x, ln_out[0], ln_out[1], eps, xn)
            for v_ in prange(head.shape[0]):
                out[v_] = row_dot(head, head_s, v_, xn, ahead)


# ---- parallel form: the elementwise work between the BLAS products -----------------------------
# These run on the calling thread: BLAS owns the threads here, and a second pool spinning between
# the products would take the cores BLAS needs (benchmarks/NOTES.md: 2 Numba threads were slower).

@njit(cache=True, error_model="numpy")
def norm_shift_mix(x, g, b, eps, x_prev, mus, outs):
    """LayerNorm of x (T, C), token shift from x_prev (C,), and one mix per row of mus (M, C)
    into outs (M, T, C). Returns the LayerNorm output of the last token (C,)."""
    T, C = x.shape
    xn = np.empty_like(x)
    for t in range(T):
        _layer_norm_into(x[t], g, b, eps, xn[t])
    one = np.float32(1.0)
    for t in range(T):
        prev = x_prev if t == 0 else xn[t - 1]
        for m in range(mus.shape[0]):
            for j in range(C):
                outs[m, t, j] = xn[t, j] * mus[m, j] + prev[j] * (one - mus[m, j])
    return xn[T - 1].copy()


@njit(fastmath=_FMA, cache=True, error_model="numpy")
def wkv_gate(w, u, k, v, r, aa, bb, pp, out):
    """out (T, C) = sigmoid(r) * wkv of eq. 14 over k, v (T, C); aa, bb, pp (C,) advanced in place.

    The scan over T of `wkv_step`, with the channels in the inner loop: they are independent, so
    the compiler can run several of them per instruction."""
    T, C = k.shape
    a, b, p = aa.astype(np.float64), bb.astype(np.float64), pp.astype(np.float64)
    w64, u64 = w.astype(np.float64), u.astype(np.float64)
    for t in range(T):
        for c in range(C):
            wkv, _, _, a[c], b[c], p[c] = wkv_step(a[c], b[c], p[c], w64[c], u64[c],
                                                   np.float64(k[t, c]), np.float64(v[t, c]))
            out[t, c] = _sigmoid(r[t, c]) * np.float32(wkv)
    aa[:] = a
    bb[:] = b
    pp[:] = p


@njit(cache=True, error_model="numpy")
def square_relu(k):
    """k (T, F) <- max(k, 0)^2 in place (eq. 18)."""
    for t in range(k.shape[0]):
        for j in range(k.shape[1]):
            z = max(k[t, j], np.float32(0.0))
            k[t, j] = z * z


@njit(fastmath=_FMA, cache=True, error_model="numpy")
def add_gated(x, r, val):
    """x (T, C) += sigmoid(r) * val (eq. 18's gate and the residual add), in place."""
    for t in range(x.shape[0]):
        xt, rt, vt = x[t], r[t], val[t]
        for j in range(xt.shape[0]):
            xt[j] += _sigmoid(rt[j]) * vt[j]


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


# ---- memory --------------------------------------------------------------------------------------

_MADV_PAGEOUT = 21  # Linux 5.4+: reclaim these pages now (clean file pages are simply dropped)


def release_compiler_pages() -> int:
    """Let the OS reclaim the machine code of LLVM (Numba's compiler), once the kernels are loaded.

    Numba needs LLVM to compile a kernel or to load it from its cache, not to run it; yet the
    ~50 MiB of LLVM's code touched while loading stay counted in the process's memory (RSS). They
    are clean pages of libllvmlite.so, so the kernel drops them and reads them back from the file
    if Numba ever compiles again. Only executable, never-written mappings are touched. Linux only;
    elsewhere (or if madvise refuses) nothing happens. Returns the bytes advised.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return 0
    try:
        maps = open("/proc/self/maps").read().splitlines()
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = 0
    for line in maps:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "r-xp" and fields[5].endswith(".so") and "llvmlite" in fields[5]:
            start, stop = (int(a, 16) for a in fields[0].split("-"))
            if madvise(start, stop - start, _MADV_PAGEOUT) == 0:
                advised += stop - start
    return advised
