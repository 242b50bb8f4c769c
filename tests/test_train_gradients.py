"""The trainer's hand-written backward pass (rwkv_np/training) against central finite differences, in
float64: every parameter, eq. 14's own backward, and the variants of the ablations."""

import numpy as np
import pytest

from rwkv_np.training.init import init_params
from rwkv_np.training.model import forward, loss_and_grads
from rwkv_np.training.variant import Variant
from rwkv_np.training.wkv_grad import wkv_backward, wkv_forward

from helpers import central_difference as _central_difference


def _rel_err(num: np.ndarray, ana: np.ndarray) -> float:
    return float(np.abs(num - ana).max() / max(np.abs(num).max(), 1e-300))


def test_every_parameter_gradient_matches_finite_differences():
    # 2 layers, 8 channels, batch 2 x 5 tokens. Parameters are the official init plus noise so that the
    # zero-initialised projections (att.output, ffn.value, ffn.receptance) carry gradient to all others.
    # h = 1e-5: truncation error ~ h^2 |f'''| ~ 1e-10, rounding ~ 1e-16 * |loss| / h ~ 1e-10, against
    # gradients of ~1e-2..1, so 1e-6 leaves a wide margin (observed worst about 1e-8).
    rng = np.random.default_rng(0)
    params = {k: v.astype(np.float64) + rng.normal(0, 0.3, v.shape) for k, v in init_params(2, 8, 0).items()}
    idx = rng.integers(0, 256, (2, 5))
    targets = rng.integers(0, 256, (2, 5))
    _, grads = loss_and_grads(params, idx, targets)
    assert set(grads) == set(params)
    used_rows = set(idx.ravel().tolist())
    errors = {}
    for name, arr in params.items():
        only = (lambda i: i[0] in used_rows) if name == "emb.weight" else None
        num = _central_difference(lambda: forward(params, idx, targets)[1], arr, 1e-5, only)
        assert np.abs(num).max() > 1e-6, name  # the check must not pass on all-zero gradients
        errors[name] = _rel_err(num, grads[name])
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-6, (worst, errors[worst])
    # rows of tokens that never occur get exactly zero gradient
    unused = [r for r in range(256) if r not in used_rows]
    assert not grads["emb.weight"][unused].any()


def _wkv_case(rng, T, B, C, key_scale, u_scale):
    """Inputs of the training kernels, time-major (T, B, C)."""
    w = np.exp(rng.uniform(-4, 1.5, C))  # positive decays from e^-4 to e^1.5
    u = rng.uniform(-u_scale, u_scale, C)
    k = rng.uniform(-key_scale, key_scale, (T, B, C))
    v = rng.normal(size=(T, B, C))
    gy = rng.normal(size=(T, B, C))
    return w, u, k, v, gy


def _naive_wkv(w, u, k, v):
    y = np.zeros_like(k)
    for t in range(len(k)):
        num = np.exp(u + k[t]) * v[t]
        den = np.exp(u + k[t])
        for i in range(t):
            e = np.exp(-(t - 1 - i) * w + k[i])
            num = num + e * v[i]
            den = den + e
        y[t] = num / den
    return y


def test_wkv_forward_equals_the_definition():
    rng = np.random.default_rng(1)
    w, u, k, v, _ = _wkv_case(rng, 9, 2, 4, 2.0, 1.0)
    y, _ = wkv_forward(w, u, k, v)
    # same float64 sums in another order: differences at the 1e-16 * (T terms) level
    np.testing.assert_allclose(y, _naive_wkv(w, u, k, v), rtol=0, atol=1e-13)


@pytest.mark.parametrize("key_scale,u_scale", [(1.0, 1.0), (100.0, 5.0)])
def test_wkv_backward_matches_finite_differences(key_scale, u_scale):
    rng = np.random.default_rng(2)
    w, u, k, v, gy = _wkv_case(rng, 8, 2, 3, key_scale, u_scale)
    if key_scale > 1:
        # large enough that evaluating e^k naively overflows float32, where training runs
        with np.errstate(over="ignore"):
            assert np.isinf(np.exp(np.abs(k).max().astype(np.float32) + np.float32(u_scale)))
    y, saves = wkv_forward(w, u, k, v)
    assert np.isfinite(y).all()
    gw, gu, gk, gv = wkv_backward(w, u, k, v, y, saves, gy)
    f = lambda: float((wkv_forward(w, u, k, v)[0] * gy).sum())  # noqa: E731
    # h = 1e-5 as above; the stable forward is smooth in every input (a max only picks the scale), so
    # central differences of it are valid even where e^k itself is out of range (observed <= 1e-8)
    for name, arr, ana in (("w", w, gw), ("u", u, gu), ("k", k, gk), ("v", v, gv)):
        num = _central_difference(f, arr, 1e-5)
        assert _rel_err(num, ana) < 1e-6, name
    # float32 inputs (what training uses) stay finite and agree with float64 to float32 precision
    y32, s32 = wkv_forward(*(a.astype(np.float32) for a in (w, u, k, v)))
    g32 = wkv_backward(*(a.astype(np.float32) for a in (w, u, k, v)), y32, s32, gy.astype(np.float32))
    assert y32.dtype == np.float32 and np.isfinite(y32).all()
    assert all(np.isfinite(g).all() for g in g32)
    # inputs rounded to float32 (rel 6e-8) move exponents of size 100 by ~6e-6: y moves by about that
    np.testing.assert_allclose(y32, y, rtol=0, atol=1e-4 if key_scale > 1 else 1e-5)


