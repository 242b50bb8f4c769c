"""Read a `torch.save` zip archive (BlinkDL .pth, Hugging Face pytorch_model.bin) without PyTorch.

Layout: `<stem>/data.pkl` (a pickle of {name: tensor}) + `<stem>/data/<key>` (raw little-endian
storages, stored uncompressed). Tensors in the pickle are `_rebuild_tensor_v2(storage, offset, size,
stride, ...)` calls whose storages are persistent ids ('storage', StorageType, key, location, numel).

Security: the pickle is first scanned opcode by opcode (every length checked against the bytes that
exist, only plain-data opcodes admitted, only the handful of torch globals a state dict uses), with
the unpickler's stack machine simulated on stand-in records, so that what it would build is bounded
before anything is built: opcodes, nesting depth, integer size, estimated memory (MAX_* below), and
containers that cannot be changed once inside another, or used as dict keys. Then it is run by an
Unpickler whose `find_class` maps those globals to harmless stand-ins defined here. Nothing from
torch or any other module is ever imported or called; nothing is executed from the file.
"""

import io
import pickle
import pickletools
import re
import warnings
import zipfile

from .base import STORED_DTYPES, BadFile, Buffer, Contents, LazyTensor, check_shape, describe

MAX_PICKLE_BYTES = 16 << 20  # a 14B model's data.pkl is ~100 KB; anything this big is not a state dict

# Opcodes of the binary protocols 2-4 that a state-dict pickle needs (torch.save writes protocol 2).
# Left out on purpose: INST/OBJ/NEWOBJ/NEWOBJ_EX (instantiate classes), EXT1/2/4 (registry lookups),
# BYTEARRAY8/NEXT_BUFFER/READONLY_BUFFER (out-of-band data), PERSID and the protocol-0 text opcodes.
_ALLOWED_OPCODES = frozenset("""
    PROTO FRAME STOP MARK POP POP_MARK DUP
    EMPTY_DICT EMPTY_LIST EMPTY_TUPLE DICT LIST TUPLE TUPLE1 TUPLE2 TUPLE3
    SETITEM SETITEMS APPEND APPENDS
    BINUNICODE SHORT_BINUNICODE BINUNICODE8 BINBYTES SHORT_BINBYTES BINBYTES8
    BININT BININT1 BININT2 LONG1 LONG4 BINFLOAT NONE NEWTRUE NEWFALSE
    BINPUT LONG_BINPUT MEMOIZE BINGET LONG_BINGET
    GLOBAL STACK_GLOBAL REDUCE BUILD BINPERSID
""".split())


class _StorageType:
    """Stand-in for torch.FloatStorage & co.: only says which dtype a storage holds."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype

    def __setstate__(self, state: object) -> None:
        raise _modified("a storage type")


class _Storage:
    """A storage member resolved from a persistent id: where its bytes are and how many elements."""

    __slots__ = ("dtype", "key", "start", "numel")

    def __init__(self, dtype: str, key: str, start: int, numel: int) -> None:
        self.dtype, self.key, self.start, self.numel = dtype, key, start, numel

    def __setstate__(self, state: object) -> None:  # BUILD must not move a checked storage
        raise _modified("a storage")


class _SafeCall:
    """Wraps the allowed functions so a pickle's BUILD cannot set attributes (__defaults__...) on them."""

    __slots__ = ("fn",)

    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __setstate__(self, state: object) -> None:
        raise _modified("a function")


def _modified(what: str) -> BadFile:
    return BadFile(f"the pickle tries to modify {what} with the BUILD opcode; refusing to load it")


class _StateDict(dict):
    """Stand-in for collections.OrderedDict: only the empty constructor torch pickles, metadata dropped."""

    def __init__(self, *args: object) -> None:
        if args:
            raise BadFile(f"OrderedDict called with arguments {describe(args)}; a state dict never does that")
        super().__init__()

    def __setstate__(self, state: object) -> None:
        pass  # torch attaches `_metadata` (module versions); we have no use for it


def _int(value: object, what: str) -> int:
    if type(value) is not int:
        raise BadFile(f"{what} must be an integer, found {describe(value)}")
    return value


