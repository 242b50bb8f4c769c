"""Read a .safetensors file: 8-byte little-endian header length, a JSON header, then raw tensor bytes.

Parsed here rather than with `safetensors.numpy` because numpy cannot hold bfloat16 and because every
claim in the header (offsets, shapes) must be checked against the real file size before use.
"""

import json

from .base import BadFile, Buffer, Contents, LazyTensor, check_shape, describe, json_int

MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own limit
_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise BadFile(f"{describe(key)} twice")
        out[key] = value
    return out


def read_safetensors(buf: Buffer) -> tuple[dict[str, LazyTensor], dict]:
    """Parse a safetensors file held in buf into ({name: LazyTensor}, header metadata)."""
    if len(buf) < 8:
        raise BadFile(f"file of {len(buf)} bytes is too short for a safetensors header")
    n = int.from_bytes(buf[:8], "little")
    if n > len(buf) - 8 or n > MAX_HEADER_BYTES:
        raise BadFile(f"safetensors header claims {n} bytes but the file has {len(buf) - 8} after the length "
                      f"(limit {MAX_HEADER_BYTES}); truncated or not a safetensors file")
    try:
        header = json.loads(bytes(buf[8:8 + n]).decode("utf-8"), object_pairs_hook=_no_duplicates,
                            parse_int=json_int)
    except BadFile as e:
        raise BadFile(f"safetensors header has {e}") from None  # a name listed twice, or an integer too long
    except Exception as e:  # JSONDecodeError, UnicodeDecodeError, RecursionError, huge-int ValueError
        raise BadFile(f"safetensors header is not valid JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(header, dict):
        raise BadFile(f"safetensors header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise BadFile("safetensors __metadata__ is not an object")
    start, data_len = 8 + n, len(buf) - 8 - n
    tensors, spans = {}, []
    for name, info in header.items():
        what = f"tensor {describe(name)}"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise BadFile(f"{what}: header entry needs dtype, shape and data_offsets, found {describe(info)}")
        dtype = _DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise BadFile(f"{what} has dtype {describe(info['dtype'])}; only F32, F16 and BF16 are supported")
        shape = check_shape(info["shape"], what)
        offsets = info["data_offsets"]
        if (not isinstance(offsets, list) or len(offsets) != 2 or any(type(o) is not int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_len):
            raise BadFile(f"{what}: data_offsets {describe(offsets)} do not lie within the {data_len} data "
                          "bytes (truncated or hostile file)")
        t = LazyTensor(shape, dtype, buf, start + offsets[0])
        if offsets[1] - offsets[0] != t.nbytes:
            raise BadFile(f"{what}: shape {shape} of {dtype} needs {t.nbytes} bytes but data_offsets "
                          f"span {offsets[1] - offsets[0]}")
        tensors[name] = t
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
        if begin < end:  # overlapping tensors would let a small file expand into many big arrays
            raise BadFile(f"tensors {describe(a)} and {describe(b)} overlap in the data section")
    return tensors, metadata


def sniff(head: bytes) -> bool:
    """An 8-byte header length of a plausible size, then the JSON header's opening brace."""
    return len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 40


def read(buf: Buffer) -> Contents:
    return Contents("safetensors", read_safetensors(buf)[0])
