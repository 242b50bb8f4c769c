"""Hugging Face's RWKV-4 checkpoints (`RwkvForCausalLM`, e.g. RWKV/rwkv-4-169m-pile): a folder of
config.json and model.safetensors or pytorch_model.bin (or their .index.json shard lists), or a bare
file with the same tensor names.

The quirks of the format, all here: the tensor names (`rwkv.blocks.0.attention.key.weight` for
BlinkDL's `blocks.0.att.key.weight`), the sizes config.json states (checked against the weights),
its layer_norm_epsilon, and that only RWKV-4 is read this way: the conversions of RWKV-5/6/7 rename
tensors in ways no reference file here lets us verify, so they are refused rather than guessed.
"""

from __future__ import annotations

import json
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from ..errors import CheckpointError
from .base import BadFile, Contents, json_int

MAX_JSON_BYTES = 16 << 20
_RENAMES = [(r"^rwkv\.embeddings\.", "emb."), (r"^rwkv\.", ""), (r"\.pre_ln\.", ".ln0."),
            (r"\.attention\.", ".att."), (r"\.feed_forward\.", ".ffn."), (r"time_mix_key$", "time_mix_k"),
            (r"time_mix_value$", "time_mix_v"), (r"time_mix_receptance$", "time_mix_r")]
ONLY = ("4",)
ONLY_WHY = ("Hugging Face names on an {title} checkpoint: rwkv_np reads later versions with BlinkDL's names "
            "only (a .pth or .safetensors)")


def rename(name: str) -> str:
    """A Hugging Face tensor name -> BlinkDL's."""
    for pattern, repl in _RENAMES:
        name = re.sub(pattern, repl, name)
    return name


def has_hf_names(tensors) -> bool:
    return any(k.startswith("rwkv.") for k in tensors)


def adopt(contents: Contents) -> Contents:
    """Contents whose names are Hugging Face's: renamed, and RWKV-4 only."""
    if contents.format == "pth":
        contents.format = "hf-bin"
    contents.rename, contents.only, contents.only_why = rename, ONLY, ONLY_WHY
    return contents


def read_json(path: Path) -> object:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            raise CheckpointError(f"{path}: larger than {MAX_JSON_BYTES} bytes; not a config file")
        return json.loads(data.decode("utf-8"), parse_int=json_int)
    except CheckpointError:
        raise
    except BadFile as e:  # an integer of thousands of digits
        raise CheckpointError(f"{path}: has {e}; refusing it") from None
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: cannot read as JSON ({type(e).__name__}: {str(e)[:120]})") from None


def read_folder(folder: Path, stack: ExitStack, read_file: Callable[[Path, ExitStack], Contents]) -> Contents:
    """A Hugging Face model folder; read_file reads each weights file (its format told by its bytes)."""
    cfg_path = folder / "config.json"
    config = read_json(cfg_path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path}: not a JSON object")
    model_type = config.get("model_type")
    if isinstance(model_type, str) and re.fullmatch(r"rwkv[-_]?[5-9]", model_type):
        raise CheckpointError(f"{cfg_path}: model_type {model_type!r}: a Hugging Face conversion of a later "
                              "RWKV, which rwkv_np does not read; load the BlinkDL .pth (or a .safetensors "
                              "with BlinkDL's names) of the same model instead")
    if model_type not in (None, "rwkv"):
        raise CheckpointError(f"{cfg_path}: model_type {str(model_type)[:50]!r} is not 'rwkv' (RWKV-4)")
    for fmt, single, index in (("hf-safetensors", "model.safetensors", "model.safetensors.index.json"),
                               ("hf-bin", "pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            tensors = read_file(folder / single, stack).tensors
            break
        if (folder / index).is_file():
            tensors = _read_shards(folder / index, stack, read_file)
            break
    else:
        raise CheckpointError(f"{folder}: has config.json but neither model.safetensors nor "
                              "pytorch_model.bin (nor their .index.json shard lists)")
    eps = config.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise CheckpointError(f"{folder}: config.json layer_norm_epsilon {str(eps)[:50]} is not a small "
                              "positive number")
    claims = (("num_hidden_layers", "n_layer"), ("hidden_size", "n_embd"), ("attention_hidden_size", "n_embd"),
              ("vocab_size", "vocab_size"), ("intermediate_size", "ffn_dim"))
    contents = Contents(fmt, tensors, settings=lambda arch: {"layer_norm_eps": float(eps)},
                        claims=tuple((key, field, config[key]) for key, field in claims if config.get(key) is not None),
                        claims_from="config.json", tokenizer_dir=folder)
    return adopt(contents) if has_hf_names(tensors) else contents


def _read_shards(index_path: Path, stack: ExitStack, read_file) -> dict:
    index = read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index_path}: no weight_map of tensor name -> shard file")
    tensors: dict = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or shard in (".", ".."):  # shards live in the folder itself
            raise CheckpointError(f"{index_path}: shard {shard[:100]!r} is not a file name in the folder")
        if not (index_path.parent / shard).is_file():
            raise CheckpointError(f"{index_path}: shard {shard[:100]!r} is missing")
        part = read_file(index_path.parent / shard, stack).tensors
        for name in part.keys() & tensors.keys():
            raise CheckpointError(f"{index_path}: tensor {name!r} appears in two shards")
        tensors.update(part)
    return tensors