def _make_rebuild_tensor(buf: Buffer):
    def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                          backward_hooks=None, metadata=None):
        if not isinstance(storage, _Storage):
            raise BadFile(f"_rebuild_tensor_v2 got {describe(storage)} instead of a storage")
        offset = _int(storage_offset, "storage offset")
        shape = check_shape(size, f"tensor in storage data/{storage.key}")
        strides = check_shape(stride, f"tensor in storage data/{storage.key}", kind="strides")
        if len(strides) != len(shape):
            raise BadFile(f"tensor in storage data/{storage.key}: shape {shape} but strides {strides}")
        if offset < 0:
            raise BadFile(f"tensor in storage data/{storage.key}: negative storage offset {offset}")
        numel = 1
        for d in shape:
            numel *= d
        if numel:
            extent = offset + 1 + sum((d - 1) * s for d, s in zip(shape, strides))
            if extent > storage.numel:
                raise BadFile(f"tensor of shape {shape} (offset {offset}, strides {strides}) needs {extent} "
                              f"elements but its storage data/{storage.key} holds only {storage.numel}")
            if numel > storage.numel:  # stride-0 tricks would let a tiny file expand into a huge array
                raise BadFile(f"tensor of shape {shape} has more elements than its storage "
                              f"data/{storage.key} ({storage.numel}); overlapping views are not supported")
        contiguous = [1] * len(shape)
        for i in range(len(shape) - 2, -1, -1):
            contiguous[i] = contiguous[i + 1] * shape[i + 1]
        is_contiguous = all(s == c for d, s, c in zip(shape, strides, contiguous) if d > 1)
        itemsize = STORED_DTYPES[storage.dtype][1]
        return LazyTensor(shape, storage.dtype, buf, storage.start + offset * itemsize,
                          None if is_contiguous else strides)

    return rebuild_tensor_v2


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *rest):
    if not isinstance(data, LazyTensor):
        raise BadFile(f"_rebuild_parameter got {describe(data)} instead of a tensor")
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, globals_: dict, storages) -> None:
        super().__init__(io.BytesIO(data))
        self._globals = globals_
        self._storages = storages

    def find_class(self, module: str, name: str):
        try:
            return self._globals[(module, name)]
        except (KeyError, TypeError):
            raise BadFile(_global_refusal(module, name)) from None

    def persistent_load(self, pid):
        return self._storages(pid)


def _global_refusal(module: object, name: object) -> str:
    where = f"{str(module)[:100]}.{str(name)[:100]}"
    return (f"the pickle asks for the global {where}, which a checkpoint of tensors never needs; "
            "refusing to load it (only torch's tensor-rebuild functions are allowed)")


