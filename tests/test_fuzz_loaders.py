"""Property tests: whatever bytes a checkpoint file holds, loading returns a Checkpoint or raises
CheckpointError - never another exception, never the loader's "internal error" safety net, never a hang.

Each reader (torch zip .pth, safetensors, rwkv.cpp) gets truncations at any offset of a small valid
file, random byte flips (spread over the file and concentrated on its headers) and random headers.
The properties are a fuzz campaign (slow tier); `benchmarks/fuzz_campaign.py` runs them with many more
examples. The deterministic attacks are tests/test_hostile_checkpoints.py (fast tier).
"""

import atexit
import json
import os
import pickle
import shutil
import struct
import sys
import tempfile
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rwkv_np.errors import CheckpointError
from rwkv_np.loading import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/fuzz_campaign.py imports this module by path
from helpers import (p_global, p_str, rwkv_cpp_bytes, safetensors_bytes, tiny_weights,  # noqa: E402
                     to_hf_names, torch_zip_members, zip_bytes)

# per property (x3 for the two that cover every reader): 3,000 cases, ~25 s on one core. The
# campaign raises it.
EXAMPLES = int(os.environ.get("RWKV_NP_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, database=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# outcome counts per reader, read by benchmarks/fuzz_campaign.py
COUNTS: dict[str, Counter] = defaultdict(Counter)

_DIR = Path(tempfile.mkdtemp(prefix="rwkv_np_fuzz_"))
atexit.register(shutil.rmtree, _DIR, True)


@lru_cache(maxsize=None)
def valid(kind: str) -> bytes:
    """Small valid files (1 layer, C=4, V=8, F=8) so that each case parses in about a millisecond."""
    raw = tiny_weights(n_layer=1, C=4, V=8, F=8, seed=1)
    if kind in ("pth", "pth-bf16"):
        return zip_bytes(torch_zip_members(raw, "bfloat16" if kind == "pth-bf16" else "float32"))
    if kind == "safetensors":
        return safetensors_bytes(to_hf_names(raw), "float16")
    if kind == "rwkv.cpp":
        return rwkv_cpp_bytes(raw, data_type=1)
    raise ValueError(kind)


def check(reader: str, data: bytes) -> None:
    """The property: a Checkpoint with finite float32 weights, or a CheckpointError that is not a bug."""
    path = _DIR / f"case-{reader}"
    path.write_bytes(data)
    try:
        ck = load_checkpoint(path)
    except CheckpointError as e:
        assert "internal error" not in str(e), str(e)
        assert str(path) in str(e)
        COUNTS[reader]["refused"] += 1
        return
    for name, w in ck.weights.items():
        assert w.dtype == np.float32 and w.flags.c_contiguous and np.isfinite(w).all(), name
    COUNTS[reader]["loaded"] += 1


def flips(size: int, hot: int):
    """Lists of (offset, xor mask); offsets anywhere, or in the first `hot` bytes, or in the last 200."""
    pos = st.one_of(st.integers(0, size - 1), st.integers(0, min(hot, size) - 1),
                    st.integers(max(0, size - 200), size - 1))
    return st.lists(st.tuples(pos, st.integers(1, 255)), min_size=1, max_size=6)


def apply(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for at, mask in changes:
        out[at] ^= mask
    return bytes(out)


def pickle_span(data: bytes) -> int:
    return 30 + len("archive/data.pkl") + struct.unpack_from("<I", data, 18)[0]  # stored: sizes equal


# ---- every reader: truncations and byte flips of a valid file -------------------------------------

FILES = ("pth", "pth-bf16", "safetensors", "rwkv.cpp")  # the kinds valid() writes


def reader(kind: str) -> str:
    return "pth" if kind.startswith("pth") else kind


def header_span(kind: str, data: bytes) -> int:
    """How many bytes at the start of a valid file hold its header, where flips do the most harm."""
    if kind.startswith("pth"):
        return pickle_span(data)
    if kind == "safetensors":
        return 8 + struct.unpack_from("<Q", data)[0]
    return 24 + 12 + 8 + 10  # rwkv.cpp: the file header, then the first tensor's record


# as many cases per reader as one property each would get
EVERY_READER = settings(FUZZ, max_examples=3 * EXAMPLES)


@pytest.mark.slow
@EVERY_READER
@given(kind=st.sampled_from(FILES), frac=st.floats(0, 1, exclude_max=True))
def test_truncated(kind, frac):
    data = valid(kind)
    check(reader(kind), data[: int(frac * len(data))])


@pytest.mark.slow
@EVERY_READER
@given(kind=st.sampled_from(FILES), data=st.data())
def test_byte_flips(kind, data):
    good = valid(kind)
    check(reader(kind), apply(good, data.draw(flips(len(good), header_span(kind, good)))))


# ---- torch zip (.pth) -----------------------------------------------------------------------------



@pytest.mark.slow
@FUZZ
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 2), st.binary(min_size=1, max_size=9)),
                      min_size=1, max_size=5))
def test_pth_mutated_pickle_in_a_valid_zip(edits):
    # the zip layer stays valid, so every case reaches the opcode scan and the restricted unpickler
    members = torch_zip_members(tiny_weights(n_layer=1, C=4, V=8, F=8, seed=1))
    pkl = bytearray(members[0][1])
    for frac, how, blob in edits:
        at = int(frac * len(pkl))
        if how == 0:
            pkl[at:at + len(blob)] = blob  # overwrite
        elif how == 1:
            pkl[at:at] = blob  # insert
        else:
            del pkl[at:at + len(blob)]
    members[0] = (members[0][0], bytes(pkl))
    check("pth", zip_bytes(members))


