"""Small model definitions shared by tests that need a fast, valid model YAML."""


def tiny_32_heads(layers: int = 2, default_seq: int | None = None) -> str:
    """YAML of a 512-wide, 32-head MHA model with ``layers`` blocks (and ``default_seq`` if given)."""
    text = f"""name: tiny
hidden: 512
layers: {layers}
q_heads: 32
kv_heads: 32
head_dim: 16
ffn_hidden: 2048
gated_mlp: true
vocab: 1000
"""
    return text + (f"default_seq: {default_seq}\n" if default_seq is not None else "")


TINY_32_HEADS = tiny_32_heads()
"""Two blocks, no default sequence length."""
