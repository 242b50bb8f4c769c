"""rwkv_np: RWKV in NumPy. RWKV-4 ("RWKV: Reinventing RNNs for the Transformer Era") and its successors
RWKV-5.1/5.2 ("Eagle"), 6 ("Finch") and 7 ("Goose").

Read rwkv_np/rwkv4/reference.py for the network itself (plain NumPy, both forms), then rwkv5/, rwkv6/,
rwkv7/ for the later versions; rwkv_np.RWKV computes the same thing fast, for any of them.

    import rwkv_np
    model = rwkv_np.load_model("path/to/RWKV-4-Pile-169M.pth")
    logits, state = model.forward([510, 3158, 8516], mode="parallel")
    logits, state = model.forward([30], state, mode="recurrent")

Importing rwkv_np needs NumPy only; Numba is imported when a model is built.
"""

from __future__ import annotations

import os

from .config import RWKVConfig
from .errors import ArgumentError, CheckpointError, DownloadError, ModelError, RWKVError, TrainingError
from .model import RWKV
from .state import State

__all__ = ["load_model", "RWKV", "RWKVConfig", "State", "RWKVError", "CheckpointError",
           "ArgumentError", "DownloadError", "ModelError", "TrainingError"]
__version__ = "0.2.0"


def load_model(path: str | os.PathLike, keep_16bit: bool = False, lazy_embedding: bool = False,
               quantize: str | None = None, keep_blocks: bool = False) -> RWKV:
    """Load an RWKV checkpoint: a BlinkDL .pth, a Hugging Face RWKV-4 folder or file (safetensors or
    pytorch_model.bin), an rwkv.cpp file (FP32, FP16, or quantized: Q4_0, Q4_1, Q5_0, Q5_1 and
    Q8_0, dequantized exactly as ggml defines them), or a name such as "169m" that was downloaded
    with `python -m rwkv_np download 169m`. The format is detected from the bytes, the architecture
    from the tensor names (rwkv_np.registry): `model.config.version` is "4", "5.1", "5.2", "6" or "7".

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
    checkpoint = load_checkpoint(path, keep_16bit=keep_16bit, lazy_embedding=lazy_embedding, quantize=quantize,
                                 keep_blocks=keep_blocks)
    model = RWKV(checkpoint.weights, checkpoint.config)
    model.checkpoint_path = checkpoint.path
    model.checkpoint_format = checkpoint.format
    model.source_dtype = checkpoint.source_dtype
    model.tokenizer_path = checkpoint.tokenizer_path
    return model
