"""Checkpoints crafted to attack the loader: code execution, escapes from the archive, memory bombs,
structure bombs in a pickle of a few KB, numbers hidden in names and headers, and a file that changes
while it is loaded or in use (issue 15, classes 1-3).

Every payload here would create a marker file if it ever ran; each test checks the file is absent.
Memory tests watch tracemalloc's peak (numpy reports its buffers to tracemalloc), so "refused before
allocating" is measured, not assumed. Each class of structure bomb is tested at the limit of its
mechanism (just inside and just past it) with inputs built in several ways, not only the issue's examples.
"""

import io
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rwkv_np.errors import CheckpointError
from rwkv_np.formats import torch_zip
from rwkv_np.formats.base import BadFile
from rwkv_np.loading import load_checkpoint

from helpers import (REPO, p_global, p_int, p_state_dict, p_str, p_tensor, p_tuple, rwkv_cpp_bytes, safetensors_bytes,
                     tiny_weights, to_hf_names, torch_zip_members, write_torch_zip, write_zip)

PEAK_LIMIT = 4 << 20  # bytes; a refused hostile file needs only headers, the valid tiny model ~20 KB


def load_refused(path: Path, match: str) -> str:
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=match) as info:
            load_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_LIMIT, f"loading the hostile file allocated {peak} bytes"
    assert str(path) in str(info.value) and "internal error" not in str(info.value)
    return str(info.value)


def pth_with_pickle(tmp_path: Path, pkl: bytes, raw: dict | None = None) -> Path:
    raw = tiny_weights() if raw is None else raw
    return write_zip(tmp_path / "evil.pth", torch_zip_members(raw, pickle_bytes=pkl))


# ---- code execution ----------------------------------------------------------------------------

@pytest.mark.parametrize("module, name, arg", [
    ("os", "system", "touch {m}"),
    ("posix", "system", "touch {m}"),
    ("builtins", "eval", "open({m!r}, 'w').close()"),
    ("builtins", "exec", "open({m!r}, 'w').close()"),
    ("subprocess", "Popen", None),
    ("torch", "load", "{m}"),
])
def test_pickle_global_that_runs_code(tmp_path, module, name, arg):
    marker = tmp_path / "pwned"
    if arg is None:  # subprocess.Popen(['touch', marker])
        args = p_tuple(pickle.EMPTY_LIST + pickle.MARK + p_str("touch") + p_str(str(marker)) + pickle.APPENDS)
    else:
        args = p_tuple(p_str(arg.format(m=str(marker))))
    payload = p_global(module, name) + args + pickle.REDUCE
    pkl = p_state_dict([("emb.weight", payload)])
    msg = load_refused(pth_with_pickle(tmp_path, pkl), rf"asks for the global {module}\.{name}")
    assert "refusing to load it" in msg
    assert not marker.exists()


def test_stack_global_in_protocol_4_goes_through_find_class(tmp_path):
    marker = tmp_path / "pwned"
    payload = (p_str("os") + p_str("system") + pickle.STACK_GLOBAL + p_tuple(p_str(f"touch {marker}"))
               + pickle.REDUCE)
    pkl = pickle.PROTO + b"\x04" + pickle.EMPTY_DICT + p_str("x") + payload + pickle.SETITEM + pickle.STOP
    load_refused(pth_with_pickle(tmp_path, pkl), r"asks for the global os\.system")
    assert not marker.exists()


@pytest.mark.parametrize("ops, opcode", [
    (pickle.MARK + p_str(".") + pickle.INST + b"os\nsystem\n", "INST"),   # INST instantiates by name
    (pickle.MARK + p_global("os", "system") + p_str("x") + pickle.OBJ, "OBJ"),
    (p_global("os", "system") + pickle.EMPTY_TUPLE + pickle.NEWOBJ, "GLOBAL"),  # the scan stops at GLOBAL
    (pickle.EXT1 + b"\x01", "EXT1"),  # copyreg extension registry lookup
])
def test_pickle_opcodes_that_instantiate_are_refused(tmp_path, ops, opcode):
    pkl = pickle.PROTO + b"\x02" + ops + pickle.STOP
    load_refused(pth_with_pickle(tmp_path, pkl), "os.system|" + opcode)


