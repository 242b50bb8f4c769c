"""The trainer's forward (rwkv_np/training/model.py) against RWKV-4's reference, its initialisation
against the parameter table (rwkv_np/rwkv4/params.py) and the trainer it replaced, and its memory
estimate against what it allocates."""

import tracemalloc

import numpy as np
import pytest

from rwkv_np.config import RWKVConfig
from rwkv_np.rwkv4 import reference
from rwkv_np.rwkv4.params import ARCH, BLOCK, EMBED, OUT, random_weights
from rwkv_np.training import init, model

F32_EPS = np.finfo(np.float32).eps


@pytest.mark.parametrize("seed", [0, 1])
def test_training_forward_is_the_reference_forward_on_every_row(seed):
    cfg = RWKVConfig(n_layer=3, n_embd=24, vocab_size=256, ffn_dim=96)
    weights = random_weights(cfg, seed)
    idx = np.random.default_rng(seed).integers(0, 256, (3, 13))
    for dtype in (np.float64, np.float32):
        params = {k: v.astype(dtype) for k, v in weights.items()}
        logits, loss, _ = model.forward(params, idx)
        assert logits.shape == (3, 13, 256) and logits.dtype == dtype and loss is None
        nested = ARCH.nest(params, cfg.n_layer, dtype=None)  # in the params' own dtype
        expected = np.stack([reference.forward(nested, row, eps=model.EPS)[0] for row in idx])  # each from the initial state
        scale = np.abs(expected).max()
        if dtype == np.float64:
            # the same operations; only eq. 14's scan (compiled, float64 either way) and the products'
            # blocking over B*T rows instead of T differ, at the level of float64 rounding
            np.testing.assert_allclose(logits, expected, rtol=0, atol=1e3 * np.finfo(np.float64).eps * scale)
        else:
            # float32: eq. 14 runs in float64 here and in float32 in the reference (a few ulps of wkv),
            # and sums of up to 96 terms are blocked differently; through 3 layers that stays within
            # 32 ulps of the largest logit (about 2 ulps seen)
            np.testing.assert_allclose(logits, expected, rtol=0, atol=32 * F32_EPS * scale)


def test_the_loss_is_the_mean_cross_entropy_of_the_logits():
    params = {k: v.astype(np.float64) for k, v in random_weights(RWKVConfig(2, 16, 256, 64), 3).items()}
    rng = np.random.default_rng(3)
    idx, targets = rng.integers(0, 256, (2, 9)), rng.integers(0, 256, (2, 9))
    logits, loss, _ = model.forward(params, idx, targets)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))  # |logits| < 10: no overflow
    expected = -np.mean([logp[b, t, targets[b, t]] for b in range(2) for t in range(9)])
    assert loss == pytest.approx(expected, rel=1e-12)


# Values of the trainer this package replaced (rwkv_np/train.py at 227eb07), init_params(2, 16, seed=7):
# the first two entries of the first row and the last two of the last row of every random matrix.
PREVIOUS_INIT = {
    "emb.weight": ([2.50190933002159e-05, 7.944276148919016e-05], [-1.5151152183534577e-05, -8.634672121843323e-05]),
    "blocks.0.att.key.weight": ([-0.005340847186744213, -0.03839259222149849], [0.009890275076031685, -0.03784187138080597]),
    "blocks.0.att.value.weight": ([-0.16586603224277496, 0.02342323400080204], [-0.1385928839445114, 0.08371727913618088]),
    "blocks.0.att.receptance.weight": ([-0.10046734660863876, 0.6800283789634705], [0.09469595551490784, 0.039965055882930756]),
    "blocks.0.ffn.key.weight": ([-0.044712167233228683, -0.1393537074327469], [-0.13142134249210358, 0.06620015949010849]),
    "blocks.1.att.key.weight": ([0.04120447486639023, 0.027684049680829048], [0.008279657922685146, 0.026256199926137924]),
    "blocks.1.att.value.weight": ([0.1105213388800621, -0.3497270941734314], [0.29209408164024353, -0.21158398687839508]),
    "blocks.1.att.receptance.weight": ([-0.22748400270938873, 0.245259627699852], [-0.6343786120414734, -0.10940907150506973]),
    "blocks.1.ffn.key.weight": ([-0.3451804220676422, -0.21081660687923431], [-0.07254043966531754, -0.09704277664422989]),
    "head.weight": ([0.08689410984516144, 0.09141719341278076], [-0.13658224046230316, -0.03161759674549103]),
}


def test_init_draws_the_same_numbers_as_the_previous_trainer():
    p = init.init_params(2, 16, seed=7)
    for name, (first, last) in PREVIOUS_INIT.items():
        # the embedding is drawn directly: equal. The orthogonal matrices go through LAPACK's QR, whose
        # last bits may depend on the BLAS build: within 1e-6 of entries of size ~0.01..0.7
        atol = 0 if name == "emb.weight" else 1e-6
        np.testing.assert_allclose(p[name][0, :2], first, rtol=0, atol=atol, err_msg=name)
        np.testing.assert_allclose(p[name][-1, -2:], last, rtol=0, atol=atol, err_msg=name)


def test_init_follows_the_parameter_table():
    L, C = 2, 8
    p = init.init_params(L, C, seed=1)
    table = {name: param for name, param, _ in ARCH.params_of(L)}
    assert list(p) == list(table)  # every parameter, in the table's order
    for name, param in table.items():
        assert p[name].shape == param.size({"C": C, "F": 4 * C, "V": 256}) and p[name].dtype == np.float32, name
        if param.init in ("ones", "zeros"):
            assert (p[name] == float(param.init == "ones")).all(), name
    assert {q.init for q in EMBED + OUT + BLOCK} <= {
        "ones", "zeros", "embedding", "head", "mix_k", "mix_v", "mix_r", "decay", "bonus", "orthogonal",
        "orthogonal_0.1"}
    # ffn.key (F, C): orthonormal columns times sqrt(F/C) = 2
    k = p["blocks.1.ffn.key.weight"].astype(np.float64)
    np.testing.assert_allclose(k.T @ k, 4 * np.eye(C), atol=1e-5)


@pytest.mark.parametrize("L,C,B,T", [(1, 8, 2, 8), (2, 32, 4, 16), (2, 64, 8, 48)])
def test_memory_estimate_bounds_what_a_step_allocates(L, C, B, T):
    params = init.init_params(L, C, seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (2, B, T), dtype=np.uint8)
    model.loss_and_grads(params, x, y)  # compile first: the compiler's own allocations are not the step's
    tracemalloc.start()
    try:
        model.loss_and_grads(params, x, y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    gradients = 4 * sum(v.size for v in params.values())
    estimate = model.activation_bytes(L, C, 4 * C, 256, B, T) + gradients
    # an upper estimate, and not a loose one: the peaks measured 0.78 to 0.88 of it
    assert peak <= estimate <= 1.5 * peak
