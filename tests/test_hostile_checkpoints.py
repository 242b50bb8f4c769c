"""Checkpoints crafted to attack the loader: code execution, escapes from the archive, memory bombs.

Every payload here would create a marker file if it ever ran; each test checks the file is absent.
Memory tests watch tracemalloc's peak (numpy reports its buffers to tracemalloc), so "refused before
allocating" is measured, not assumed.
"""

import pickle
import struct
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _writers import (p_global, p_int, p_state_dict, p_str, p_tensor, p_tuple, rwkv_cpp_bytes,  # noqa: E402
                      safetensors_bytes, tiny_weights, torch_zip_members, write_zip)

from rwkv_np.errors import CheckpointError  # noqa: E402
from rwkv_np.loading import load_checkpoint  # noqa: E402

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
