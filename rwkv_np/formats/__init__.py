"""Readers of the on-disk checkpoint formats; each turns a file's bytes into {name: LazyTensor}."""

from ._common import BadFile, LazyTensor
from .rwkv_cpp import read_rwkv_cpp
from .safetensors_file import read_safetensors
from .torch_zip import read_torch_zip

__all__ = ["BadFile", "LazyTensor", "read_rwkv_cpp", "read_safetensors", "read_torch_zip"]
