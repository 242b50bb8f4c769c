"""The recurrent state (rwkv_np/state.py): immutable, copyable, saved and loaded exactly, validated; for
RWKV-4 (one (L, 5, C) array) and for the later versions (with the (L, H, N, N) matrices)."""

import io
import os
import re
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rwkv_np import ArgumentError, RWKVConfig, State
from rwkv_np.rwkv4.reference import PP, PP_EMPTY


def test_initial_state_is_zero_with_an_empty_running_maximum():
    s = State.initial(RWKVConfig(n_layer=3, n_embd=8, vocab_size=16, ffn_dim=32))
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
    with pytest.raises(ArgumentError, match=r"state file .*missing\.npz: cannot open it \(No such file"):
        State.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ArgumentError, match=r"other\.npz: not an rwkv_np state file"):
        State.load(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ArgumentError, match=r"junk\.npz: not a valid state file \(BadZipFile"):
        State.load(tmp_path / "junk.npz")


def test_bad_state_arrays_are_refused():
    with pytest.raises(ArgumentError, match=r"state: expected an array of shape \(n_layer, 5, C\), got \(5, 4\)"):
        State(np.zeros((5, 4)))
    bad = np.zeros((1, 5, 4))
    bad[0, 1, 2] = np.nan
    with pytest.raises(ArgumentError, match="state: contains NaN or infinite values"):
        State(bad)


# --- state files are untrusted input -------------------------------------------------------------

GOOD = np.arange(2 * 5 * 6, dtype=np.float32).reshape(2, 5, 6) / 7


def _member(header_shape, dtype="<f4", data=b"", fortran=False, compress=zipfile.ZIP_STORED):
    """The bytes of an .npz whose rwkv_np_state.npy has the given header and raw data."""
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": np.dtype(dtype).str if not isinstance(dtype, list) else dtype,
                                               "fortran_order": fortran, "shape": header_shape})
    npy.write(data)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compress) as zf:
        zf.writestr("rwkv_np_state.npy", npy.getvalue())
    return out.getvalue()


