"""rwkv_np: RWKV-4 ("RWKV: Reinventing RNNs for the Transformer Era") in NumPy, and its successors
RWKV-5.1/5.2 ("Eagle"), 6 ("Finch") and 7 ("Goose").

Read rwkv_np/reference.py for the network itself (plain NumPy, both forms), reference_v5/6/7.py for the
later versions; rwkv_np.RWKV (engine.py, engine_later.py) computes the same thing fast.

    import rwkv_np
    model = rwkv_np.load_model("path/to/RWKV-4-Pile-169M.pth")
    logits, state = model.forward([510, 3158, 8516], mode="parallel")
    logits, state = model.forward([30], state, mode="recurrent")
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .config import RWKVConfig
from .errors import ArgumentError, CheckpointError, DownloadError, ModelError, RWKVError, TrainingError
from .state import State

if TYPE_CHECKING:
    from .engine import RWKV

__all__ = ["load_model", "RWKV", "RWKVConfig", "State", "RWKVError", "CheckpointError",
           "ArgumentError", "DownloadError", "ModelError", "TrainingError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # the engine (and with it Numba) is imported on first use, so that `import rwkv_np.reference`
    # or `rwkv_np.schema` needs nothing but NumPy
    if name == "RWKV":
        from .engine import RWKV

        return RWKV
    raise AttributeError(f"module 'rwkv_np' has no attribute {name!r}")


def load_model(path: str | os.PathLike, keep_16bit: bool = False, lazy_embedding: bool = False,
               quantize: str | None = None, keep_blocks: bool = False) -> "RWKV":
    """Load an RWKV checkpoint: a BlinkDL .pth, a Hugging Face RWKV-4 folder or file (safetensors or
    pytorch_model.bin), an rwkv.cpp file (FP32, FP16, or quantized: Q4_0, Q4_1, Q5_0, Q5_1 and
    Q8_0, dequantized exactly as ggml defines them), or a name such as "169m" that was downloaded
    with `python -m rwkv_np download 169m`. The format is detected from the bytes, the RWKV version
    from the tensor names: `model.config.version` is "4", "5.1", "5.2", "6" or "7" (the later
    versions from BlinkDL .pth / .safetensors with BlinkDL's names and rwkv.cpp files).

    keep_16bit: keep bf16/fp16 matrices as stored (half the memory, about twice the generation
        speed); arithmetic stays float32 and the results equal those of the widened weights.
    lazy_embedding: leave the embedding in the file and read the rows each forward pass needs
        (it then takes no memory; the file must stay unchanged while the model is in use).
    quantize: None, or "int8": quantize every matrix but the embedding at load time, symmetric
        per block of 32 weights along each row, q in [-127, 127] int8 with one float32 scale
        max|w| / 127 per block (1.125 bytes per weight; each weight within 1/254 of its block's
        largest magnitude). The compiled kernels read the int8 weights directly. A Q8_0 rwkv.cpp
        file is taken as stored (its blocks are this scheme with fp16 scales). RWKV-4 only.
    keep_blocks: keep the Q4_0/Q4_1/Q5_0/Q5_1 matrices of an rwkv.cpp RWKV-4 file in their ggml
        blocks (0.56-0.75 bytes per weight); the recurrent form reads them directly, the parallel
        form dequantizes them matrix by matrix as ggml does. The results equal those of the
        dequantized weights up to float32 rounding of the sums. Ignored for other files. With
        quantize="int8" too, the blocks stay and the other matrices (rwkv.cpp's files keep the head
        fp16, 30% of a 169M model's weights) become int8.
    """
    from .loading import load_checkpoint

    if not os.path.exists(path):
        from .download import is_model_name, resolve_model

        if is_model_name(str(path)):
            path = resolve_model(str(path))
    from .engine import RWKV

    checkpoint = load_checkpoint(path, keep_16bit=keep_16bit, lazy_embedding=lazy_embedding, quantize=quantize,
                                 keep_blocks=keep_blocks)
    model = RWKV(checkpoint.weights, checkpoint.config)
    model.checkpoint_path = checkpoint.path
    model.checkpoint_format = checkpoint.format
    model.source_dtype = checkpoint.source_dtype
    model.tokenizer_path = checkpoint.tokenizer_path
    return model