@pytest.mark.parametrize("payload, match", [
    # collections.OrderedDict is allowed, but only as the empty constructor torch pickles
    (p_global("collections", "OrderedDict") + p_tuple(p_str("rm -rf /")) + pickle.REDUCE,
     "OrderedDict called with arguments"),
    # an allowed rebuild function fed a string where a storage belongs
    (p_global("torch._utils", "_rebuild_tensor_v2") + p_tuple(p_str("touch x"), p_int(0), p_tuple(p_int(1)),
                                                                p_tuple(p_int(1)), pickle.NEWFALSE,
                                                                pickle.NONE) + pickle.REDUCE,
     "got 'touch x' instead of a storage"),
    # a storage type is not callable
    (p_global("torch", "FloatStorage") + p_tuple(p_str("x")) + pickle.REDUCE, "could not be unpickled"),
    (p_global("torch._utils", "_rebuild_parameter") + p_tuple(p_str("x"), pickle.NEWFALSE, pickle.NONE)
     + pickle.REDUCE, "_rebuild_parameter got 'x' instead of a tensor"),
])
def test_reduce_of_allowed_global_with_hostile_args(tmp_path, payload, match):
    load_refused(pth_with_pickle(tmp_path, p_state_dict([("emb.weight", payload)])), match)


def test_build_cannot_reach_real_objects(tmp_path):
    # BUILD on our OrderedDict stand-in with a __class__ swap attempt: state is dropped, nothing runs
    marker = tmp_path / "pwned"
    od = p_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    state = pickle.EMPTY_DICT + p_str("__class__") + p_global("os", "system") + pickle.SETITEM
    load_refused(pth_with_pickle(tmp_path, p_state_dict([("x", od + state + pickle.BUILD)])), "os.system")
    assert not marker.exists()


def storage_pid(key: str, numel: int) -> bytes:
    return p_tuple(p_str("storage"), p_global("torch", "FloatStorage"), p_str(key), p_str("cpu"),
                   p_int(numel)) + pickle.BINPERSID


def slot_state(**fields: bytes) -> bytes:
    """BUILD state (None, {field: value}) that pickle applies with setattr, slots included."""
    items = b"".join(p_str(k) + v for k, v in fields.items())
    return p_tuple(pickle.NONE, pickle.EMPTY_DICT + pickle.MARK + items + pickle.SETITEMS)


# The opcode scan refuses BUILD on anything but an object REDUCE made; on such an object (a
# tensor) the stand-in's __setstate__ refuses it when the unpickler runs.
CLOSED = "modifies an object that cannot be modified"


@pytest.mark.parametrize("target, match", [
    # grow a checked storage to 10**12 elements, then build a huge tensor on it
    (storage_pid("0", 128) + slot_state(numel=p_int(10 ** 12)) + pickle.BUILD, CLOSED),
    # move a checked tensor's offset far outside the file
    (p_tensor("0", 128, (16, 8)) + slot_state(offset=p_int(10 ** 12)) + pickle.BUILD, "modify a tensor"),
    # rewrite an allowed function's defaults
    (p_global("torch._utils", "_rebuild_parameter") + slot_state(fn=pickle.NONE) + pickle.BUILD, CLOSED),
    (p_global("torch", "FloatStorage") + slot_state(dtype=p_str("float64")) + pickle.BUILD, CLOSED),
])
def test_build_cannot_modify_checked_objects(tmp_path, target, match):
    load_refused(pth_with_pickle(tmp_path, p_state_dict([("emb.weight", target)])), match)


# ---- persistent ids and storages ----------------------------------------------------------------

@pytest.mark.parametrize("key, match", [
    ("../../../../etc/passwd", "does not name a member of the archive's data/ folder"),
    ("/etc/passwd", "does not name a member"),
    ("999", r"refers to storage archive/data/999, which is not in the archive"),
])
def test_persistent_id_outside_the_archive(tmp_path, key, match):
    load_refused(pth_with_pickle(tmp_path, p_state_dict([("emb.weight", p_tensor(key, 4, (2, 2)))])), match)


def test_persistent_id_that_is_not_a_storage_tuple(tmp_path):
    pkl = p_state_dict([("emb.weight", p_tuple(p_str("module"), p_str("os")) + pickle.BINPERSID)])
    load_refused(pth_with_pickle(tmp_path, pkl), "unexpected persistent id")


def test_storage_shorter_than_the_tensor(tmp_path):
    # storage 0 holds emb.weight's 128 floats; claim a (16, 9) tensor on it
    pkl = p_state_dict([("emb.weight", p_tensor("0", 128, (16, 9)))])
    load_refused(pth_with_pickle(tmp_path, pkl), r"needs 144 elements but its storage data/0 holds only 128")


def test_storage_declared_longer_than_its_member(tmp_path):
    pkl = p_state_dict([("emb.weight", p_tensor("0", 10 ** 12, (10 ** 6, 10 ** 6)))])
    load_refused(pth_with_pickle(tmp_path, pkl), r"storage archive/data/0 holds 512 bytes but is declared as "
                                                 r"1000000000000 float32 elements")


