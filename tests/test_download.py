"""Finding downloaded checkpoints offline, and download failures, with no network at all.

Every test points huggingface_hub at an empty cache under tmp_path with HF_HUB_OFFLINE=1; a
fake HF cache layout (models--OWNER--NAME/snapshots/REV/FILE + refs/main) stands in for real
downloads.
"""

import hashlib
import time
from dataclasses import replace

import pytest

from rwkv_np import download
from rwkv_np.errors import DownloadError

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def put(hub, repo_id, filename, data=b"x"):
    """Lay a file out as huggingface_hub's cache does."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REV)
    path = repo / "snapshots" / REV / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_names():
    assert download.canonical_name("169M") == "169m"
    assert download.canonical_name("1.5b") == "1b5"
    assert download.canonical_name("14B") == "14b"
    assert download.canonical_name("model.pth") is None
    assert download.is_model_name("430m") and not download.is_model_name("430")


def test_not_cached_fails_at_once_saying_what_where(hub):
    t0 = time.perf_counter()
    with pytest.raises(DownloadError) as e:
        download.resolve_model("169m")
    assert time.perf_counter() - t0 < 2  # no network attempt
    msg = str(e.value)
    assert "model '169m' is not in the local Hugging Face cache" in msg
    assert "python -m rwkv_np download 169m" in msg
    assert "https://huggingface.co/BlinkDL/rwkv-4-pile-169m/resolve/main/RWKV-4-Pile-169M-20220807-8023.pth" in msg
    assert str(hub) in msg and "--model /path/to/RWKV-4-Pile-169M-20220807-8023.pth" in msg


def test_unknown_name(hub):
    with pytest.raises(DownloadError, match=r"unknown model name '170m': known names are 169m, 430m, 1b5, 3b, 7b, 14b"):
        download.resolve_model("170m")


def test_finds_cached_blinkdl_file(hub):
    path = put(hub, "BlinkDL/rwkv-4-pile-169m", "RWKV-4-Pile-169M-20220807-8023.pth")
    assert download.resolve_model("169m") == path


def test_finds_cached_transformers_folder(hub):
    config = put(hub, "RWKV/rwkv-4-430m-pile", "config.json", b"{}")
    with pytest.raises(DownloadError):  # config alone is not a model
        download.resolve_model("430m")
    put(hub, "RWKV/rwkv-4-430m-pile", "pytorch_model.bin")
    assert download.resolve_model("430m") == config.parent


def test_cached_tokenizer(hub):
    assert download.cached_tokenizer_path() is None
    path = put(hub, "EleutherAI/gpt-neox-20b", "tokenizer.json", b"{}")
    assert download.cached_tokenizer_path() == path


def test_download_offline_fails_at_once(hub):
    t0 = time.perf_counter()
    expected = (r"could not download RWKV-4-Pile-169M-20220807-8023.pth from "
                r"https://huggingface.co/BlinkDL/rwkv-4-pile-169m \(HF_HUB_OFFLINE is set\)")
    with pytest.raises(DownloadError, match=expected):
        download.download("169m")
    assert time.perf_counter() - t0 < 5


def test_unreachable_network_fails_at_once(hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)

    def refuse(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(download.socket, "create_connection", refuse)
    with pytest.raises(DownloadError, match=r"cannot reach https://huggingface.co \(.*Name or service not known\); "
                                            r"download it with .*pass --model"):
        download.download("169m")


@pytest.fixture
def small_169m(hub, monkeypatch):
    """Pretend the 169m checkpoint is a 1000-byte file with a known hash, and that the hub serves it."""
    data = bytes(range(256)) * 3 + b"rwkv" * 58
    entry = replace(download.PILE_MODELS["169m"], size=len(data), sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(download.PILE_MODELS, "169m", entry)
    monkeypatch.setattr(download, "_check_network", lambda: None)
    fetched = []

    def fake_hf_hub_download(repo_id, filename, **kwargs):
        fetched.append((repo_id, filename, kwargs.get("etag_timeout")))
        payload = data if filename == entry.filename else b"{}"
        return str(put(hub, repo_id, filename, served.get(filename, payload)))

    served = {}
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    return entry, data, served, fetched


def test_download_verifies_and_fetches_tokenizer(small_169m):
    entry, data, served, fetched = small_169m
    path = download.download("169m")
    assert path.read_bytes() == data and download.resolve_model("169m") == path
    assert fetched == [("BlinkDL/rwkv-4-pile-169m", entry.filename, download.NETWORK_TIMEOUT),
                       ("EleutherAI/gpt-neox-20b", "tokenizer.json", download.NETWORK_TIMEOUT)]
    assert download.download("169m") == path and len(fetched) == 2  # cached: nothing fetched again


def test_download_size_mismatch(small_169m):
    entry, data, served, _ = small_169m
    served[entry.filename] = data[:-1]
    with pytest.raises(DownloadError, match=rf"RWKV-4-Pile-169M-20220807-8023.pth: size is {len(data) - 1} bytes, "
                                            rf"expected {len(data)} \(incomplete or corrupt download"):
        download.download("169m")


def test_download_hash_mismatch(small_169m):
    entry, data, served, _ = small_169m
    served[entry.filename] = data[:-1] + b"X"
    with pytest.raises(DownloadError, match=rf"sha256 is [0-9a-f]{{64}}, expected {entry.sha256} \(corrupt"):
        download.download("169m")


def test_hub_error_becomes_download_error(hub, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(download, "_check_network", lambda: None)

    def broken(*args, **kwargs):
        raise ConnectionError("connection reset by peer\nmore detail")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", broken)
    with pytest.raises(DownloadError, match=r"could not download .*: ConnectionError: connection reset by peer$"):
        download.download("3b")


# --- the World models (vocabulary 65536): RWKV-7 World, RWKV-7 G1, RWKV-4 World ---

WORLD_FILES = {
    "rwkv7-world-0.1b": ("BlinkDL/rwkv-7-world", "RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth"),
    "rwkv7-world-1.5b": ("BlinkDL/rwkv-7-world", "RWKV-x070-World-1.5B-v3-20250127-ctx4096.pth"),
    "rwkv7-g1-0.1b": ("BlinkDL/rwkv7-g1", "rwkv7-g1d-0.1b-20260129-ctx8192.pth"),
    "rwkv7-g1-1.5b": ("BlinkDL/rwkv7-g1", "rwkv7-g1d-1.5b-20260212-ctx8192.pth"),
    "rwkv4-world-0.4b": ("BlinkDL/rwkv-4-world", "RWKV-4-World-0.4B-v1-20230529-ctx4096.pth"),
}


def test_world_names():
    names = download.model_names()
    assert names[:6] == ["169m", "430m", "1b5", "3b", "7b", "14b"]  # the Pile ones first, as before
    for family, sizes in (("rwkv7-world", ("0.1b", "0.4b", "1.5b")), ("rwkv7-g1", ("0.1b", "0.4b", "1.5b")),
                          ("rwkv4-world", ("0.1b", "0.4b", "1.5b"))):
        assert [n for n in names if n.startswith(family + "-")] == [f"{family}-{s}" for s in sizes]
    assert download.canonical_name("RWKV7-World-1B5") == "rwkv7-world-1.5b"
    assert download.canonical_name("rwkv7-g1-1b5") == "rwkv7-g1-1.5b"
    assert download.canonical_name("rwkv7-world-3b") is None
    for key in download.WORLD_MODELS:
        entry = download.WORLD_MODELS[key]
        # no hash could be checked against the hub from here, so none is claimed
        assert entry.tokenizer == "world" and entry.size is None and entry.sha256 is None
        assert entry.filename.endswith(".pth") and entry.repo_id.startswith("BlinkDL/")


@pytest.mark.parametrize("name", sorted(WORLD_FILES))
def test_world_model_not_cached_says_where_from(hub, name):
    repo, filename = WORLD_FILES[name]
    t0 = time.perf_counter()
    with pytest.raises(DownloadError) as e:
        download.resolve_model(name)
    assert time.perf_counter() - t0 < 2
    msg = str(e.value)
    assert f"model {name!r} is not in the local Hugging Face cache" in msg
    assert f"python -m rwkv_np download {name}" in msg
    assert f"https://huggingface.co/{repo}/resolve/main/{filename}" in msg
    path = put(hub, repo, filename)
    assert download.resolve_model(name) == path


def test_world_download_offline_fails_at_once(hub):
    t0 = time.perf_counter()
    with pytest.raises(DownloadError, match=r"could not download RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth from "
                                            r"https://huggingface.co/BlinkDL/rwkv-7-world \(HF_HUB_OFFLINE is set\)"):
        download.download("rwkv7-world-0.1b")
    assert time.perf_counter() - t0 < 5


def test_world_download_fetches_no_neox_tokenizer(hub, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(download, "_check_network", lambda: None)
    fetched = []

    def fake_hf_hub_download(repo_id, filename, **kwargs):
        fetched.append((repo_id, filename))
        return str(put(hub, repo_id, filename, b"weights"))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    path = download.download("rwkv7-g1-0.4b")
    assert fetched == [("BlinkDL/rwkv7-g1", "rwkv7-g1d-0.4b-20260210-ctx8192.pth")]
    assert path.read_bytes() == b"weights" and download.resolve_model("rwkv7-g1-0.4b") == path
