"""Fetching BlinkDL's released checkpoints into the Hugging Face cache, and finding them offline.

`python -m rwkv_np download 169m` downloads BlinkDL's checkpoint (and, for the Pile models, the
GPT-NeoX-20B tokenizer) with huggingface_hub (resumable, with its progress bar) and checks its size
and sha256 where trusted values are known. `resolve_model("169m")` then finds the file without any
network access; the Hugging Face transformers conversion (RWKV/rwkv-4-169m-pile, a folder) is found
too if it is in the cache.

Known: the RWKV-4 Pile models (169m ... 14b), and the vocabulary-65536 "World" models of 0.1B to
1.5B: RWKV-7 World (rwkv7-world-*), RWKV-7 G1 (rwkv7-g1-*) and RWKV-4 World (rwkv4-world-*). Their
tokenizer is the World tokenizer, whose vocabulary the `rwkv` package ships (world_tokenizer.py), so
nothing else is downloaded for them.
"""

from __future__ import annotations

import hashlib
import os
import socket
from urllib.parse import urlparse
from dataclasses import dataclass
from pathlib import Path

from .errors import DownloadError


@dataclass(frozen=True)
class PileCheckpoint:
    repo_id: str
    filename: str
    size: int | None    # bytes, from the repository's Git LFS pointer
    sha256: str | None  # the LFS object id; None where we have no trusted value
    hf_repo_id: str | None  # the Hugging Face transformers conversion of the same weights, if any
    tokenizer: str = "neox"  # "neox": GPT-NeoX-20B tokenizer.json (downloaded too); "world": from the rwkv package


# The final Pile-trained RWKV-4 checkpoints (332B tokens, ctx 1024). Hashes are the Git LFS
# object ids shown on each file's page on huggingface.co.
PILE_MODELS = {
    "169m": PileCheckpoint("BlinkDL/rwkv-4-pile-169m", "RWKV-4-Pile-169M-20220807-8023.pth", 338718755,
                           "713c6f6137a08d3a86ab57df4f09ea03563329beb3bbabc23509d6c57aa0f9e2", "RWKV/rwkv-4-169m-pile"),
    "430m": PileCheckpoint("BlinkDL/rwkv-4-pile-430m", "RWKV-4-Pile-430M-20220808-8066.pth", 860861859,
                           "261e6b8fef1c7c9e08a4dde31bf5caf8e79c4da38126d77977a4707de82a7f64", "RWKV/rwkv-4-430m-pile"),
    "1b5": PileCheckpoint("BlinkDL/rwkv-4-pile-1b5", "RWKV-4-Pile-1B5-20220903-8040.pth", None,
                          "4e215be3b4f86dc2f145835b47a2c432306c373cbf625375b7721bb474512bad", "RWKV/rwkv-4-1b5-pile"),
    "3b": PileCheckpoint("BlinkDL/rwkv-4-pile-3b", "RWKV-4-Pile-3B-20221008-8023.pth", None,
                         "335d7e280c52ef0afd02d8760bda4453af44d15f5a33d71ce09656b72b45073a", "RWKV/rwkv-4-3b-pile"),
    "7b": PileCheckpoint("BlinkDL/rwkv-4-pile-7b", "RWKV-4-Pile-7B-20221115-8047.pth", None,
                         "9a6bf2f0267bd0cf9fcea05db920ae2bf4e49d1b948dfa65cadcc9bc22ed878d", "RWKV/rwkv-4-7b-pile"),
    "14b": PileCheckpoint("BlinkDL/rwkv-4-pile-14b", "RWKV-4-Pile-14B-20230213-8019.pth", None, None,
                          "RWKV/rwkv-4-14b-pile"),
}

# The vocabulary-65536 "World" models of 0.1B to 1.5B, as BlinkDL's Hugging Face repositories name
# them (file names as published there and used by the projects that download them). No size or
# sha256 is given: no value could be checked against the repositories from here, and a wrong one
# would refuse a good download; the loader's own checks of the file still apply.
WORLD_MODELS = {
    "rwkv7-world-0.1b": PileCheckpoint("BlinkDL/rwkv-7-world", "RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth",
                                       None, None, None, "world"),
    "rwkv7-world-0.4b": PileCheckpoint("BlinkDL/rwkv-7-world", "RWKV-x070-World-0.4B-v2.9-20250107-ctx4096.pth",
                                       None, None, None, "world"),
    "rwkv7-world-1.5b": PileCheckpoint("BlinkDL/rwkv-7-world", "RWKV-x070-World-1.5B-v3-20250127-ctx4096.pth",
                                       None, None, None, "world"),
    # G1: RWKV-7 trained further on reasoning and instruction data; the g1d release of each size
    "rwkv7-g1-0.1b": PileCheckpoint("BlinkDL/rwkv7-g1", "rwkv7-g1d-0.1b-20260129-ctx8192.pth", None, None, None,
                                    "world"),
    "rwkv7-g1-0.4b": PileCheckpoint("BlinkDL/rwkv7-g1", "rwkv7-g1d-0.4b-20260210-ctx8192.pth", None, None, None,
                                    "world"),
    "rwkv7-g1-1.5b": PileCheckpoint("BlinkDL/rwkv7-g1", "rwkv7-g1d-1.5b-20260212-ctx8192.pth", None, None, None,
                                    "world"),
    "rwkv4-world-0.1b": PileCheckpoint("BlinkDL/rwkv-4-world", "RWKV-4-World-0.1B-v1-20230520-ctx4096.pth",
                                       None, None, None, "world"),
    "rwkv4-world-0.4b": PileCheckpoint("BlinkDL/rwkv-4-world", "RWKV-4-World-0.4B-v1-20230529-ctx4096.pth",
                                       None, None, None, "world"),
    "rwkv4-world-1.5b": PileCheckpoint("BlinkDL/rwkv-4-world", "RWKV-4-World-1.5B-v1-fixed-20230612-ctx4096.pth",
                                       None, None, None, "world"),
}
ALIASES = {"1.5b": "1b5", "169M": "169m"}