@pytest.mark.parametrize("numel, offset, stride, match", [
    (128, -1, (8, 1), "negative storage offset"),
    (128, 0, (-8, 1), "is not a non-negative integer"),
    (1, 0, (0, 0), "has more elements than its storage"),  # a stride-0 view would expand 1 float to 128
])
def test_hostile_offsets_and_strides(tmp_path, numel, offset, stride, match):
    pkl = p_state_dict([("emb.weight", p_tensor("0", numel, (16, 8), stride=stride, offset=offset))])
    load_refused(pth_with_pickle(tmp_path, pkl), match)


def test_many_tensors_sharing_one_storage_cannot_amplify(tmp_path):
    entries = [(f"t{i}", p_tensor("0", 128, (16, 8))) for i in range(2000)]
    load_refused(pth_with_pickle(tmp_path, p_state_dict(entries)), r"tensors claim 1024000 bytes in total but "
                                                                   r"the file holds only")


# ---- zip-level attacks ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["archive/../../evil", "/abs/evil", "archive/data/..\\..\\evil", "C:evil"])
def test_zip_path_traversal(tmp_path, name):
    members = torch_zip_members(tiny_weights()) + [(name, b"x")]
    load_refused(write_zip(tmp_path / "z.pth", members), "is not a plain relative path")
    assert not (tmp_path.parent / "evil").exists()


def test_zip_duplicate_names(tmp_path):
    members = torch_zip_members(tiny_weights())
    load_refused(write_zip(tmp_path / "d.pth", members + [members[0]]), "appears twice; refusing the archive")


def test_deflate_bomb_as_data_pkl(tmp_path):
    bomb = b"\x00" * (80 << 20)  # 80 MB of zeros deflate to ~80 KB
    path = write_zip(tmp_path / "bomb.pth", [("archive/data.pkl", bomb)], zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 200_000
    load_refused(path, r"declares 83886080 bytes.*refusing \(zip bomb\?\)")


def test_deflate_bomb_with_a_lying_size(tmp_path):
    # the central directory claims 100 bytes; the stream holds 80 MB. Reading stops at the cap.
    bomb = b"\x00" * (80 << 20)
    path = write_zip(tmp_path / "bomb.pth", [("archive/data.pkl", bomb)], zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    for sig, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(sig)
        data[at + size_at:at + size_at + 4] = struct.pack("<I", 100)
    path.write_bytes(bytes(data))
    load_refused(path, r"cannot decompress archive/data.pkl \(BadZipFile: Bad CRC-32")


def test_deflated_storage_member_is_refused(tmp_path):
    members = torch_zip_members(tiny_weights())
    with zipfile.ZipFile(tmp_path / "s.pth", "w") as zf:
        for name, data in members:
            zf.writestr(name, data, zipfile.ZIP_DEFLATED if "/data/" in name else zipfile.ZIP_STORED)
    load_refused(tmp_path / "s.pth", r"archive/data/0 is compressed \(method 8\)")


# ---- huge claimed tensors in the other formats -----------------------------------------------------

def test_rwkv_cpp_huge_tensor(tmp_path):
    header = struct.pack("<6i", 0x67676D66, 100, 10 ** 6, 10 ** 6, 1, 0)
    record = struct.pack("<5i", 2, 10, 0, 10 ** 6, 10 ** 6) + b"emb.weight" + b"\x00" * 64
    (tmp_path / "huge.bin").write_bytes(header + record)
    load_refused(tmp_path / "huge.bin", r"needs 4000000000000 bytes but only 64 remain")


def test_safetensors_huge_tensor(tmp_path):
    data = safetensors_bytes({}, header_extra={"emb.weight": {"dtype": "F32", "shape": [10 ** 6, 10 ** 6],
                                                              "data_offsets": [0, 4 * 10 ** 12]}})
    (tmp_path / "huge.safetensors").write_bytes(data + b"\x00" * 64)
    load_refused(tmp_path / "huge.safetensors", r"data_offsets \[0, 4000000000000\] do not lie within the 64")


def test_safetensors_header_length_bomb(tmp_path):
    (tmp_path / "h.safetensors").write_bytes(struct.pack("<Q", 10 ** 12) + b"{}")
    load_refused(tmp_path / "h.safetensors", r"header claims 1000000000000 bytes")


def test_safetensors_overlapping_tensors(tmp_path):
    spans = {f"t{i}": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]} for i in range(3)}
    (tmp_path / "o.safetensors").write_bytes(safetensors_bytes({}, header_extra=spans) + b"\x00" * 64)
    load_refused(tmp_path / "o.safetensors", "overlap in the data section")


def test_safetensors_deeply_nested_header(tmp_path):
    text = b'{"a":' * 100_000 + b"1" + b"}" * 100_000  # json recursion depth error, not a crash
    (tmp_path / "n.safetensors").write_bytes(struct.pack("<Q", len(text)) + text)
    load_refused(tmp_path / "n.safetensors", r"header is not valid JSON \(RecursionError")


