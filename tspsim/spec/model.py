"""Model configurations: dense decoder-only transformers (design.md §1 "ModelConfig").

Presets by name (``tspsim list models``) or a YAML file with the same keys as :class:`ModelConfig`.
Parameter and FLOP counts follow the pre-norm decoder block of
reference/tensor-parallelism-analysis.md: attention with W_Q (H×H_q), W_K, W_V (H×H_kv), W_O
(H_q×H); a gated MLP with W_g, W_u (H×I) and W_d (I×H) or a plain MLP with W_1 (H×I), W_2 (I×H);
two norm weight vectors per block. Models with ``biases`` (Megatron GPT) add a bias to every linear
layer and to both LayerNorms; a learned absolute position-embedding table adds ``position_embeddings``·H.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from tspsim.core.errors import ConfigError
from tspsim.core.registry import Registry
from tspsim.core.yamlfile import describe_value, number_hint, read_yaml_file


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a dense decoder-only transformer."""

    name: str
    """Preset name or file stem."""
    hidden: int
    """Residual-stream width H (= h in tsp.md)."""
    layers: int
    """Decoder blocks L."""
    q_heads: int
    """Query heads h (n_h)."""
    kv_heads: int
    """Key/value heads h_kv (n_kv); GQA ratio g = q_heads / kv_heads."""
    head_dim: int
    """Per-head dimension d."""
    ffn_hidden: int
    """MLP intermediate width I (F·h in tsp.md)."""
    gated_mlp: bool
    """True: SwiGLU (W_g, W_u, W_d); False: GeLU MLP (W_1, W_2)."""
    vocab: int
    """Vocabulary size (embedding and LM-head rows)."""
    dtype_bytes: int = 2
    """Bytes per element s of weights and activations (2 = bf16)."""
    tied_embeddings: bool = False
    """True if the LM head reuses the embedding matrix."""
    default_seq: int = 131072
    """Sequence length used when ``--seq`` is not given."""
    source: str = ""
    """Where the numbers come from."""
    biases: bool = False
    """True: every linear layer has a bias and the norms are LayerNorms with a bias (Megatron GPT); False:
    no biases, RMSNorm weights only (Llama)."""
    position_embeddings: int = 0
    """Rows of a learned absolute position-embedding table (Megatron GPT: the maximum sequence length);
    0 for rotary position embeddings (no parameters)."""

    # ---------------------------------------------------------------------------- derived sizes
    @property
    def q_dim(self) -> int:
        """H_q = h·d."""
        return self.q_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """H_kv = h_kv·d."""
        return self.kv_heads * self.head_dim

    @property
    def gqa_ratio(self) -> float:
        """g = q_heads / kv_heads."""
        return self.q_heads / self.kv_heads

    @property
    def attn_params(self) -> int:
        """W_Q + W_K + W_V + W_O elements: H·H_q + 2·H·H_kv + H_q·H."""
        return 2 * self.hidden * self.q_dim + 2 * self.hidden * self.kv_dim

    @property
    def mlp_params(self) -> int:
        """3·H·I for a gated MLP, 2·H·I for a plain one."""
        return (3 if self.gated_mlp else 2) * self.hidden * self.ffn_hidden

    @property
    def norm_params(self) -> int:
        """Two norm weight vectors per block (and their biases with ``biases``)."""
        return 2 * self.hidden * (2 if self.biases else 1)

    @property
    def column_bias_params(self) -> int:
        """Biases of the column-parallel layers (QKV: H_q + 2H_kv; W_1, or W_g and W_u: I or 2I), sharded with them."""
        if not self.biases:
            return 0
        return self.q_dim + 2 * self.kv_dim + (2 if self.gated_mlp else 1) * self.ffn_hidden

    @property
    def row_bias_params(self) -> int:
        """Biases of the row-parallel layers (W_O and W_2 / W_d: H each), replicated across tensor parallelism."""
        return 2 * self.hidden if self.biases else 0

    @property
    def layer_params(self) -> int:
        """All parameters of one decoder block (W_layer of tsp.md §5 plus norms and biases)."""
        return self.attn_params + self.mlp_params + self.norm_params + self.column_bias_params + self.row_bias_params

    def layer_shard_params(self, shards: int) -> float:
        """Parameters of one block held by a rank when weights and column biases are split ``shards`` ways.

        Norms and row-parallel biases are replicated.
        """
        return ((self.attn_params + self.mlp_params + self.column_bias_params) / shards
                + self.norm_params + self.row_bias_params)

    @property
    def word_embedding_params(self) -> int:
        """Word embedding plus LM head (once if tied): the vocabulary-parallel parameters."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def replicated_embedding_params(self) -> int:
        """Position embeddings and the final norm (weight, and bias with ``biases``): replicated on every rank."""
        return self.position_embeddings * self.hidden + self.hidden * (2 if self.biases else 1)

    @property
    def embedding_params(self) -> int:
        """Embedding plus LM head (once if tied), position embeddings and the final norm."""
        return self.word_embedding_params + self.replicated_embedding_params

    def params_per_rank(self, shards: int) -> float:
        """Parameters a rank holds when every block and the vocabulary are split ``shards`` ways (TP, TSP).

        Blocks as :meth:`layer_shard_params`; the word embedding and LM head vocabulary-parallel; position
        embeddings and the final norm replicated.
        """
        return (self.layers * self.layer_shard_params(shards) + self.word_embedding_params / shards
                + self.replicated_embedding_params)

    @property
    def total_params(self) -> int:
        """Every parameter of the model."""
        return self.layers * self.layer_params + self.embedding_params

    def layer_fwd_flops(self, batch: int, seq: int, causal: bool = True) -> float:
        """Forward FLOPs of one block for ``batch`` sequences of ``seq`` tokens (GEMMs + attention).

        GEMMs: 2 FLOPs per multiply-add over the block's weights per token. Attention scores QKᵀ and
        P·V: 2·2·B·S²·H_q, halved for a causal mask (design.md rule 4).
        """
        tokens = batch * seq
        gemm = 2.0 * tokens * (self.attn_params + self.mlp_params)
        attn = 4.0 * batch * seq * seq * self.q_dim * (0.5 if causal else 1.0)
        return gemm + attn

    def to_json(self) -> dict[str, Any]:
        """All fields, for results.

        ``biases`` and ``position_embeddings`` appear only when set, so the hashes of models without them are
        unchanged.
        """
        out = asdict(self)
        for key, default in (("biases", False), ("position_embeddings", 0)):
            if out[key] == default:
                del out[key]
        return out

    @property
    def sha256(self) -> str:
        """Hash of the configuration (recorded with results)."""
        return hashlib.sha256(yaml.safe_dump(self.to_json(), sort_keys=True).encode()).hexdigest()


MODELS: Registry[ModelConfig] = Registry("model")
for _m in (
    ModelConfig("zyphra-7b", hidden=4096, layers=32, q_heads=32, kv_heads=32, head_dim=128, ffn_hidden=16384,
                gated_mlp=True, vocab=32000, default_seq=131072,
                source="TSP paper setup (tsp.md §7): h=4096, L=32, MHA 32 heads, head_dim 128, SwiGLU F=4, bf16; "
                       "vocabulary not stated, 32000 assumed; no biases, RMSNorm, rotary positions (Llama-style, "
                       "assumed)"),
    ModelConfig("llama3-8b", hidden=4096, layers=32, q_heads=32, kv_heads=8, head_dim=128, ffn_hidden=14336,
                gated_mlp=True, vocab=128256, default_seq=8192,
                source="Llama 3 8B (Meta's published configuration): GQA 32/8, SwiGLU 14336, vocabulary 128256, "
                       "untied embeddings, no biases, RMSNorm, rotary positions"),
    ModelConfig("llama3-70b", hidden=8192, layers=80, q_heads=64, kv_heads=8, head_dim=128, ffn_hidden=28672,
                gated_mlp=True, vocab=128256, default_seq=8192,
                source="Llama 3 70B (Meta's published configuration): GQA 64/8, SwiGLU 28672, vocabulary 128256, "
                       "untied embeddings, no biases, RMSNorm, rotary positions"),
    ModelConfig("megatron-22b", hidden=6144, layers=48, q_heads=64, kv_heads=64, head_dim=96, ffn_hidden=24576,
                gated_mlp=False, vocab=51200, default_seq=2048, tied_embeddings=True, biases=True,
                position_embeddings=2048,
                source="Korthikanti et al. 2022 (arXiv 2205.05198) 22B GPT as design.md §1 gives it: h=6144, L=48, "
                       "64 heads, GeLU MLP 4h, vocabulary 51200, sequence 2048; Megatron GPT architecture: tied "
                       "word embedding and LM head, learned absolute positions (2048 rows), LayerNorm and linear "
                       "biases"),
    ModelConfig("gpt3-175b", hidden=12288, layers=96, q_heads=96, kv_heads=96, head_dim=128, ffn_hidden=49152,
                gated_mlp=False, vocab=51200, default_seq=2048, tied_embeddings=True, biases=True,
                position_embeddings=2048,
                source="GPT-3 175B (Brown et al. 2020): h=12288, L=96, 96 heads of 128, context 2048, GeLU MLP 4h; "
                       "as Megatron GPT runs it: vocabulary padded to 51200, tied embeddings, learned positions, "
                       "LayerNorm and linear biases"),
    ModelConfig("megatron-1t", hidden=25600, layers=128, q_heads=160, kv_heads=160, head_dim=160, ffn_hidden=102400,
                gated_mlp=False, vocab=51200, default_seq=2048, tied_embeddings=True, biases=True,
                position_embeddings=2048,
                source="the 1T GPT of Narayanan et al. 2021 and Korthikanti et al. 2022 (arXiv 2104.04473 Table 1, "
                       "2205.05198 Table 5): h=25600, L=128, 160 heads (d=160), sequence 2048; Megatron GPT "
                       "architecture: GeLU MLP 4h, vocabulary 51200 (padded), tied embeddings, learned positions, "
                       "LayerNorm and linear biases"),
):
    MODELS.register(_m.name, _m)


_REQUIRED = ("hidden", "layers", "q_heads", "kv_heads", "head_dim", "ffn_hidden", "gated_mlp", "vocab")

LIMITS: dict[str, int] = {
    "hidden": 1 << 20, "layers": 1024, "q_heads": 1 << 14, "kv_heads": 1 << 14, "head_dim": 1 << 16,
    "ffn_hidden": 1 << 24, "vocab": 1 << 26, "dtype_bytes": 8, "default_seq": 1 << 30,
    "position_embeddings": 1 << 30,
}
"""Largest value of each whole-number key of a model file (far above real models; larger values are typos
that would make the op graph or the arithmetic explode)."""


def load_model(name_or_path: str) -> ModelConfig:
    """A preset by name, or a YAML file with ModelConfig keys.

    Raises:
        ConfigError: naming the file and key for unknown/missing keys, wrong types or bad values.
    """
    if name_or_path in MODELS:
        return MODELS.get(name_or_path)
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") and "/" not in name_or_path:
        raise ConfigError(f"unknown model {name_or_path!r}: choose one of {', '.join(MODELS.names())} "
                          "or give a YAML path")
    if not path.exists():
        raise ConfigError(f"model file {name_or_path!r} not found; give an existing path or a preset name")
    data = read_yaml_file(path, "model")
    if not isinstance(data, dict):
        got = "an empty file" if data is None else describe_value(data)
        raise ConfigError(f"{path}: a model file must be a YAML mapping of keys to values, got {got}")
    return model_from_mapping(data, str(path), path.stem)


def model_from_mapping(data: dict[Any, Any], where: str, default_name: str) -> ModelConfig:
    """Validate a mapping of ModelConfig keys (a model file, or a trace's recorded ``model_config``).

    Raises:
        ConfigError: ``WHERE: key: expected ..., got ...`` for unknown/missing keys, wrong types or bad values.
    """
    path = where
    allowed = {f.name: f for f in fields(ModelConfig)}
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{path}: unknown key {describe_value(key)}; allowed keys: {', '.join(allowed)}")
    for key in _REQUIRED:
        if key not in data:
            what = "true or false" if key == "gated_mlp" else "a positive whole number"
            raise ConfigError(f"{path}: missing key {key!r} ({what})")
    values: dict[str, Any] = {"name": default_name}
    for key, value in data.items():
        if key in ("name", "source"):
            if not isinstance(value, str) or (key == "name" and not value.strip()):
                raise ConfigError(f"{path}: {key}: expected text, got {describe_value(value)}; quote it, e.g. "
                                  f"{key}: \"my-model\"")
            values[key] = value
        elif key in ("gated_mlp", "tied_embeddings", "biases"):
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: {key}: expected true or false, got {describe_value(value)}")
            values[key] = value
        else:
            low = 0 if key == "position_embeddings" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                what = "a whole number ≥ 0" if low == 0 else "a positive whole number"
                raise ConfigError(f"{path}: {key}: expected {what}, got {describe_value(value)}"
                                  f"{number_hint(value)}")
            if value > LIMITS[key]:
                raise ConfigError(f"{path}: {key}: {describe_value(value)} is larger than the limit "
                                  f"{LIMITS[key]:,}; check the value")
            if key == "dtype_bytes" and value not in (1, 2, 4, 8):
                raise ConfigError(f"{path}: dtype_bytes: expected 1, 2, 4 or 8 (bytes per element), got {value}")
            values[key] = value
    model = ModelConfig(**values)
    if model.q_heads % model.kv_heads:
        raise ConfigError(f"{path}: q_heads ({model.q_heads}) must be a multiple of kv_heads ({model.kv_heads})")
    return model
