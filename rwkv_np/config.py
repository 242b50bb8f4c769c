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
        C, F, V, L = self.n_embd, self.ffn_dim, self.vocab_size, self.n_layer
        per_block = 4 * C * C + 2 * C * F + C * C + 4 * C + 3 * C + 2 * C + 2 * C
        return 2 * V * C + L * per_block + 2 * C + 2 * C