def test_pickle_with_huge_length_prefix(tmp_path):
    # BINBYTES8 claiming 2**40 bytes: the opcode scan sees the pickle is shorter before any allocation
    pkl = pickle.PROTO + b"\x04" + pickle.BINBYTES8 + struct.pack("<Q", 1 << 40) + b"xx" + pickle.STOP
    load_refused(pth_with_pickle(tmp_path, pkl), "data.pkl is not a valid pickle")


def test_pickle_memo_index_bomb(tmp_path):
    # found by the fuzz campaign: one flipped byte in a LONG_BINPUT index made the C unpickler
    # allocate its memo table up to that index (2**26 slots: 1 GB of RSS from a 5 KB file)
    pkl = pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.LONG_BINPUT + struct.pack("<I", 1 << 26) + pickle.STOP
    load_refused(pth_with_pickle(tmp_path, pkl), r"stores memo slot 67108864 after only 0 memo writes")


def test_valid_tiny_model_stays_within_the_same_memory_bound(tmp_path):
    # the control: the bound above is loose enough for a real (tiny) load, so it measures something
    path = write_zip(tmp_path / "ok.pth", torch_zip_members(tiny_weights()))
    tracemalloc.start()
    try:
        ck = load_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ck.config.n_embd == 8 and peak < PEAK_LIMIT
    big = tiny_weights(C=256, V=1024, F=1024)  # ~1.8M floats = 7 MB of float32: must exceed the limit
    (tmp_path / "big.safetensors").write_bytes(safetensors_bytes(big))
    tracemalloc.start()
    try:
        load_checkpoint(tmp_path / "big.safetensors")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak > PEAK_LIMIT


def test_rwkv_cpp_file_round_trip_control(tmp_path):
    (tmp_path / "ok.bin").write_bytes(rwkv_cpp_bytes(tiny_weights()))
    assert load_checkpoint(tmp_path / "ok.bin").config.n_layer == 1
    assert np.isfinite(load_checkpoint(tmp_path / "ok.bin").weights["blocks.0.att.time_decay"]).all()

# ==== round 2 (issue 15): refused quickly, at the limit of each mechanism ==========================

P2 = pickle.PROTO + b"\x02"


def refused(path: Path, match: str, seconds: float = 2.0) -> str:
    """load_checkpoint(path) raises our error naming the file, quickly, and not the safety net's."""
    t = time.perf_counter()
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert time.perf_counter() - t < seconds
    msg = str(info.value)
    assert str(path) in msg and "internal error" not in msg
    return msg


def pth(tmp_path: Path, pkl: bytes, name: str = "evil.pth") -> Path:
    return write_zip(tmp_path / name, torch_zip_members(tiny_weights(), pickle_bytes=pkl))


def scan(ops: bytes) -> None:
    torch_zip._scan_pickle(P2 + ops + pickle.STOP)


# ---- issue 15, class 1: pickle structure bombs -----------------------------------------------------------

def nested(depth: int, how: str) -> bytes:
    """Ops that leave `depth` containers nested around None on the stack, built `how`."""
    none = pickle.NONE
    return {
        "TUPLE1": none + pickle.TUPLE1 * depth,
        "TUPLE2": none + (none + pickle.TUPLE2) * depth,
        "TUPLE3": none + (none + none + pickle.TUPLE3) * depth,
        "TUPLE": pickle.MARK * depth + none + pickle.TUPLE * depth,
        "LIST": pickle.MARK * depth + none + pickle.LIST * depth,
        "APPEND": pickle.EMPTY_LIST * depth + none + pickle.APPEND * depth,
        "SETITEM": (pickle.EMPTY_DICT + p_str("k")) * depth + none + pickle.SETITEM * depth,
        "DICT": (pickle.MARK + p_str("k")) * depth + none + pickle.DICT * depth,
        # a DAG: each level holds the one below twice (2**depth leaves when expanded)
        "DUP": pickle.EMPTY_TUPLE + (pickle.DUP + pickle.TUPLE2) * (depth - 1),
    }[how]


@pytest.mark.parametrize("how", ["TUPLE1", "TUPLE2", "TUPLE3", "TUPLE", "LIST", "APPEND", "SETITEM", "DICT", "DUP"])
def test_nesting_depth_is_bounded_whatever_builds_it(how):
    scan(nested(torch_zip.MAX_DEPTH, how))  # the limit itself passes the scan
    with pytest.raises(BadFile, match=f"nests containers more than {torch_zip.MAX_DEPTH} deep"):
        scan(nested(torch_zip.MAX_DEPTH + 1, how))


