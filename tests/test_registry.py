"""rwkv_np.registry and rwkv_np.architecture: the architectures rwkv_np runs, in one registry that the
loader, the model and the state consult. An architecture registered from outside (no module of rwkv_np
edited) is loaded, run and saved like a built-in one; detection picks each version by its marker; the
parameter tables give the shapes, counts and nested params everything else uses."""

import dataclasses

import numpy as np
import pytest

import rwkv_np
from rwkv_np import ArgumentError, RWKVConfig, State, registry
from rwkv_np.architecture import Architecture, blocks_prefix
from rwkv_np.rwkv4 import reference as reference_v4

from helpers import (DIMS, LATER, as_pth_vectors, expected_model_weights, random_flat, safetensors_bytes, step_by_step,
                     tiny_weights)

# ---- an architecture registered from outside ------------------------------------------------------------


@pytest.fixture
def layers_arch():
    """RWKV-4 under other names: its blocks are `layers.{i}.` in the checkpoint."""
    arch = dataclasses.replace(rwkv_np.rwkv4.ARCH, name="4-layers", title="RWKV-4 (layers.)",
                               marker="layers.0.att.time_first", priority=100,
                               rename=rwkv_np.architecture.blocks_prefix("layers."))
    registry.register(arch)
    try:
        yield arch
    finally:
        registry.unregister("4-layers")
    assert "4-layers" not in [a.name for a in registry.architectures()]


def test_an_architecture_registered_from_outside_loads_runs_and_saves(tmp_path, layers_arch):
    flat = expected_model_weights(tiny_weights(n_layer=3, C=16, V=40, F=64, seed=11))
    renamed = {k.replace("blocks.", "layers.", 1) if k.startswith("blocks.") else k: v for k, v in flat.items()}
    assert sum(k.startswith("layers.") for k in renamed) == 3 * 18 + 2  # every block tensor, and ln0
    (tmp_path / "layers.safetensors").write_bytes(safetensors_bytes(renamed))
    (tmp_path / "blocks.safetensors").write_bytes(safetensors_bytes(flat))

    model = rwkv_np.load_model(tmp_path / "layers.safetensors")
    assert model.config.version == "4-layers" and model.arch is layers_arch
    assert sorted(model.weights) == sorted(flat)  # the table's names, as the rename made them
    same = rwkv_np.load_model(tmp_path / "blocks.safetensors")  # the same weights under BlinkDL's names
    assert same.config.version == "4" and same.config == dataclasses.replace(model.config, version="4")
    assert model.reference is reference_v4 and model.reference_options() == {"eps": 1e-5}

    tokens = np.random.default_rng(2).integers(0, 40, 30)
    ref_logits, ref_state = reference_v4.forward(model.params, tokens)
    step_logits, step_state = step_by_step(reference_v4, model.params, tokens)
    for mode, want, want_state in (("parallel", ref_logits, ref_state), ("recurrent", step_logits, step_state)):
        logits, state = model.forward(tokens, mode=mode, return_all=True)
        # bit-identical to the built-in RWKV-4 on the same weights: the strongest statement
        blink, blink_state = same.forward(tokens, mode=mode, return_all=True)
        np.testing.assert_array_equal(logits, blink)
        assert state == blink_state
        # and the RWKV-4 reference's numbers, to float32 rounding (tests/test_rwkv4_engine.py's bound)
        np.testing.assert_allclose(logits, want, rtol=0, atol=2e-5)
        np.testing.assert_allclose(state.data, want_state, rtol=1e-5, atol=2e-5)

    # the state: RWKV-4's shape, saved and loaded, continuing exactly
    assert state.data.shape == (3, 5, 16) and state.wkv is None
    assert model.init_state() == State.initial(model.config) == same.init_state()
    state.save(tmp_path / "s.npz")
    back = State.load(tmp_path / "s.npz")
    assert back == state
    a, sa = model.forward([1, 2, 3], back, mode="recurrent")
    b, sb = model.forward([1, 2, 3], state, mode="recurrent")
    np.testing.assert_array_equal(a, b)
    assert sa == sb
    with pytest.raises(ArgumentError, match=r"state: shape \(2, 5, 16\) does not fit this RWKV-4 \(layers\.\) model"):
        model.forward([1], State(np.zeros((2, 5, 16))))