# ------------------------------------------------------------------ the variants of the ablations

_MU = ("att.time_mix_k", "att.time_mix_v", "att.time_mix_r", "ffn.time_mix_k", "ffn.time_mix_r")
VARIANTS = {
    "mu=1 frozen, u=0 frozen": Variant(set_to=tuple((n, 1.0) for n in _MU) + (("att.time_first", 0.0),),
                                       frozen=_MU + ("att.time_first",)),
    "decay tied": Variant(tied=("att.time_decay",)),
    "decay frozen": Variant(frozen=("att.time_decay",)),
    "channel mixing first": Variant(sublayers=("ffn", "att")),
    "no channel mixing": Variant(sublayers=("att",)),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_gradients_match_finite_differences(name):
    # As above (float64, h = 1e-5, the init plus noise), for the variant's free parameters: every entry
    # of every block vector, and entries of each matrix. A tied vector is one parameter: moving all its
    # channels together by h must change the loss by the gradient each channel holds (the sum).
    # Frozen and unused parameters must get exactly zero.
    v = VARIANTS[name]
    rng = np.random.default_rng(5)
    params = v.init({k: a.astype(np.float64) + (rng.normal(0, 0.3, a.shape) if a.ndim == 2 else 0)
                     for k, a in init_params(2, 6, 0).items()})
    # the noise makes the zero-initialised projections carry gradient; the block vectors keep the
    # variant's values (u = 0, mu = 1, equal tied channels) plus their own noise where learned
    for k, a in params.items():
        short = k.split(".", 2)[2] if k.startswith("blocks.") else ""
        if a.ndim == 1 and short not in v.frozen and short not in v.tied:
            a += rng.normal(0, 0.1, a.shape)
    idx, targets = rng.integers(0, 256, (2, 2, 5))
    _, grads = loss_and_grads(params, idx, targets, v)
    loss = lambda: forward(params, idx, targets, variant=v)[1]  # noqa: E731
    checked = 0
    for k, a in params.items():
        short = k.split(".", 2)[2] if k.startswith("blocks.") else ""
        if short in v.frozen or short in v.unused():
            assert not grads[k].any(), k
            continue
        if short in v.tied:
            assert (params[k] == params[k][0]).all() and (grads[k] == grads[k][0]).all(), k
            a += 1e-5
            fp = loss()
            a -= 2e-5
            fm = loss()
            a += 1e-5
            assert abs((fp - fm) / 2e-5 - grads[k][0]) < 1e-6 * max(abs(grads[k][0]), 1e-3), k
            checked += 1
            continue
        if k == "emb.weight":
            only = lambda i: i[0] == idx[0, 0]  # noqa: E731
        elif a.ndim == 2:
            only = lambda i: sum(i) % 5 == 0  # noqa: E731 - a fifth of each matrix
        else:
            only = None
        num = _central_difference(loss, a, 1e-5, only)
        mask = num != 0
        assert mask.any(), k
        assert _rel_err(num[mask], grads[k][mask]) < 1e-6, k
        checked += mask.sum()
    assert checked > 200


def test_the_default_variant_changes_nothing():
    # Variant() is the paper's block: the same loss and gradients, bit for bit, as the call without it
    rng = np.random.default_rng(6)
    params = {k: a + rng.normal(0, 0.3, a.shape).astype(np.float32) for k, a in init_params(2, 8, 1).items()}
    idx, targets = rng.integers(0, 256, (2, 3, 7))
    loss0, g0 = loss_and_grads(params, idx, targets)
    loss1, g1 = loss_and_grads(params, idx, targets, Variant(sublayers=("att", "ffn"), frozen=(), tied=()))
    assert loss0 == loss1 and all(np.array_equal(g0[k], g1[k]) for k in g0)
    copies = {k: g.copy() for k, g in g1.items()}
    Variant().grads(copies)  # and its gradient filter is the identity
    assert all(np.array_equal(copies[k], g1[k]) for k in g1)