@pytest.mark.parametrize("depth", [10 ** 6, 5000])
def test_deep_tuple_as_a_dict_key_is_refused_not_hashed(tmp_path, depth):
    # hashing a million nested tuples recursed in C until the interpreter crashed
    pkl = P2 + pickle.EMPTY_DICT + nested(depth, "TUPLE1") + pickle.NONE + pickle.SETITEM + pickle.STOP
    refused(pth(tmp_path, pkl), "nests containers more than 64 deep")


@pytest.mark.parametrize("key", [p_tuple(p_str("a"), p_int(1)), pickle.EMPTY_TUPLE,
                                 p_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE])
def test_dict_keys_must_be_plain_values(tmp_path, key):
    pkl = P2 + pickle.EMPTY_DICT + pickle.MARK + key + pickle.NONE + pickle.SETITEMS + pickle.STOP
    refused(pth(tmp_path, pkl), "uses a container as a dictionary key")


@pytest.mark.parametrize("ops", [
    # a list memoized, put in a tuple, then appended to through the memo (would go stale)
    pickle.EMPTY_LIST + pickle.BINPUT + b"\x00" + pickle.TUPLE1 + pickle.BINGET + b"\x00" + pickle.NONE
    + pickle.APPEND,
    # a dict inside a dict, filled afterwards
    pickle.EMPTY_DICT + pickle.BINPUT + b"\x00" + pickle.EMPTY_DICT + p_str("a") + pickle.BINGET + b"\x00"
    + pickle.SETITEM + pickle.BINGET + b"\x00" + p_str("b") + pickle.NONE + pickle.SETITEM,
    # a list appended to itself (a cycle), then grown
    pickle.EMPTY_LIST + pickle.DUP + pickle.APPEND + pickle.NONE + pickle.APPEND,
    # BUILD on a global or a string
    p_global("torch", "FloatStorage") + pickle.EMPTY_DICT + pickle.BUILD,
    p_str("x") + pickle.NONE + pickle.BUILD,
])
def test_containers_cannot_change_once_inside_another(ops):
    with pytest.raises(BadFile, match="modifies an object that cannot be modified"):
        scan(ops)


@pytest.mark.parametrize("value, ok", [(2 ** 63 - 1, True), (-2 ** 63, True), (2 ** 63, False), (-2 ** 63 - 1, False),
                                       (10 ** 5000, False), (1 << (8 << 20), False)],
                         ids=["2**63-1", "-2**63", "2**63", "-2**63-1", "10**5000", "2**(8<<20)"])
def test_integers_are_at_most_64_bits(value, ok):
    ops = pickle.LONG1 if len(pickle.encode_long(value)) < 256 else pickle.LONG4
    blob = pickle.encode_long(value)
    arg = bytes([len(blob)]) if ops == pickle.LONG1 else struct.pack("<i", len(blob))
    t = time.perf_counter()
    if ok:
        scan(ops + arg + blob)
    else:
        with pytest.raises(BadFile, match=rf"has an integer of {value.bit_length()} bits"):
            scan(ops + arg + blob)
    assert time.perf_counter() - t < 1


def p_long4(n: int) -> bytes:
    blob = pickle.encode_long(n)
    return pickle.LONG4 + struct.pack("<i", len(blob)) + blob


def test_megabyte_integers_as_shape_and_strides_are_refused_at_once(tmp_path):
    huge = p_long4(1 << (2 << 20))  # a 2-megabit integer: multiplying a few of these took minutes
    pid = p_tuple(p_str("storage"), p_global("torch", "FloatStorage"), p_str("0"), p_str("cpu"), p_int(128))
    args = p_tuple(pid + pickle.BINPERSID, p_int(0), p_tuple(huge, huge), p_tuple(huge, p_int(1)), pickle.NEWFALSE,
                   p_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE)
    entry = p_global("torch._utils", "_rebuild_tensor_v2") + args + pickle.REDUCE
    refused(pth(tmp_path, p_state_dict([("emb.weight", entry)])), "has an integer of 2097153 bits")