@pytest.mark.slow
@FUZZ
@given(pkl=st.binary(max_size=300), names=st.lists(st.text(max_size=20), max_size=4))
def test_pth_random_pickle_and_members(pkl, names):
    members = [("archive/data.pkl", pickle_prefix(pkl))] + [(n or "x", b"\0" * 16) for n in names]
    check("pth", zip_bytes(members))


def pickle_prefix(pkl: bytes) -> bytes:
    return b"\x80\x02" + pkl


def _long(n: int) -> bytes:
    blob = pickle.encode_long(n)
    return (pickle.LONG1 + bytes([len(blob)]) if len(blob) < 256 else pickle.LONG4 + struct.pack("<i", len(blob))) + blob


# one opcode (with its argument) of those the scan admits, to be repeated: structure bombs are
# made of runs of a few opcodes (nesting, memo aliasing, stack growth, huge integers)
_OPCODE = st.one_of(
    st.sampled_from([pickle.MARK, pickle.POP, pickle.POP_MARK, pickle.DUP, pickle.EMPTY_DICT, pickle.EMPTY_LIST,
                     pickle.EMPTY_TUPLE, pickle.DICT, pickle.LIST, pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2,
                     pickle.TUPLE3, pickle.SETITEM, pickle.SETITEMS, pickle.APPEND, pickle.APPENDS, pickle.NONE,
                     pickle.NEWFALSE, pickle.REDUCE, pickle.BUILD, pickle.BINPERSID, pickle.STACK_GLOBAL,
                     pickle.MEMOIZE]),
    st.builds(lambda i: pickle.BINPUT + bytes([i]), st.integers(0, 4)),
    st.builds(lambda i: pickle.BINGET + bytes([i]), st.integers(0, 4)),
    st.builds(p_str, st.sampled_from(["storage", "cpu", "0", "emb.weight", "torch", "FloatStorage", "k"])),
    st.builds(_long, st.one_of(st.integers(-2 ** 70, 2 ** 70), st.sampled_from([2 ** 63, -2 ** 63, 10 ** 700]))),
    st.sampled_from([p_global("torch._utils", "_rebuild_tensor_v2"), p_global("torch", "FloatStorage"),
                     p_global("collections", "OrderedDict"), p_global("torch._utils", "_rebuild_parameter")]),
)


@pytest.mark.slow
@FUZZ
@given(program=st.lists(st.tuples(_OPCODE, st.integers(1, 3000)), min_size=1, max_size=8))
def test_pth_opcode_programs(program):
    # runs of allowed opcodes: deep nesting, aliasing, big integers, growth. The scan must refuse
    # what it cannot bound, and nothing may crash, hang or leak a foreign exception
    pkl = pickle.PROTO + b"\x02" + b"".join(op * n for op, n in program) + pickle.STOP
    members = torch_zip_members(tiny_weights(n_layer=1, C=4, V=8, F=8, seed=1), pickle_bytes=pkl)
    check("pth", zip_bytes(members))


# ---- safetensors ---------------------------------------------------------------------------------

_INTS = st.one_of(st.integers(-2, 40), st.integers(-2 ** 70, 2 ** 70), st.sampled_from([2 ** 31, 2 ** 63, 10 ** 12]))
_NAMES = st.one_of(st.sampled_from(sorted(to_hf_names(tiny_weights(1, 4, 8, 8))) + ["__metadata__"]), st.text(max_size=12))
_ENTRY = st.fixed_dictionaries(
    {"dtype": st.one_of(st.sampled_from(["F32", "F16", "BF16", "I8", "F64", ""]), _INTS),
     "shape": st.one_of(st.lists(_INTS, max_size=4), _INTS, st.none()),
     "data_offsets": st.one_of(st.lists(_INTS, min_size=2, max_size=2), st.lists(_INTS, max_size=3))})


@pytest.mark.slow
@FUZZ
@given(header=st.dictionaries(_NAMES, st.one_of(_ENTRY, st.integers(), st.text(max_size=5)), max_size=6),
       body=st.binary(max_size=200), lie=st.one_of(st.none(), st.integers(0, 2 ** 64 - 1)))
def test_safetensors_random_headers(header, body, lie):
    text = json.dumps(header).encode()
    length = len(text) if lie is None else lie
    check("safetensors", struct.pack("<Q", length) + text + body)


# ---- rwkv.cpp --------------------------------------------------------------------------------------

_I32 = st.one_of(st.integers(-3, 20), st.integers(-2 ** 31, 2 ** 31 - 1))


@pytest.mark.slow
@FUZZ
@given(header=st.tuples(st.just(0x67676D66), st.sampled_from([100, 101, 99]), _I32, _I32, _I32,
                        st.one_of(st.integers(0, 10), _I32)),
       records=st.lists(st.tuples(st.integers(-1, 5), st.integers(-1, 30), st.one_of(st.integers(0, 10), _I32),
                                  st.lists(_I32, max_size=5), _NAMES, st.binary(max_size=64)), max_size=5))
def test_rwkv_cpp_random_headers(header, records):
    out = [struct.pack("<6i", *header)]
    for n_dims, key_len, dtype, dims, name, blob in records:
        key = name.encode()
        key_len = len(key) if key_len < 0 else key_len
        out.append(struct.pack(f"<3i{len(dims)}i", n_dims, key_len, dtype, *dims) + key + blob)
    check("rwkv.cpp", b"".join(out))


def test_valid_files_load():
    for kind in ("pth", "pth-bf16", "safetensors", "rwkv.cpp"):
        (_DIR / "ok").write_bytes(valid(kind))
        assert load_checkpoint(_DIR / "ok").config.n_embd == 4
