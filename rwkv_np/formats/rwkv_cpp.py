"""Read an rwkv.cpp model file (ggml-style): a header of six int32, then one record per tensor.

Record: int32 n_dims, int32 key length, int32 data type, n_dims int32 sizes in REVERSE order of the
PyTorch shape, the UTF-8 key, the raw data. rwkv.cpp's converter stores `att.time_decay` as
-exp(time_decay) and squeezes the time_* vectors; `rwkv_np.loading` undoes the former.
"""

import struct

from ._common import BadFile, Buffer, LazyTensor, describe

MAGIC = 0x67676D66  # "ggmf"
VERSIONS = (100, 101)
_TYPES = {0: "float32", 1: "float16"}
_QUANTIZED = {2: "Q4_0", 3: "Q4_1", 4: "Q4_1_O", 5: "Q4_2", 6: "Q4_3", 7: "Q5_0", 8: "Q5_1", 9: "Q8_0"}
MAX_KEY_BYTES = 1024


def _quantized_error(dtype: int, where: str) -> BadFile:
    return BadFile(f"{where} has data type {dtype} ({_QUANTIZED[dtype]}): quantized rwkv.cpp files (Q4_0, "
                   "Q4_1, Q5_0, Q5_1, Q8_0) are not supported; use an FP32 or FP16 file")


def read_rwkv_cpp(buf: Buffer) -> tuple[dict[str, LazyTensor], dict[str, int]]:
    """Parse an rwkv.cpp file into ({name: LazyTensor}, header {n_vocab, n_embd, n_layer, data_type})."""
    if len(buf) < 24:
        raise BadFile(f"file of {len(buf)} bytes is too short for an rwkv.cpp header (24 bytes)")
    magic, version, n_vocab, n_embd, n_layer, data_type = struct.unpack("<6i", buf[0:24])
    if magic != MAGIC:
        raise BadFile(f"magic {magic:#x} is not rwkv.cpp's {MAGIC:#x}")
    if version not in VERSIONS:
        raise BadFile(f"rwkv.cpp file version {version} is not one of {VERSIONS}")
    if data_type in _QUANTIZED:
        raise _quantized_error(data_type, "the file header")
    if data_type not in _TYPES:
        raise BadFile(f"the file header has unknown data type {data_type}; expected 0 (FP32) or 1 (FP16)")
    header = {"n_vocab": n_vocab, "n_embd": n_embd, "n_layer": n_layer, "data_type": data_type}
    tensors: dict[str, LazyTensor] = {}
    pos, size = 24, len(buf)
    while pos < size:
        if size - pos < 12:
            raise BadFile(f"truncated tensor record at byte {pos}")
        n_dims, key_len, dtype = struct.unpack("<3i", buf[pos:pos + 12])
        where = f"tensor record at byte {pos}"
        if not 1 <= n_dims <= 4:
            raise BadFile(f"{where} has {n_dims} dimensions; rwkv.cpp tensors have 1 to 4")
        if not 1 <= key_len <= MAX_KEY_BYTES:
            raise BadFile(f"{where} has a key of {key_len} bytes (expected 1..{MAX_KEY_BYTES})")
        if dtype in _QUANTIZED:
            raise _quantized_error(dtype, where)
        if dtype not in _TYPES:
            raise BadFile(f"{where} has unknown data type {dtype}; expected 0 (FP32) or 1 (FP16)")
        pos += 12
        if size - pos < 4 * n_dims + key_len:
            raise BadFile(f"{where} is truncated")
        dims = struct.unpack(f"<{n_dims}i", buf[pos:pos + 4 * n_dims])
        pos += 4 * n_dims
        if any(d < 0 for d in dims):
            raise BadFile(f"{where} has negative sizes {dims}")
        try:
            key = bytes(buf[pos:pos + key_len]).decode("utf-8")
        except UnicodeDecodeError:
            raise BadFile(f"{where} has a key that is not UTF-8") from None
        pos += key_len
        if key in tensors:
            raise BadFile(f"tensor {describe(key)} appears twice")
        t = LazyTensor(tuple(reversed(dims)), _TYPES[dtype], buf, pos)
        if t.nbytes > size - pos:
            raise BadFile(f"tensor {describe(key)} of shape {t.shape} needs {t.nbytes} bytes but only "
                          f"{size - pos} remain (truncated or hostile file)")
        tensors[key] = t
        pos += t.nbytes
    return tensors, header


def source_dtype(header: dict[str, int]) -> str:
    return _TYPES[header["data_type"]]