@pytest.mark.parametrize("unit, match", [
    (pickle.EMPTY_DICT, "would build more than"),  # 1.3 GB of dicts from 16 MB before the fix
    (pickle.NONE + pickle.DUP, "more than 1000000 opcodes"),  # stack growth alone: 72 MB at most
    (pickle.MARK, "more than 1000000 opcodes"),  # 8 MB of marks at most
    (pickle.NONE + pickle.POP, "more than 1000000 opcodes"),  # builds nothing, but takes time
])
def test_object_memory_and_opcode_count_are_bounded(tmp_path, unit, match):
    pkl = P2 + unit * (1_100_000 // len(unit) + 1) + pickle.NONE + pickle.STOP
    refused(pth(tmp_path, pkl), match, seconds=5)


@pytest.mark.parametrize("ops", [
    pickle.EMPTY_DICT * 20_000,
    pickle.EMPTY_LIST + (pickle.NONE + pickle.APPEND) * 20_000,
    pickle.EMPTY_DICT + pickle.MARK + b"".join(p_str(f"k{i}") + pickle.NONE for i in range(10_000)) + pickle.SETITEMS,
    p_str("x" * (1 << 20)),  # a str may hold 4 bytes per character: 4 MiB
])
def test_the_memory_estimate_stops_the_scan_before_it_is_exceeded(monkeypatch, ops):
    monkeypatch.setattr(torch_zip, "MAX_BUILD_BYTES", 1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(BadFile, match="would build more than 1 MiB of objects"):
            scan(ops)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * len(ops) + (2 << 20)  # the pickle, genops' copy of an argument, the records


def test_limits_are_far_above_a_large_real_state_dict():
    # 10,000 tensors, ~14 times a 14B RWKV-4's 725, written as torch.save does (memo and all)
    pkl = p_state_dict([(f"blocks.{i // 20}.w{i}", p_tensor(str(i), 64 * 64, (64, 64))) for i in range(10_000)])
    t = time.perf_counter()
    torch_zip._scan_pickle(pkl)
    assert time.perf_counter() - t < 3
    n_ops = sum(1 for _ in pickletools.genops(io.BytesIO(pkl)))
    assert n_ops * 3 < torch_zip.MAX_OPCODES


# ---- issue 15, class 2: numbers hidden in names and headers ------------------------------------------------

def write(fmt: str, folder: Path, tensors: dict[str, np.ndarray]) -> Path:
    if fmt == "safetensors":
        (folder / "m.safetensors").write_bytes(safetensors_bytes(tensors))
        return folder / "m.safetensors"
    if fmt == "pth":
        return write_torch_zip(folder / "m.pth", tensors)
    if fmt == "rwkv.cpp":
        (folder / "m.bin").write_bytes(rwkv_cpp_bytes(tensors))
        return folder / "m.bin"
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(safetensors_bytes(to_hf_names(tensors)))
    return folder


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "rwkv.cpp", "hf"])
@pytest.mark.parametrize("index, match", [
    (999_999_999, r"block indices must run 0..999999999 without gaps; blocks \[1, 2, 3, 4, 5\] and more are missing"),
    (123_456, r"0..123456 without gaps; blocks \[1, 2, 3, 4, 5\] and more"),
    (2, r"0..2 without gaps; blocks \[1\] are missing"),
    (4_294_967_296, r"unexpected tensor (rwkv\.)?blocks\.4294967296\.ln1\.weight"),  # 10 digits: not a layer
])
def test_a_block_index_cannot_make_the_loader_scale(tmp_path, fmt, index, match):
    raw = tiny_weights()
    raw[f"blocks.{index}.ln1.weight"] = raw["blocks.0.ln1.weight"]
    refused(write(fmt, tmp_path, raw), match, seconds=1)


def st_header(entry: bytes) -> bytes:
    return struct.pack("<Q", len(entry)) + entry


@pytest.mark.parametrize("entry, match", [
    (b'{"emb.weight":{"dtype":"F32","shape":[0,1' + b"0" * 5000 + b'],"data_offsets":[0,0]}}',
     "safetensors header has an integer of 5001 digits"),
    (b'{"emb.weight":{"dtype":"F32","shape":[1' + b"0" * 3000 + b",1" + b"0" * 3000 + b'],"data_offsets":[0,0]}}',
     "safetensors header has an integer of 3001 digits"),
    (b'{"emb.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,-' + b"9" * 20 + b"]}}",
     "safetensors header has an integer of 20 digits"),
    (b'{"__metadata__":{"n":' + b"7" * 400 + b'}}', "safetensors header has an integer of 400 digits"),
    (json.dumps({"emb.weight": {"dtype": "F32", "shape": [0, 2 ** 41], "data_offsets": [0, 0]}}).encode(),
     r"shape \[0, 2199023255552\] has a size above 2\*\*40"),
    (json.dumps({"emb.weight": {"dtype": "F32", "shape": [2 ** 40, 2 ** 40], "data_offsets": [0, 2 ** 62]}}).encode(),
     r"data_offsets \[0, 4611686018427387904\] do not lie within the 0 data bytes"),
])
def test_huge_numbers_in_a_safetensors_header(tmp_path, entry, match):
    (tmp_path / "h.safetensors").write_bytes(st_header(entry))
    refused(tmp_path / "h.safetensors", match)


