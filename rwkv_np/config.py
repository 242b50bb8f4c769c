"""The shape of an RWKV-4 network."""

from dataclasses import dataclass


@dataclass(frozen=True)
class RWKVConfig:
    """Sizes of an RWKV-4 model, read off its weights.

    n_layer:    number of blocks
    n_embd:     channels C of the residual stream
    vocab_size: rows of the embedding and of the head
    ffn_dim:    hidden width of channel mixing (4 * n_embd in the released models)
    layer_norm_eps: LayerNorm epsilon (1e-5 in every RWKV-4 checkpoint)
    """

    n_layer: int
    n_embd: int
    vocab_size: int
    ffn_dim: int
    layer_norm_eps: float = 1e-5

    @property
    def n_params(self) -> int:
        from .schema import n_params

        return n_params(self)
