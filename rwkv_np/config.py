"""The shape of an RWKV network, of any version (rwkv_np.registry lists them)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class RWKVConfig:
    """Sizes of an RWKV model, read off its weights.

    n_layer:    number of blocks
    n_embd:     channels C of the residual stream
    vocab_size: rows of the embedding and of the head
    ffn_dim:    hidden width of channel mixing (4 * n_embd in the released models)
    layer_norm_eps: LayerNorm epsilon (1e-5 in every released checkpoint)
    version:    the architecture's name in rwkv_np.registry: "4", "5.1", "5.2", "6" or "7"
    From version 5 on (0 / () for RWKV-4):
    n_head, head_size: the attention width n_head * head_size split into heads (matrix state per head)
    ln_x_eps:   epsilon of ln_x, the per-head GroupNorm (it depends on the file's source: rwkv_np/rwkv5)
    lora:       the low-rank sizes, as ((name, rank), ...): RWKV-6 "Dm" (token shift), "Dd" (decay);
                RWKV-7 "Dw" (decay), "Da" (in-context rate), "Dv" (value residual), "Dg" (gate)
    """

    n_layer: int
    n_embd: int
    vocab_size: int
    ffn_dim: int
    layer_norm_eps: float = 1e-5
    version: str = "4"
    n_head: int = 0
    head_size: int = 0
    ln_x_eps: float = 0.0
    lora: tuple = ()

    @property
    def att_dim(self) -> int:
        """Width A of r, k, v (n_embd in RWKV-4; n_head * head_size after it)."""
        return self.n_head * self.head_size if self.n_head else self.n_embd

    def reference_options(self) -> dict:
        """The keyword arguments of the reference's forward/step that this config fixes (its epsilons)."""
        options = {"eps": self.layer_norm_eps}
        if self.n_head:
            options["ln_x_eps"] = self.ln_x_eps
        return options

    @property
    def dims(self) -> dict[str, int]:
        """The sizes the parameter tables are written in (rwkv_np.architecture.Param.shape)."""
        d = {"V": self.vocab_size, "C": self.n_embd, "L": self.n_layer, "A": self.att_dim, "F": self.ffn_dim}
        if self.n_head:
            d.update(H=self.n_head, N=self.head_size)
        d.update(dict(self.lora))
        return d
