"""The checkpoint writers under their old name, for the scripts of benchmarks/ and experiments/ that import
`_writers` from this folder. The tests themselves use `helpers` (tests/helpers.py), where these live."""

__all__ = ["GGML_TYPE_IDS", "bf16_bits", "bf16_round", "encode", "expected_model_weights", "ggml_block_bytes",
           "ggml_quantize", "p_global", "p_int", "p_state_dict", "p_str", "p_tensor", "p_tuple", "rwkv_cpp_bytes",
           "rwkv_cpp_quantized_bytes", "safetensors_bytes", "tiny_weights", "to_hf_names", "torch_zip_members",
           "write_torch_zip", "write_zip", "zip_bytes"]

from helpers import (GGML_TYPE_IDS, bf16_bits, bf16_round, encode, expected_model_weights,  # noqa: F401
                     ggml_block_bytes, ggml_quantize, p_global, p_int, p_state_dict, p_str, p_tensor, p_tuple,
                     rwkv_cpp_bytes, rwkv_cpp_quantized_bytes, safetensors_bytes, tiny_weights, to_hf_names,
                     torch_zip_members, write_torch_zip, write_zip, zip_bytes)