def _scan_pickle(data: bytes) -> None:
    """Check every opcode and length, and simulate what the C unpickler would build, before it sees
    the bytes: the simulation keeps only a depth per container, so a hostile pickle is refused at
    the first opcode past a limit, before anything of its size has been built."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # genops decodes a text opcode's argument before we refuse it
            _PickleSimulation().run(data)
    except BadFile:
        raise
    except Exception as e:  # genops raises ValueError & co. on truncated or garbled input
        raise BadFile(f"data.pkl is not a valid pickle ({type(e).__name__}: {str(e)[:120]})") from None


# Limits on what data.pkl may build, far above any real state dict: torch.save writes ~32 opcodes
# per tensor, estimated (below) at ~3.5 KB of objects, 5 levels deep ({name: rebuild(args(storage
# id(...)))}); the largest RWKV-4 (14B, 40 layers) has 725 tensors: ~23,000 opcodes, ~2.6 MB.
MAX_OPCODES = 1_000_000  # 30,000 tensors' worth; also bounds the scan's own time (~0.5 s)
MAX_DEPTH = 64  # containers inside containers; a state dict needs 5
MAX_BUILD_BYTES = 64 << 20  # estimated memory the unpickler would build: ~18,000 tensors' worth
MAX_INT_BYTES = 8  # LONG1/LONG4 integers: torch writes sizes, strides and offsets below 2**63


class _Record:
    """What the simulation knows of one container: its nesting depth, and whether it can still
    change (a dict or list, or an object made by REDUCE, until it is put into another container)."""

    __slots__ = ("depth", "open")

    def __init__(self, depth: int, open_: bool) -> None:
        self.depth, self.open = depth, open_


_ATOM = _Record(0, False)  # strings, numbers, None, booleans, globals: all one record

# Estimated bytes of memory per object made (CPython 3.11, 64-bit), generous: an object's own size
# plus its garbage-collector header, one pointer on the unpickler's stack and one in its memo.
_COST = {"dict": 120, "list": 100, "tuple": 80, "item": 64, "atom": 64, "call": 400}


class _PickleSimulation:
    """Runs the unpickler's stack machine on records instead of objects, for the opcodes of
    _ALLOWED_OPCODES, with the C unpickler's stack, mark and memo rules."""

    def __init__(self) -> None:
        self.stack: list[_Record] = []
        self.marks: list[int] = []
        self.memo: dict[int, _Record] = {}
        self.cost = 0

    def fail(self, why: str) -> BadFile:
        return BadFile(f"data.pkl {why}; refusing it (a pickle bomb or a corrupt file)")

    def pop(self, n: int) -> list[_Record]:
        fence = self.marks[-1] if self.marks else 0
        if len(self.stack) - n < fence:
            raise self.fail("pops more items than its stack holds")
        items = self.stack[len(self.stack) - n:]
        del self.stack[len(self.stack) - n:]
        return items

    def pop_mark(self) -> list[_Record]:
        if not self.marks:
            raise self.fail("closes a MARK it never opened")
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    def top(self, below: int = 0) -> _Record:
        """The container that SETITEM(S)/APPEND(S)/BUILD modify, below `below` items."""
        at = len(self.stack) - 1 - below
        if at < 0:
            raise self.fail("modifies an object its stack does not hold")
        target = self.stack[at]
        if not target.open:
            raise self.fail("modifies an object that cannot be modified, or that is already inside "
                            "another one (a state dict fills each container before using it)")
        return target

    def contain(self, items: list[_Record]) -> int:
        """Close the items (they are now inside another object): the depth of their container."""
        depth = 0
        for r in items:
            if r.open:
                r.open = False
            depth = max(depth, r.depth)
        depth += 1
        if depth > MAX_DEPTH:
            raise self.fail(f"nests containers more than {MAX_DEPTH} deep")
        return depth

    def new(self, kind: str, items: list[_Record], open_: bool, n_items: int = 0) -> None:
        self.charge(_COST[kind] + _COST["item"] * n_items)
        self.stack.append(_Record(self.contain(items), open_))

    def charge(self, nbytes: int) -> None:
        self.cost += nbytes
        if self.cost > MAX_BUILD_BYTES:
            raise self.fail(f"would build more than {MAX_BUILD_BYTES >> 20} MiB of objects")

    def fill(self, target: _Record, items: list[_Record], keys: bool) -> None:
        if keys:
            if len(items) % 2:
                raise self.fail("gives a dictionary a key without a value")
            if any(k is not _ATOM for k in items[::2]):
                # only strings, numbers and the like: hashing a nested key recurses without limit
                raise self.fail("uses a container as a dictionary key, which a state dict never does")
        self.charge(_COST["item"] * len(items))
        target.depth = max(target.depth, self.contain(items))
        if target.depth > MAX_DEPTH:
            raise self.fail(f"nests containers more than {MAX_DEPTH} deep")

    def run(self, data: bytes) -> None:
        memo_writes = 0
        for n, (opcode, arg, _pos) in enumerate(pickletools.genops(io.BytesIO(data))):
            name = opcode.name
            if name not in _ALLOWED_OPCODES:
                raise BadFile(f"data.pkl uses the pickle opcode {name}, which a state dict never "
                              "needs; refusing to load it")
            if n >= MAX_OPCODES:
                raise self.fail(f"has more than {MAX_OPCODES} opcodes")
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                self.pop(1)
                return
            if name in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
                # picklers number memo slots 0, 1, 2, ...; the C unpickler allocates a table up to the
                # index, so a 5-byte LONG_BINPUT 2**28 would cost gigabytes
                index = memo_writes if name == "MEMOIZE" else arg
                if not 0 <= index <= memo_writes:
                    raise BadFile(f"data.pkl stores memo slot {arg} after only {memo_writes} memo writes; "
                                  "refusing it (a memory bomb or a corrupt pickle)")
                if len(self.stack) <= (self.marks[-1] if self.marks else 0):
                    raise self.fail("memoizes an item its stack does not hold")
                memo_writes += 1
                self.memo[index] = self.stack[-1]
                self.charge(16)
            elif name in ("BINGET", "LONG_BINGET"):
                if arg not in self.memo:
                    raise self.fail(f"reads memo slot {arg}, which it never stored")
                self.stack.append(self.memo[arg])
                self.charge(8)
            elif name == "MARK":
                self.marks.append(len(self.stack))
                self.charge(8)
            elif name == "POP":
                if self.marks and self.marks[-1] == len(self.stack):
                    self.marks.pop()  # as the C unpickler does: POP right after MARK drops the mark
                else:
                    self.pop(1)
            elif name == "POP_MARK":
                self.pop_mark()
            elif name == "DUP":
                self.stack.append(self.pop(1)[0])
                self.stack.append(self.stack[-1])
                self.charge(8)
            elif name in ("LONG1", "LONG4"):
                if not -(1 << (8 * MAX_INT_BYTES - 1)) <= arg < 1 << (8 * MAX_INT_BYTES - 1):
                    raise self.fail(f"has an integer of {arg.bit_length()} bits (a state dict's sizes, "
                                    f"strides and offsets are {8 * MAX_INT_BYTES}-bit signed integers)")
                self.atom()
            elif name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"):
                self.atom(4 * len(arg))  # a str holds up to 4 bytes per character
            elif name in ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8"):
                self.atom(len(arg))
            elif name in ("BININT", "BININT1", "BININT2", "BINFLOAT", "NONE", "NEWTRUE", "NEWFALSE"):
                self.atom()
            elif name == "GLOBAL":
                module, _, gname = arg.partition(" ")
                if (module, gname) not in _GLOBAL_NAMES:
                    raise BadFile(_global_refusal(module, gname))
                self.atom()
            elif name == "STACK_GLOBAL":
                self.pop(2)  # find_class checks the names when the unpickler runs
                self.atom()
            elif name == "EMPTY_DICT":
                self.new("dict", [], True)
            elif name == "EMPTY_LIST":
                self.new("list", [], True)
            elif name == "EMPTY_TUPLE":
                self.new("tuple", [], False)
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                items = self.pop(int(name[-1]))
                self.new("tuple", items, False, len(items))
            elif name == "TUPLE":
                items = self.pop_mark()
                self.new("tuple", items, False, len(items))
            elif name == "LIST":
                items = self.pop_mark()
                self.new("list", items, True, len(items))
            elif name == "DICT":
                items = self.pop_mark()
                d = _Record(1, True)
                self.fill(d, items, keys=True)
                self.charge(_COST["dict"])
                self.stack.append(d)
            elif name in ("SETITEM", "APPEND"):
                items = self.pop(2 if name == "SETITEM" else 1)
                self.fill(self.top(), items, keys=name == "SETITEM")
            elif name in ("SETITEMS", "APPENDS"):
                items = self.pop_mark()
                self.fill(self.top(), items, keys=name == "SETITEMS")
            elif name == "REDUCE":
                # the result (a tensor, an empty OrderedDict) stays open: SETITEMS/BUILD may fill it
                self.new("call", self.pop(2), True)
            elif name == "BUILD":
                state = self.pop(1)
                self.fill(self.top(), state, keys=False)
            elif name == "BINPERSID":
                self.new("call", self.pop(1), False)
            else:  # an allowed opcode this simulation does not know: a bug here, refuse safely
                raise self.fail(f"uses the opcode {name}, which the scan cannot simulate")
        raise self.fail("ends without a STOP opcode")

    def atom(self, nbytes: int = 0) -> None:
        self.stack.append(_ATOM)
        self.charge(_COST["atom"] + nbytes)


