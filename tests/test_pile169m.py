"""The real RWKV-4-Pile-169M checkpoint, when it is on this machine (skipped otherwise, as in CI).

Found through RWKV_NP_PILE_169M (a .pth file or a Hugging Face folder), or in the Hugging Face
cache after `python -m rwkv_np download 169m`. The expected continuation is the one the
transformers test suite records for RWKV/rwkv-4-169m-pile (the same weights) with greedy
decoding.
"""

import os
from pathlib import Path

import pytest

from helpers import TOKENIZER_JSON as NEOX_JSON


def _checkpoint() -> Path:
    from rwkv_np.download import resolve_model
    from rwkv_np.errors import DownloadError

    env = os.environ.get("RWKV_NP_PILE_169M")
    if env:
        if not Path(env).exists():
            pytest.skip(f"RWKV_NP_PILE_169M points to a missing path: {env}")
        return Path(env)
    try:
        return resolve_model("169m")
    except DownloadError:
        pytest.skip("RWKV-4-Pile-169M-20220807-8023.pth missing: not in the Hugging Face cache and "
                    "RWKV_NP_PILE_169M unset (python -m rwkv_np download 169m)")


def test_greedy_hello_my_name_is():
    path = _checkpoint()
    import rwkv_np
    from rwkv_np.errors import RWKVError
    from rwkv_np.generate import generate
    from rwkv_np.tokenizer import get_tokenizer

    model = rwkv_np.load_model(path)
    try:
        tokenizer = get_tokenizer(model.config.vocab_size, checkpoint_tokenizer_path=path)
    except RWKVError:
        if not NEOX_JSON.is_file():
            pytest.skip(f"GPT-NeoX tokenizer missing: {NEOX_JSON}")
        tokenizer = get_tokenizer(model.config.vocab_size, tokenizer_path=NEOX_JSON)
    for mode in ("parallel", "recurrent"):
        gen = generate(model, tokenizer, "Hello my name is", max_tokens=10, temperature=0, mode=mode)
        assert "".join(gen) == " Jasmine and I am a newbie to the"
        assert gen.stats.prompt_tokens == 4 and gen.stats.generated_tokens == 10