@pytest.mark.parametrize("name", ["s.state", "noext", "x.npz", "a.b.c", "with space.st"])
def test_save_writes_exactly_the_path_given(tmp_path, name):
    State(GOOD).save(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no ".npz" added, no temporary left
    assert State.load(tmp_path / name) == State(GOOD)
    assert State.load(str(tmp_path / name)) == State(GOOD)


def test_save_replaces_atomically_and_refuses_bad_destinations(tmp_path):
    target = tmp_path / "s.state"
    State(GOOD).save(target)
    State(GOOD * 2).save(target)
    assert State.load(target) == State(GOOD * 2) and [p.name for p in tmp_path.iterdir()] == ["s.state"]
    mask = os.umask(0o027)
    try:
        State(GOOD).save(tmp_path / "m.state")  # permissions as for any new file, not the temporary's 0600
    finally:
        os.umask(mask)
    assert (tmp_path / "m.state").stat().st_mode & 0o777 == 0o640
    (tmp_path / "m.state").unlink()
    with pytest.raises(ArgumentError, match=r"nowhere/s\.state: cannot write the state file: the folder .*nowhere "
                                            r"does not exist"):
        State(GOOD).save(tmp_path / "nowhere" / "s.state")
    with pytest.raises(ArgumentError, match=r"cannot write the state file: it is a folder"):
        State(GOOD).save(tmp_path)
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(ArgumentError, match=r"file/s\.state: cannot write the state file: the folder"):
        State(GOOD).save(tmp_path / "file" / "s.state")
    for bad in (b"s.state", None, 3):
        with pytest.raises(ArgumentError, match=r"state file path: expected a str or os.PathLike"):
            State(GOOD).save(bad)


@pytest.mark.parametrize("array", [
    np.array([[["a"] * 3] * 5]), np.zeros((1, 5, 3), [("x", "<f4"), ("y", "<i4")]),
    np.zeros((1, 5, 3), np.complex64) + 1j, np.zeros((1, 5, 3), np.float64), np.zeros((1, 5, 3), np.float16),
    np.zeros((1, 5, 3), np.int32), np.zeros((1, 5, 3), bool), np.zeros((1, 5, 3), ">f4"),
    np.array([[[None] * 3] * 5], dtype=object)], ids=lambda a: str(a.dtype))
def test_load_refuses_every_dtype_but_float32(tmp_path, array):
    np.savez(tmp_path / "s.npz", rwkv_np_state=array)
    with pytest.raises(ArgumentError, match=r"s\.npz: not a valid state file: its array has dtype .*expected float32"):
        State.load(tmp_path / "s.npz")


@pytest.mark.parametrize("shape", [(5, 4), (2, 4, 4), (0, 5, 3), (2, 5, 0), (1, 5, 3, 1), ()])
def test_load_refuses_shapes_that_are_not_a_state(tmp_path, shape):
    np.savez(tmp_path / "s.npz", rwkv_np_state=np.zeros(shape, np.float32))
    with pytest.raises(ArgumentError, match=r"s\.npz: not a valid state file: its array has shape"):
        State.load(tmp_path / "s.npz")


def test_load_refuses_fortran_order_and_non_finite_values(tmp_path):
    (tmp_path / "f.npz").write_bytes(_member((1, 5, 2), fortran=True, data=bytes(40)))
    with pytest.raises(ArgumentError, match=r"f\.npz: not a valid state file: .*Fortran order"):
        State.load(tmp_path / "f.npz")
    for value in (np.nan, np.inf, -np.inf):
        bad = GOOD.copy()
        bad[1, 3, 4] = value
        np.savez(tmp_path / "n.npz", rwkv_np_state=bad)
        with pytest.raises(ArgumentError, match=r"n\.npz: state: contains NaN or infinite values"):
            State.load(tmp_path / "n.npz")


@pytest.mark.parametrize("shape,data", [((1, 5, 2 * 10**9), bytes(40)), ((10**6, 5, 10**6), b""),
                                        ((3, 5, 7), bytes(4 * 3 * 5 * 7 - 4)), ((1, 5, 2), bytes(44)),
                                        ((2**62, 5, 2**62), b"")])
def test_load_checks_the_header_against_the_member_before_allocating(tmp_path, shape, data):
    (tmp_path / "h.npz").write_bytes(_member(shape, data=data))
    tracemalloc.start()
    try:
        with pytest.raises(ArgumentError, match=r"h\.npz: (not a valid|corrupt) state file: .*(more than the|"
                                                r"header says \d+ bytes of data, the archive member holds \d+)"):
            State.load(tmp_path / "h.npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # refused from the header: nothing of the claimed size was allocated


def test_load_refuses_a_file_larger_than_any_state_without_reading_it(tmp_path):
    from rwkv_np.state import MAX_STATE_BYTES

    with open(tmp_path / "big.npz", "wb") as f:
        f.truncate(MAX_STATE_BYTES + (1 << 20) + 1)  # sparse: nothing to read, nothing must be read
    with pytest.raises(ArgumentError, match=rf"big\.npz: not an rwkv_np state file: {MAX_STATE_BYTES + (1 << 20) + 1} "
                                            r"bytes, more than the state of any RWKV-4 model needs"):
        State.load(tmp_path / "big.npz")


def test_load_refuses_compressed_members_so_a_zip_bomb_cannot_expand(tmp_path):
    state = np.zeros((64, 5, 4096), np.float32)  # 5 MB of zeros compress to a few KB
    (tmp_path / "z.npz").write_bytes(_member(state.shape, data=state.tobytes(), compress=zipfile.ZIP_DEFLATED))
    assert (tmp_path / "z.npz").stat().st_size < 50_000
    with pytest.raises(ArgumentError, match=r"z\.npz: not an rwkv_np state file: .*compressed"):
        State.load(tmp_path / "z.npz")
    np.savez_compressed(tmp_path / "c.npz", rwkv_np_state=GOOD)
    with pytest.raises(ArgumentError, match=r"c\.npz: not an rwkv_np state file: .*compressed"):
        State.load(tmp_path / "c.npz")


def test_load_refuses_a_npy_a_fifo_a_folder_and_a_device(tmp_path):
    np.save(tmp_path / "s.npy", GOOD)
    with pytest.raises(ArgumentError, match=r"s\.npy: not an rwkv_np state file: it is a single \.npy array"):
        State.load(tmp_path / "s.npy")
    os.mkfifo(tmp_path / "fifo")  # nobody writes to it: opening it for a blocking read would hang
    for path in (tmp_path / "fifo", tmp_path, Path(os.devnull)):
        with pytest.raises(ArgumentError, match=rf"state file {re.escape(str(path))}: not a regular file"):
            State.load(path)


def test_every_truncation_and_data_corruption_is_our_error(tmp_path):
    State(GOOD).save(tmp_path / "s.npz")
    whole = (tmp_path / "s.npz").read_bytes()
    for n in list(range(0, len(whole), 13)) + [len(whole) - 1]:
        (tmp_path / "t.npz").write_bytes(whole[:n])
        with pytest.raises(ArgumentError, match=r"t\.npz: (not a valid|corrupt|not an rwkv_np)"):
            State.load(tmp_path / "t.npz")
    start = whole.index(GOOD.tobytes()[:16])  # the raw float32 data inside the stored member
    for i in range(start, start + GOOD.nbytes, 29):
        flipped = bytearray(whole)
        flipped[i] ^= 0x40
        (tmp_path / "f.npz").write_bytes(bytes(flipped))
        with pytest.raises(ArgumentError, match=r"f\.npz: not a valid state file \(BadZipFile: Bad CRC-32"):
            State.load(tmp_path / "f.npz")


@pytest.mark.parametrize("value,message", [
    (np.zeros((1, 5, 3), np.complex64), r"expected real numbers \(float32\), got dtype complex64"),
    (np.array([[["a"] * 3] * 5]), r"expected real numbers \(float32\), got dtype <U1"),
    ([[[1.0, 2.0]] * 5, [[1.0]] * 5], r"expected an array of shape \(n_layer, 5, C\), got list"),
    (np.full((1, 5, 3), 1e300), r"contains NaN or infinite values"),  # beyond float32: inf
    (np.zeros((0, 5, 3), np.float32), r"expected an array of shape .*, got \(0, 5, 3\)")])
def test_state_constructor_refuses_what_is_not_a_real_state(value, message):
    with pytest.raises(ArgumentError, match=r"state: " + message):
        State(value)


# --- the later versions' state: a pair of arrays ---------------------------------------------------

def test_initial_state_of_a_later_version_is_zero():
    s = State.initial(RWKVConfig(n_layer=3, n_embd=16, vocab_size=40, ffn_dim=24, version="7", n_head=2,
                                 head_size=8))
    assert s.data.shape == (3, 2, 16) and s.wkv.shape == (3, 2, 8, 8)
    assert s.data.dtype == s.wkv.dtype == np.float32 and not s.data.any() and not s.wkv.any()
    assert not s.data.flags.writeable and not s.wkv.flags.writeable


def test_later_state_arrays_are_checked():
    with pytest.raises(ArgumentError, match=r"state wkv: expected an array of shape \(3, H, N, N\)"):
        State(np.zeros((3, 2, 16)), np.zeros((2, 2, 8, 8)))
    with pytest.raises(ArgumentError, match=r"state wkv: expected an array of shape \(3, H, N, N\)"):
        State(np.zeros((3, 2, 16)), np.zeros((3, 2, 8, 4)))  # the matrices are square
    with pytest.raises(ArgumentError, match="state wkv: contains NaN"):
        State(np.zeros((3, 2, 16)), np.full((3, 2, 8, 8), np.nan))
    with pytest.raises(ArgumentError, match=r"state: expected an array of shape \(n_layer, 2, C\)"):
        State(np.zeros((3, 5, 16)), np.zeros((3, 2, 8, 8)))


def test_state_file_of_a_later_version_is_checked(tmp_path):
    good = State(np.ones((3, 2, 16)), np.full((3, 2, 8, 8), 0.5))
    good.save(tmp_path / "s.npz")
    back = State.load(tmp_path / "s.npz")
    assert back == good and back.wkv.dtype == np.float32 and not back.wkv.flags.writeable
    assert back != State(np.ones((3, 2, 16)), np.zeros((3, 2, 8, 8)))
    assert back != State(np.ones((3, 5, 16)))  # an RWKV-4 state is another kind of state
    # the matrices of another layer count
    np.savez(tmp_path / "l.npz", rwkv_np_state=np.zeros((3, 2, 16), np.float32),
             rwkv_np_wkv=np.zeros((2, 2, 8, 8), np.float32))
    with pytest.raises(ArgumentError, match=r"l.npz: not a valid state file: its array has shape \(2, 2, 8, 8\), "
                                            r"expected \(3, H, N, N\)"):
        State.load(tmp_path / "l.npz")
    # compressed members could expand to any size: refused before reading
    np.savez_compressed(tmp_path / "c.npz", rwkv_np_state=np.zeros((3, 2, 16), np.float32),
                        rwkv_np_wkv=np.zeros((3, 2, 8, 8), np.float32))
    with pytest.raises(ArgumentError, match="c.npz: not an rwkv_np state file: its 'rwkv_np_state' array is compressed"):
        State.load(tmp_path / "c.npz")
    # a float64 wkv member is refused, not converted
    np.savez(tmp_path / "d.npz", rwkv_np_state=np.zeros((3, 2, 16), np.float32),
             rwkv_np_wkv=np.zeros((3, 2, 8, 8)))
    with pytest.raises(ArgumentError, match="d.npz: not a valid state file: its array has dtype float64"):
        State.load(tmp_path / "d.npz")