# BlinkDL's repositories hold only the .pth; the same GPT-NeoX-20B tokenizer is published with the model.
TOKENIZER_REPOS = (("EleutherAI/gpt-neox-20b", "tokenizer.json"),) + tuple(
    (c.hf_repo_id, "tokenizer.json") for c in PILE_MODELS.values() if c.hf_repo_id)
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
NETWORK_TIMEOUT = 10.0  # seconds to wait for the hub's first answer, so a dead network fails fast


def model_names() -> list[str]:
    return list(PILE_MODELS) + list(WORLD_MODELS)


def _entry(key: str) -> PileCheckpoint:
    return PILE_MODELS[key] if key in PILE_MODELS else WORLD_MODELS[key]


def canonical_name(name: str) -> str | None:
    """'169m', '1.5B', 'RWKV7-World-1B5', ... -> the key of PILE_MODELS or WORLD_MODELS, or None when `name` is not one."""
    key = ALIASES.get(name, name.lower())
    key = ALIASES.get(key, key)
    if key.startswith("rwkv") and key.endswith("-1b5"):
        key = key[:-3] + "1.5b"
    return key if key in PILE_MODELS or key in WORLD_MODELS else None


def is_model_name(name: str) -> bool:
    """True for the names `resolve_model` knows ('169m', '1b5', '1.5b', ...)."""
    return canonical_name(name) is not None


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _cached(repo_id: str, filename: str) -> Path | None:
    """The file's path in the local HF cache, looked up without any network access."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def cached_tokenizer_path() -> Path | None:
    """The GPT-NeoX-20B tokenizer.json from the local HF cache, or None."""
    for repo_id, filename in TOKENIZER_REPOS:
        path = _cached(repo_id, filename)
        if path is not None:
            return path
    return None


def _how_to_get(key: str) -> str:
    c = _entry(key)
    url = f"https://huggingface.co/{c.repo_id}/resolve/main/{c.filename}"
    return (f"download it with `python -m rwkv_np download {key}` (it fetches {url} into the Hugging Face "
            f"cache {_cache_dir()}), or fetch that URL by hand, put the file anywhere and pass "
            f"--model /path/to/{c.filename}")


def resolve_model(name: str) -> Path:
    """The cached checkpoint for a name like '169m', without network; DownloadError if absent.

    Looks for BlinkDL's .pth first, then a Hugging Face transformers folder (config.json plus
    model.safetensors or pytorch_model.bin) of the same model.
    """
    key = canonical_name(name)
    if key is None:
        raise DownloadError(f"unknown model name {name!r}: known names are {', '.join(model_names())}"
                            f" (or pass a checkpoint file or folder path)")
    c = _entry(key)
    path = _cached(c.repo_id, c.filename)
    if path is not None:
        return path
    config = _cached(c.hf_repo_id, "config.json") if c.hf_repo_id else None
    if config is not None and any(_cached(c.hf_repo_id, f) for f in HF_WEIGHT_FILES):
        return config.parent
    raise DownloadError(f"model {key!r} is not in the local Hugging Face cache: {_how_to_get(key)}")


def sha256_of(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_file(path: str | Path, size: int | None, sha256: str | None) -> None:
    """DownloadError naming `path` when its size or sha256 differs from the expected one."""
    path = Path(path)
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise DownloadError(f"{path}: size is {actual} bytes, expected {size} (incomplete or corrupt download; "
                            f"delete it and download again)")
    if sha256 is not None:
        digest = sha256_of(path)
        if digest != sha256:
            raise DownloadError(f"{path}: sha256 is {digest}, expected {sha256} (corrupt download; "
                                f"delete it and download again)")


def _check_network() -> None:
    """Fail within NETWORK_TIMEOUT when the hub cannot be reached at all.

    huggingface_hub retries a failed connection five times with back-off (~25 s); a direct TCP
    connect tells a dead network at once. Skipped behind a proxy, where only the proxy knows.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                                                                       "all_proxy")):
        return  # offline: hf_hub_download fails at once by itself
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=NETWORK_TIMEOUT).close()
    except OSError as e:
        raise DownloadError(f"cannot reach {constants.ENDPOINT} ({e})") from None


def _fetch(repo_id: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, etag_timeout=NETWORK_TIMEOUT))
    except KeyboardInterrupt:
        raise
    except Exception as e:  # hub errors, HTTP/connection errors, offline mode: one message for all
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") else ""
        raise DownloadError(f"could not download {filename} from https://huggingface.co/{repo_id}{offline}: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def download(name: str, *, tokenizer: bool = True) -> Path:
    """Download (or find already cached) the checkpoint `name` and the tokenizer; verify; return its path.

    A World model's tokenizer is not downloaded: its vocabulary comes with the `rwkv` package.
    """
    key = canonical_name(name)
    if key is None:
        raise DownloadError(f"unknown model name {name!r}: known names are {', '.join(model_names())}")
    c = _entry(key)
    path = _cached(c.repo_id, c.filename)  # already there: no network needed
    need_tokenizer = tokenizer and c.tokenizer == "neox" and cached_tokenizer_path() is None
    if path is None or need_tokenizer:
        try:
            _check_network()
        except DownloadError as e:
            raise DownloadError(f"{e}; {_how_to_get(key)}") from None
    if path is None:
        path = _fetch(c.repo_id, c.filename)
    verify_file(path, c.size, c.sha256)
    if need_tokenizer:
        _fetch(*TOKENIZER_REPOS[0])
    return path