def test_a_registered_architectures_checks_name_the_files_tensors(tmp_path, layers_arch):
    flat = expected_model_weights(tiny_weights(n_layer=2, C=8, V=16, F=32))
    renamed = {k.replace("blocks.", "layers.", 1) if k.startswith("blocks.") else k: v for k, v in flat.items()}
    del renamed["layers.1.att.time_first"]
    (tmp_path / "m.safetensors").write_bytes(safetensors_bytes(renamed))
    with pytest.raises(rwkv_np.CheckpointError, match=r"m.safetensors: not a valid RWKV-4 \(layers\.\) checkpoint "
                                                      r"for n_layer=2, .*: missing tensor blocks.1.att.time_first"):
        rwkv_np.load_model(tmp_path / "m.safetensors")
    renamed["layers.1.att.time_first"] = flat["blocks.1.att.time_first"]
    renamed["blocks.1.att.time_first"] = flat["blocks.1.att.time_first"]  # both names for one tensor
    (tmp_path / "m.safetensors").write_bytes(safetensors_bytes(renamed))
    with pytest.raises(rwkv_np.CheckpointError, match=r"m.safetensors: tensors 'layers.1.att.time_first' and "
                                                      r"'blocks.1.att.time_first' are both 'blocks.1.att.time_first'"):
        rwkv_np.load_model(tmp_path / "m.safetensors")


def test_registering_is_checked_and_undone(layers_arch):
    assert registry.get("4-layers") is layers_arch and registry.architectures()[0] is layers_arch  # priority 100
    with pytest.raises(ArgumentError, match=r"register: an architecture named '4-layers' is already registered"):
        registry.register(dataclasses.replace(layers_arch, title="other"))
    replaced = registry.register(dataclasses.replace(layers_arch, title="other"), replace=True)
    assert registry.get("4-layers") is replaced and replaced.title == "other"
    registry.register(layers_arch, replace=True)
    with pytest.raises(ArgumentError, match=r"register: expected an rwkv_np.architecture.Architecture, got dict"):
        registry.register({"name": "x"})
    registry.unregister("no such architecture")  # nothing to remove: nothing happens
    assert registry.detect({"emb.weight", "layers.0.att.time_first"}) is layers_arch


# ---- the built-in ones --------------------------------------------------------------------------------

def test_the_built_in_architectures_in_look_up_order():
    assert [a.name for a in registry.architectures()] == ["7", "6", "5.2", "5.1", "4"]
    assert [a.title for a in registry.architectures()] == ["RWKV-7", "RWKV-6", "RWKV-5.2", "RWKV-5.1", "RWKV-4"]
    for arch in registry.architectures():
        assert registry.get(arch.name) is arch and isinstance(arch, Architecture)
        assert registry.engine(arch).__module__ == arch.engine
        assert registry.reference(arch).__name__ == arch.reference


def test_an_unknown_version_is_named():
    with pytest.raises(ArgumentError, match=r"^version '9' is not a registered architecture "
                                            r"\('7', '6', '5.2', '5.1', '4'\)$"):
        registry.get("9")
    with pytest.raises(ArgumentError, match=r"version 'None' is not a registered architecture"):
        registry.get(None)


def test_detect():
    base = {"emb.weight", "blocks.0.att.key.weight"}
    assert registry.detect(base).name == "4"
    assert registry.detect(base | {"blocks.0.att.ln_x.weight"}).name == "5.1"
    assert registry.detect(base | {"blocks.0.att.ln_x.weight", "blocks.0.att.gate.weight"}).name == "5.2"
    assert registry.detect(base | {"blocks.0.att.gate.weight", "blocks.0.att.time_maa_x"}).name == "6"
    assert registry.detect(base | {"blocks.0.att.k_k", "blocks.0.att.ln_x.weight"}).name == "7"
    assert registry.detect(set()).name == "4"  # no marker: the architecture without one