_GLOBAL_NAMES = frozenset({
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch", "FloatStorage"), ("torch", "HalfStorage"), ("torch", "BFloat16Storage"),
    ("collections", "OrderedDict"),
})


def _check_names(infos: list[zipfile.ZipInfo]) -> None:
    seen = set()
    for info in infos:
        name = info.filename
        parts = name.rstrip("/").split("/")
        if (name.startswith(("/", "\\")) or "\\" in name or ":" in name or "\x00" in name
                or any(p in ("", ".", "..") for p in parts)):
            raise BadFile(f"zip member name {describe(name)} is not a plain relative path "
                          "(path traversal?); refusing the archive")
        if name in seen:
            raise BadFile(f"zip member {describe(name)} appears twice; refusing the archive")
        seen.add(name)
        if info.flag_bits & 0x1:
            raise BadFile(f"zip member {describe(name)} is encrypted")


def _stored_span(buf: Buffer, info: zipfile.ZipInfo) -> tuple[int, int]:
    """(start, size) of an uncompressed member's bytes in buf, checked against the local header."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise BadFile(f"zip member {info.filename} is compressed (method {info.compress_type}); torch.save "
                      "stores tensor data uncompressed, so this is not a torch checkpoint (or is a zip bomb)")
    if info.compress_size != info.file_size:
        raise BadFile(f"zip member {info.filename}: stored but sizes differ "
                      f"({info.compress_size} vs {info.file_size})")
    h = info.header_offset
    if h < 0 or h + 30 > len(buf) or bytes(buf[h:h + 4]) != b"PK\x03\x04":
        raise BadFile(f"zip member {info.filename}: local header missing at offset {h}")
    name_len = int.from_bytes(buf[h + 26:h + 28], "little")
    extra_len = int.from_bytes(buf[h + 28:h + 30], "little")
    start = h + 30 + name_len + extra_len
    if start + info.file_size > len(buf):
        raise BadFile(f"zip member {info.filename} claims {info.file_size} bytes at offset {start} but the "
                      f"file is only {len(buf)} bytes (truncated?)")
    return start, info.file_size


def _read_pickle(buf: Buffer, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.file_size > MAX_PICKLE_BYTES:
        raise BadFile(f"{info.filename} declares {info.file_size} bytes; a state dict's pickle is far "
                      f"smaller (limit {MAX_PICKLE_BYTES}); refusing (zip bomb?)")
    if info.compress_type == zipfile.ZIP_STORED:
        start, size = _stored_span(buf, info)
        return bytes(buf[start:start + size])
    try:  # a hand-made archive may deflate data.pkl. zipfile inflates as much as read() asks for,
        # whatever the header says, so ask for the declared size only (already capped above)
        with zf.open(info) as f:
            return f.read(info.file_size)
    except Exception as e:  # BadZipFile (CRC: the stream is longer than declared), zlib.error, EOFError
        raise BadFile(f"cannot decompress {info.filename} ({type(e).__name__}: {str(e)[:120]})") from None


class _BufferFile:
    """A Buffer (a FileBytes) as the file object zipfile wants: read/seek/tell on byte ranges."""

    def __init__(self, buf: Buffer) -> None:
        self.buf, self.pos = buf, 0

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = offset + (0, self.pos, len(self.buf))[whence]
        if pos < 0:
            raise OSError("seek before the start of the file")  # as a real file; zipfile expects it
        self.pos = pos
        return pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = len(self.buf) if n is None or n < 0 else self.pos + n
        data = self.buf[self.pos:end]
        self.pos += len(data)
        return data

    def seekable(self) -> bool:
        return True


def read_torch_zip(buf: Buffer) -> dict[str, LazyTensor]:
    """Parse a torch.save zip archive held in buf (a FileBytes, bytes or an mmap) into {name: LazyTensor}."""
    fp = io.BytesIO(buf) if isinstance(buf, bytes) else _BufferFile(buf)
    try:
        zf = zipfile.ZipFile(fp)
        infos = zf.infolist()
    except Exception as e:  # BadZipFile, struct.error, ValueError, ... on garbled central directories
        raise BadFile(f"not a readable zip archive ({type(e).__name__}: {str(e)[:120]})") from None
    _check_names(infos)
    by_name = {i.filename: i for i in infos}
    pickles = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
    if len(pickles) != 1:
        raise BadFile("zip archive without exactly one <name>/data.pkl member: not a torch.save checkpoint "
                      f"(members: {describe([i.filename for i in infos[:5]], 200)})")
    prefix = pickles[0].filename[: -len("data.pkl")]
    order = by_name.get(prefix + "byteorder")
    if order is not None:
        start, size = _stored_span(buf, order)
        if bytes(buf[start:start + size]) != b"little":
            raise BadFile(f"{order.filename} is {describe(bytes(buf[start:start + min(size, 16)]))}; "
                          "only little-endian checkpoints are supported")
    data = _read_pickle(buf, zf, pickles[0])
    _scan_pickle(data)

    storages: dict[str, _Storage] = {}

    def load_storage(pid: object) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise BadFile(f"unexpected persistent id {describe(pid)} in data.pkl")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise BadFile(f"persistent id {describe(pid)} does not name a storage type")
        if not isinstance(key, str) or not re.fullmatch(r"[0-9A-Za-z_]{1,64}", key):
            raise BadFile(f"storage key {describe(key)} does not name a member of the archive's data/ folder")
        numel = _int(numel, f"element count of storage data/{key}")
        if key in storages:
            old = storages[key]
            if old.dtype != stype.dtype or old.numel != numel:
                raise BadFile(f"storage data/{key} is declared twice with different dtypes or sizes")
            return old
        info = by_name.get(f"{prefix}data/{key}")
        if info is None:
            raise BadFile(f"data.pkl refers to storage {prefix}data/{key}, which is not in the archive")
        start, size = _stored_span(buf, info)
        if numel < 0 or numel * STORED_DTYPES[stype.dtype][1] > size:
            raise BadFile(f"storage {info.filename} holds {size} bytes but is declared as {describe(numel)} "
                          f"{stype.dtype} elements (truncated or hostile file)")
        storages[key] = _Storage(stype.dtype, key, start, numel)
        return storages[key]

    safe_globals = {
        ("torch._utils", "_rebuild_tensor_v2"): _SafeCall(_make_rebuild_tensor(buf)),
        ("torch._utils", "_rebuild_parameter"): _SafeCall(_rebuild_parameter),
        ("torch", "FloatStorage"): _StorageType("float32"),
        ("torch", "HalfStorage"): _StorageType("float16"),
        ("torch", "BFloat16Storage"): _StorageType("bfloat16"),
        ("collections", "OrderedDict"): _StateDict,
    }
    try:
        obj = _RestrictedUnpickler(data, safe_globals, load_storage).load()
    except BadFile:
        raise
    except Exception as e:  # TypeError from wrong call arities, UnpicklingError, RecursionError, ...
        raise BadFile(f"data.pkl could not be unpickled as a state dict ({type(e).__name__}: "
                      f"{str(e)[:120]})") from None
    if not isinstance(obj, dict):
        raise BadFile(f"data.pkl holds {type(obj).__name__}, not a dict of tensors")
    for name, value in obj.items():
        if not isinstance(name, str):
            raise BadFile(f"data.pkl has a non-string key {describe(name)}")
        if not isinstance(value, LazyTensor):
            raise BadFile(f"data.pkl entry {describe(name)} is a {type(value).__name__}, not a tensor "
                          "(only plain state dicts of tensors are supported, not training checkpoints)")
    total = sum(t.nbytes for t in obj.values())
    if total > len(buf):
        raise BadFile(f"tensors claim {total} bytes in total but the file holds only {len(buf)}; "
                      "tensors sharing storage are not supported")
    return dict(obj)


def sniff(head: bytes) -> bool:
    """A zip archive: a local file header, or the end record of an empty archive."""
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def read(buf: Buffer) -> Contents:
    return Contents("pth", read_torch_zip(buf))