@pytest.mark.parametrize("shape, stride, match", [
    ((0, 2 ** 41), (1, 1), r"shape \(0, 2199023255552\) has a size above 2\*\*40"),
    ((0, 10 ** 30), (1, 1), "has an integer of 100 bits"),
    ((2 ** 40, 2 ** 40), (2 ** 40, 1), r"needs 1208925819614629174706176 elements but its storage data/0 holds only 128"),
    ((16, 8), (2 ** 62, 1), r"tensor in storage data/0: strides \(4611686018427387904, 1\) has a size above 2\*\*40"),
    ((16, 8), (2 ** 36, 1), r"needs 1030792151048 elements but its storage data/0 holds only 128"),
])
def test_huge_numbers_in_a_pickle(tmp_path, shape, stride, match):
    refused(pth(tmp_path, p_state_dict([("emb.weight", p_tensor("0", 128, shape, stride=stride))])), match)


@pytest.mark.parametrize("field, value", [("n_vocab", 2 ** 31 - 1), ("n_layer", 2 ** 31 - 1), ("n_embd", -1)])
def test_huge_numbers_in_an_rwkv_cpp_header(tmp_path, field, value):
    raw = tiny_weights()
    header = dict(n_vocab=16, n_embd=8, n_layer=1)
    header[field] = value
    data = rwkv_cpp_bytes(raw, header=(0x67676D66, 100, header["n_vocab"], header["n_embd"], header["n_layer"], 0))
    (tmp_path / "m.bin").write_bytes(data)
    refused(tmp_path / "m.bin", rf"the rwkv.cpp header says {field}={value} but the weights have")


@pytest.mark.parametrize("value, shown, kind", [
    ("1", '"1"', "string"), (8.0, "8.0", "number with a fraction or exponent"), (True, "true", "boolean"),
    ([1], "[1]", "array"), ({"n": 1}, '{"n": 1}', "object"),
])
@pytest.mark.parametrize("key", ["num_hidden_layers", "hidden_size", "vocab_size", "intermediate_size"])
def test_config_json_values_of_the_wrong_type(tmp_path, key, value, shown, kind):
    folder = write("hf", tmp_path, tiny_weights())
    (folder / "config.json").write_text(json.dumps({key: value}))
    msg = refused(folder, "expected an integer")
    assert f"config.json {key} is {shown} (a JSON {kind}); expected an integer" in msg


def test_config_json_with_a_huge_integer(tmp_path):
    folder = write("hf", tmp_path, tiny_weights())
    (folder / "config.json").write_text('{"hidden_size": 8, "vocab_size": 1' + "0" * 5000 + "}")
    refused(folder, r"config.json: has an integer of 5001 digits")


def test_config_json_with_the_right_numbers_still_loads(tmp_path):
    folder = write("hf", tmp_path, tiny_weights())
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 1, "hidden_size": 8, "vocab_size": 16,
                                                    "intermediate_size": 32, "attention_hidden_size": None}))
    assert load_checkpoint(folder).config.ffn_dim == 32


# ---- issue 15, class 3: a file that changes while it is loaded or used --------------------------------------

CHILD = textwrap.dedent("""
    import os, sys
    import numpy as np
    from rwkv_np.errors import CheckpointError
    from rwkv_np.formats.base import FileBytes
    from rwkv_np.loading import load_checkpoint

    path, other, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
    size = os.path.getsize(path)

    def change():
        if scenario == "truncate":
            os.truncate(path, size // 2)
        elif scenario == "empty":
            os.truncate(path, 0)
        elif scenario == "rewrite":  # the same size, other weights, in place (same inode)
            with open(path, "r+b") as f, open(other, "rb") as g:
                f.write(g.read())
        elif scenario == "grow":
            with open(path, "ab") as f:
                f.write(b"0" * 4096)
        elif scenario == "replace":  # what most tools do: a new file renamed over the old one
            os.replace(other, path)
        elif scenario == "delete":
            os.unlink(path)

    def report(fn):
        try:
            print("RESULT", fn())
        except CheckpointError as e:
            print("REFUSED", str(e).replace(path, "<path>"))

    if sys.argv[4] == "load":
        real = FileBytes.readinto
        def readinto(self, out, offset):  # the first read of tensor data (headers read bytearrays)
            if isinstance(out, np.ndarray) and not getattr(FileBytes, "changed_once", False):
                FileBytes.changed_once = True
                change()
            return real(self, out, offset)
        FileBytes.readinto = readinto
        report(lambda: load_checkpoint(path, lazy_embedding=True).config.n_layer)
    else:
        rows = load_checkpoint(path, lazy_embedding=True).weights["emb.weight"]
        before = rows[[0, 31]].copy()
        change()
        report(lambda: "same rows" if np.array_equal(rows[[0, 31]], before) else "other rows")
""")