@pytest.mark.parametrize("version", ("4",) + LATER)
def test_config_from_weights(version):
    flat = random_flat(version)
    config = registry.config_from_weights(flat)
    assert config.version == version
    assert (config.n_layer, config.n_embd, config.vocab_size, config.ffn_dim) == (3, 16, 40, 24)
    assert config.dims == {k: DIMS[k] for k in config.dims}
    assert registry.get(version).n_params(config) == sum(a.size for a in flat.values())


# ---- the tables -----------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ("4",) + LATER)
def test_a_table_gives_shapes_nested_params_and_back(version):
    arch = registry.get(version)
    flat = random_flat(version)
    rows = list(arch.params_of(3))
    assert [name for name, _, _ in rows] == list(arch.shapes(DIMS)) == list(flat)  # one order everywhere
    for name, p, layer in rows:
        assert (layer is None) == (not name.startswith("blocks.") or name.startswith("blocks.0.ln0."))
        assert p.size(DIMS) == arch.shapes(DIMS)[name]
    nested = arch.nest(as_pth_vectors(flat))  # the sizes read off the weights; (1, 1, C) vectors squeezed
    assert len(nested["blocks"]) == 3 and set(nested["ln0"]) == {"weight", "bias"}
    assert not any(path.endswith(".eps") for path, _ in _leaves(nested))  # epsilons are the reference's arguments
    back = arch.flatten(nested)
    assert list(back) == list(flat)
    for name, a in flat.items():
        assert back[name].dtype == np.float32
        np.testing.assert_array_equal(back[name], a)
    kept = arch.nest({k: v.astype(np.float64) for k, v in flat.items()}, 3, dtype=None)
    assert kept["head"].dtype == np.float64  # dtype=None: as given


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}.{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _leaves(v, f"{prefix}.{i}")
    else:
        yield prefix, tree


def test_the_rwkv4_table_in_numbers():
    arch = registry.get("4")
    params = {name: p for name, p, _ in arch.params_of(2)}
    assert len(params) == 6 + 2 * 18 and list(params)[:3] == ["emb.weight", "blocks.0.ln0.weight",
                                                              "blocks.0.ln0.bias"]
    p = params["blocks.1.ffn.key.weight"]
    assert (p.symbol, p.eq, p.path) == ("W'_k", "17", ("ffn", "key"))
    assert p.size({"C": 768, "F": 3072, "V": 50277}) == (3072, 768)
    assert params["blocks.0.ln1.weight"].path == ("ln1", "weight")  # a norm's scale keeps its name
    config = RWKVConfig(n_layer=12, n_embd=768, vocab_size=50277, ffn_dim=3072)
    assert arch.n_params(config) == 169_342_464  # RWKV-4-Pile-169M
    assert arch.state_shapes(config) == ((12, 5, 768), None)
    assert arch.configure({"V": 50277, "C": 768, "L": 12, "F": 3072}) == config


def test_a_later_table_in_numbers():
    arch = registry.get("7")
    config = registry.config_from_weights(random_flat("7"))
    assert arch.state_shapes(config) == ((3, 2, 16), (3, 2, 8, 8))
    assert "blocks.0.att.v1" not in arch.shapes(DIMS) and "blocks.1.att.v1" in arch.shapes(DIMS)  # no value
    # residual in block 0
    assert config.reference_options() == {"eps": 1e-5, "ln_x_eps": 64e-5}
    assert arch.configure(DIMS, ln_x_eps=1e-5).ln_x_eps == 1e-5


def test_blocks_prefix_renames_block_indices_only():
    rename = blocks_prefix("layers.")
    assert rename("layers.0.att.key.weight") == "blocks.0.att.key.weight"
    assert rename("layers.12.ln1.bias") == "blocks.12.ln1.bias"
    for untouched in ("emb.weight", "layers.x.y", "xlayers.0.y", "head.weight", "blocks.0.ln0.weight"):
        assert rename(untouched) == untouched
    assert blocks_prefix("model.layers.")("model.layers.3.ffn.key.weight") == "blocks.3.ffn.key.weight"
