"""Shared test helpers: where the reference fixtures live, and skipping when they don't."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TORCH_WRITTEN = SHARED / "fixtures" / "torch_written"
RWKV_CPP = SHARED / "fixtures" / "rwkv_cpp"
TOKENIZER_JSON = SHARED / "fixtures" / "tokenizer" / "20B_tokenizer.json"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"


def need(path: Path) -> Path:
    """Skip the calling test, naming the file, when a reference fixture is absent."""
    if not path.exists():
        pytest.skip(f"reference fixture missing: {path}")
    return path