def run_child(tmp_path: Path, scenario: str, when: str) -> str:
    path, other = tmp_path / f"{scenario}.safetensors", tmp_path / f"{scenario}-other.safetensors"
    path.write_bytes(safetensors_bytes(tiny_weights(n_layer=2, C=64, V=32, F=256, seed=1)))
    other.write_bytes(safetensors_bytes(tiny_weights(n_layer=2, C=64, V=32, F=256, seed=2)))
    assert path.stat().st_size == other.stat().st_size
    os.utime(path, ns=(10 ** 18, 10 ** 18))  # an old time: any write now changes it, whatever the clock's tick
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(other), scenario, when], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"child died ({out.returncode}; a negative code is a signal): {out.stderr[-2000:]}"
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("scenario, expected", [
    ("truncate", "REFUSED <path>: the file is shorter than when it was opened (truncated while being read?)"),
    ("empty", "REFUSED <path>: the file is shorter than when it was opened"),
    ("rewrite", "REFUSED <path>: the file changed (size or modification time) while it was being loaded"),
    ("grow", "REFUSED <path>: the file changed (size or modification time) while it was being loaded"),
    ("replace", "RESULT 2"),  # the open file is the old one, whole: loading it is right
])
def test_file_changed_during_the_load(tmp_path, scenario, expected):
    assert run_child(tmp_path, scenario, "load").startswith(expected)


@pytest.mark.parametrize("scenario, expected", [
    ("truncate", "REFUSED <path>: the file changed (size or modification time) since it was loaded"),  # rows still there
    ("empty", "REFUSED <path>: the file is shorter than when it was loaded"),
    ("rewrite", "REFUSED <path>: the file changed (size or modification time) since it was loaded"),
    ("grow", "REFUSED <path>: the file changed (size or modification time) since it was loaded"),
    ("replace", "RESULT same rows"),  # rows still come from the file that was loaded
    ("delete", "RESULT same rows"),
])
def test_file_changed_while_the_embedding_is_read_from_it(tmp_path, scenario, expected):
    assert run_child(tmp_path, scenario, "use").startswith(expected)


def test_the_loader_maps_no_part_of_the_file(tmp_path, monkeypatch):
    # a mapped checkpoint truncated by another process kills the reader with SIGBUS: look at this
    # process's mappings while each tensor is being checked
    import rwkv_np.loading as loading

    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps (Linux)")
    path = write_torch_zip(tmp_path / "m.pth", tiny_weights())
    seen, real = [], loading._non_finite

    def checked(a):
        seen.append(str(path) in maps.read_text())
        return real(a)

    monkeypatch.setattr(loading, "_non_finite", checked)
    load_checkpoint(path, lazy_embedding=True)
    assert len(seen) == len(tiny_weights()) and not any(seen)  # every tensor checked, none mapped


def test_a_state_dict_with_metadata_as_torch_pickles_it_still_loads(tmp_path, monkeypatch):
    # model.state_dict() is an OrderedDict carrying `_metadata` (an OrderedDict of per-module dicts),
    # which pickle writes as REDUCE, SETITEMS, then BUILD on the dict: the scan's rules must admit it.
    # Pickled here by Python's own pickler, with stand-ins registered as the torch globals.
    import collections
    import types

    raw = tiny_weights()
    torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class FloatStorage:
        def __init__(self, key: str, numel: int) -> None:
            self.key, self.numel = key, numel

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while pickling")

    class Tensor:
        def __init__(self, storage, shape):
            self.storage, self.shape = storage, shape

        def __reduce__(self):
            stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
            return _rebuild_tensor_v2, (self.storage, 0, self.shape, stride, False, collections.OrderedDict())

    FloatStorage.__module__, _rebuild_tensor_v2.__module__ = "torch", "torch._utils"
    FloatStorage.__qualname__, _rebuild_tensor_v2.__qualname__ = "FloatStorage", "_rebuild_tensor_v2"
    torch_mod.FloatStorage, utils_mod._rebuild_tensor_v2, torch_mod._utils = FloatStorage, _rebuild_tensor_v2, utils_mod
    monkeypatch.setitem(sys.modules, "torch", torch_mod)
    monkeypatch.setitem(sys.modules, "torch._utils", utils_mod)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, FloatStorage):
                return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
            return None

    state = collections.OrderedDict((k, Tensor(FloatStorage(str(i), v.size), v.shape)) for i, (k, v) in enumerate(raw.items()))
    state._metadata = collections.OrderedDict((p, {"version": 1}) for p in ["", "emb", "blocks", "blocks.0", "head"])
    out = io.BytesIO()
    Pickler(out, protocol=2).dump(state)
    assert pickle.BUILD in out.getvalue()
    path = write_zip(tmp_path / "meta.pth", torch_zip_members(raw, pickle_bytes=out.getvalue()))
    ck = load_checkpoint(path)
    np.testing.assert_array_equal(ck.weights["blocks.0.att.key.weight"], raw["blocks.0.att.key.weight"])
