"""Small model definitions shared by tests that need a fast, valid model YAML."""

TINY_32_HEADS = """name: tiny
hidden: 512
layers: 2
q_heads: 32
kv_heads: 32
head_dim: 16
ffn_hidden: 2048
gated_mlp: true
vocab: 1000
"""
