"""The recurrent state: immutable, copyable, saved and loaded exactly, validated."""

import numpy as np
import pytest

from rwkv_np import ArgumentError, State
from rwkv_np.state import PP
from rwkv_np.reference import PP_EMPTY


def test_initial_state_is_zero_with_an_empty_running_maximum():
    s = State.initial(3, 8)
    assert s.data.shape == (3, 5, 8) and s.data.dtype == np.float32
    assert np.all(s.data[:, PP] == np.float32(PP_EMPTY))
    assert np.count_nonzero(s.data) == 3 * 8
    assert (s.n_layer, s.n_embd) == (3, 8)


def test_state_is_read_only_and_owns_its_data():
    source = np.ones((1, 5, 4), np.float32)
    s = State(source)
    source[:] = 7  # the caller's array changing later must not reach the state
    assert np.all(s.data == 1)
    with pytest.raises(ValueError):
        s.data[0, 0, 0] = 2


def test_save_load_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    s = State(rng.normal(size=(2, 5, 6)).astype(np.float32))
    s.save(tmp_path / "state.npz")
    assert State.load(tmp_path / "state.npz") == s
    assert s.copy() == s and s.copy() is not s


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ArgumentError, match=r"missing\.npz: cannot read a state file"):
        State.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ArgumentError, match=r"other\.npz: not an rwkv_np state file"):
        State.load(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ArgumentError, match=r"junk\.npz: cannot read a state file"):
        State.load(tmp_path / "junk.npz")


def test_bad_state_arrays_are_refused():
    with pytest.raises(ArgumentError, match=r"state: expected an array of shape \(n_layer, 5, C\), got \(5, 4\)"):
        State(np.zeros((5, 4)))
    bad = np.zeros((1, 5, 4))
    bad[0, 1, 2] = np.nan
    with pytest.raises(ArgumentError, match="state: contains NaN or infinite values"):
        State(bad)
