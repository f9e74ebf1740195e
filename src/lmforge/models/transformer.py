"""GPT: a decoder-only Transformer, as nanoGPT and GPT-2 build it (and, with its options, as
Llama, Qwen2 and SmolLM do).

    x_0 = wte[idx] + wpe[position]                     (learned positions; or rotary, below)
    x   = x + attn(ln_1(x))    for each of n_layer blocks (pre-norm, causal self-attention)
    x   = x + mlp(ln_2(x))     mlp: Linear(D, 4D) → GELU → Linear(4D, D)
    logits = ln_f(x) @ wteᵀ    (the output matrix is the embedding matrix: weight tying)

The architecture options (:class:`TransformerConfig`): ``norm`` LayerNorm (GPT-2) or RMSNorm
(Llama); ``mlp`` exact GELU (nanoGPT), GPT-2's tanh GELU, or SwiGLU (Llama:
c_proj(silu(gate) · up), gate and up fused in one ``mlp.c_fc`` [D, 2H], gate first);
``n_kv_head`` < ``n_head`` for grouped-query attention (each key/value head serves
n_head / n_kv_head query heads; ``attn.c_attn`` is [D, D + 2·n_kv_head·head_size], the cache
holds n_kv_head heads); ``rope_theta``, the rotary base; ``bias`` and ``attn_bias`` (q/k/v
biases alone, as Qwen2). The defaults are GPT-2's, so older runs load unchanged.

Attention goes through ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory
efficient kernels where the device has them). Initialisation is GPT-2's: N(0, 0.02) for every
matrix, and N(0, 0.02/√(2·n_layer)) for the two projections that write into the residual
stream, so the loss at step 0 is ≈ ln I.

With ``position="rotary"`` there is no position table: queries and keys are rotated by their
absolute position (RoPE, Su et al. 2021), so attention scores depend on relative offsets only.

The carried ``state`` is the key/value cache (:class:`KVCache`): feeding a sequence in one call,
or a prompt and then one token at a time with the cache, gives the same logits. The module
names follow GPT-2 (``transformer.h.0.attn.c_attn`` ...), so a trained model exports to Hugging
Face's ``GPT2LMHeadModel`` as they are, with rotary positions to ``GPTNeoXForCausalLM``, and
with RMSNorm and SwiGLU to ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` (:mod:`lmforge.export`).

>>> model = build_model("transformer", vocab_size=65, n_layer=4, n_head=4, n_embd=128)
>>> logits, cache = model(torch.tensor([[1, 2, 3]]))          # [1, 3, 65], cache of 3
>>> logits, cache = model(torch.tensor([[4]]), cache)          # [1, 1, 65], cache of 4
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError, LmforgeError
from lmforge.models.base import LanguageModel, ModelConfig, register_model
from lmforge.models.ragged import RaggedKVCache

POSITIONS = ("learned", "rotary")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_tanh", "swiglu")
ROPE_BASE = 10000.0
HEAD_ROW_MULTIPLE = 16  # the transposed head copy's rows, padded: 64-byte aligned in float32


@dataclasses.dataclass
class TransformerConfig(ModelConfig):
    """The shape of a GPT. ``block_size`` is the longest context; ``bias`` adds biases to the
    linear layers and LayerNorms (GPT-2 has them), ``attn_bias`` to the query/key/value
    projection alone (None: as ``bias``; Qwen2 has them with no other bias); ``position`` is
    ``learned`` (GPT-2) or ``rotary`` (base ``rope_theta``); ``norm`` is ``layernorm`` or
    ``rmsnorm`` (epsilon ``norm_eps``); ``mlp`` is ``gelu``, ``gelu_tanh`` or ``swiglu`` with
    ``mlp_hidden`` units (None: 4·n_embd, or for SwiGLU the same parameter count, 8·n_embd/3
    rounded up to a multiple of 64); ``n_kv_head`` key/value heads (None: ``n_head``)."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    dropout: float = 0.0
    bias: bool = True
    tie_weights: bool = True
    position: str = "learned"
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"
    mlp_hidden: int | None = None
    n_kv_head: int | None = None
    rope_theta: float = ROPE_BASE
    attn_bias: bool | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"--n-embd {self.n_embd} is not a multiple of --n-head {self.n_head}; "
                "choose sizes where n_embd / n_head is a whole number"
            )
        if self.position == "rotary" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(
                f"rotary positions need an even head size, got n_embd / n_head = "
                f"{self.n_embd // self.n_head}; change --n-embd or --n-head"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.position not in POSITIONS:
            raise ConfigError(f"--position must be learned or rotary, not {self.position!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"--norm must be layernorm or rmsnorm, not {self.norm!r}")
        if self.mlp not in MLPS:
            raise ConfigError(f"--mlp must be gelu, gelu_tanh or swiglu, not {self.mlp!r}")
        for name in ("mlp_hidden", "n_kv_head"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.n_head % self.kv_heads:
            raise ConfigError(
                f"--n-head {self.n_head} is not a multiple of --n-kv-head {self.kv_heads}; "
                "choose key/value heads that divide the query heads (e.g. 1 or n_head)"
            )
        for name in ("norm_eps", "rope_theta"):
            if not getattr(self, name) > 0:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}"
                )

    @property
    def head_size(self) -> int:
        """n_embd / n_head."""
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads: ``n_kv_head``, or ``n_head`` when unset."""
        return self.n_kv_head if self.n_kv_head is not None else self.n_head

    @property
    def mlp_width(self) -> int:
        """The MLP's hidden units H: ``mlp_hidden``, else 4·n_embd (GELU) or 8·n_embd/3
        rounded up to a multiple of 64 (SwiGLU: its 3 matrices then hold about as many
        weights as GELU's 2).

        >>> TransformerConfig(vocab_size=1, n_embd=192, mlp="swiglu").mlp_width
        512
        """
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            return -(-8 * self.n_embd // (3 * 64)) * 64
        return 4 * self.n_embd

    @property
    def qkv_bias(self) -> bool:
        """Whether the query/key/value projection has biases (``attn_bias``, else ``bias``)."""
        return self.bias if self.attn_bias is None else self.attn_bias


class KVCache:
    """The keys and values of every layer for the tokens seen so far: the Transformer's state.

    ``keys[i]`` and ``values[i]`` are [B, n_kv_head, capacity, head_size] buffers of layer ``i``
    whose first ``length`` positions are filled. A model call reads positions ``0..length``
    and writes the new ones in place (buffers grow by doubling, up to the block size), then
    advances ``length``: the cache passed in is updated and returned, so keep using the
    returned one (as with Hugging Face's caches, an old state cannot be branched from).
    """

    def __init__(self, n_layer: int, block_size: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.length = 0
        self.block_size = block_size

    @property
    def batch_size(self) -> int:
        """B, the number of sequences cached (0 while empty)."""
        first = self.keys[0]
        return 0 if first is None else first.shape[0]

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys and values [B, H, T, D] of ``layer`` after the first ``length``
        positions; return all of them so far, [B, H, length + T, D]."""
        start, end = self.length, self.length + k.shape[2]
        old_k, old_v = self.keys[layer], self.values[layer]
        if old_k is None or old_v is None:  # a fresh cache keeps the tensors as they are
            self.keys[layer], self.values[layer] = k, v
            return k, v
        if old_k.shape[2] < end:  # grow: double, at most the block size
            capacity = min(max(2 * old_k.shape[2], end, 64), max(self.block_size, end))
            old_k, old_v = self._grown(old_k, start, capacity), self._grown(old_v, start, capacity)
            self.keys[layer], self.values[layer] = old_k, old_v
        old_k[:, :, start:end] = k
        old_v[:, :, start:end] = v
        return old_k[:, :, :end], old_v[:, :, :end]

    @staticmethod
    def _grown(buffer: torch.Tensor, filled: int, capacity: int) -> torch.Tensor:
        b, h, _, d = buffer.shape
        grown = buffer.new_empty(b, h, capacity, d)
        grown[:, :, :filled] = buffer[:, :, :filled]
        return grown


class Conv1D(nn.Module):
    """A linear layer y = x·W + b with W stored [in, out], as GPT-2 stores it (its code calls
    this layer Conv1D). It computes what ``nn.Linear`` does, whose W is [out, in]; this layout
    makes the one-token matrix-vector products of cached generation about 10 % faster on a CPU
    (rows of W are streamed in order), and training is as fast.

    >>> Conv1D(3, 2, bias=True).weight.shape
    torch.Size([3, 2])
    """

    def __init__(self, n_in: int, n_out: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.t(), self.bias)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused query/key/value projection; with
    ``n_kv_head`` < ``n_head``, grouped-query attention (the keys and values are narrower)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.kv_heads
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        kv_width = config.kv_heads * config.head_size
        self.qk_v_split = [config.n_embd + kv_width, kv_width]
        self.c_attn = Conv1D(config.n_embd, config.n_embd + 2 * kv_width, bias=config.qkv_bias)
        self.c_proj = Conv1D(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | RaggedKVCache,
        layer: int,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        b, t, c = x.shape
        head = c // self.n_head
        qk, v = self.c_attn(x).split(self.qk_v_split, dim=2)
        qk = qk.view(b, t, self.n_head + self.n_kv_head, head).transpose(1, 2)
        if rotary is not None:  # queries and keys in one go
            qk = apply_rotary(qk, *rotary)
        q, k = qk.split([self.n_head, self.n_kv_head], dim=1)  # [B, H, T, D], [B, H_kv, T, D]
        v = v.view(b, t, self.n_kv_head, head).transpose(1, 2)
        past = cache.length
        k, v = cache.update(layer, k, v)
        dropout = self.dropout if self.training else 0.0
        grouped = {"enable_gqa": True} if self.n_kv_head != self.n_head else {}
        if isinstance(cache, RaggedKVCache):  # rows of different lengths: each its own keys
            if grouped and t == 1:  # the query heads of a group as rows, as below
                rows = q.reshape(b, self.n_kv_head, self.n_head // self.n_kv_head, head)
                y = cache.attend(rows, k, v).view(b, self.n_head, 1, head)
            elif grouped:
                y = attention(q, k, v, attn_mask=cache.mask, dropout_p=dropout, **grouped)
            else:
                y = cache.attend(q, k, v)
        elif past == 0:
            y = attention(q, k, v, dropout_p=dropout, is_causal=t > 1, **grouped)
        elif t == 1 and grouped:  # the query heads of a group as rows: no copies of k and v
            rows = q.reshape(b, self.n_kv_head, self.n_head // self.n_kv_head, head)
            y = attention(rows, k, v, dropout_p=dropout).view(b, self.n_head, 1, head)
        elif t == 1:  # one new token sees every cached one
            y = attention(q, k, v, dropout_p=dropout)
        else:  # several new tokens after a cache: causal with an offset
            keys = torch.arange(past + t, device=x.device)
            queries = torch.arange(past, past + t, device=x.device)
            mask = keys[None, :] <= queries[:, None]
            y = attention(q, k, v, attn_mask=mask, dropout_p=dropout, **grouped)
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.resid_dropout(self.c_proj(y))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **options: object) -> torch.Tensor:
    """``F.scaled_dot_product_attention``. Training on a CPU in bfloat16, it runs in float32:
    PyTorch's CPU flash-attention backward is ~5× slower in bfloat16 than in float32, while the
    attention is a small share of the arithmetic (the matrix products stay in bfloat16)."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled():
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **options)
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, **options)


class MLP(nn.Module):
    """Linear(D, H) → GELU → Linear(H, D) → dropout, H = 4D by default. The GELU is exact (as
    nanoGPT) or GPT-2's tanh form (``gelu_tanh``; they differ by < 1e-3). With ``swiglu`` (as
    Llama), ``c_fc`` makes the gate and the up projection side by side [D, 2H] and the
    hidden units are silu(gate) · up."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        hidden = config.mlp_width
        self.gated = config.mlp == "swiglu"
        self.c_fc = Conv1D(config.n_embd, 2 * hidden if self.gated else hidden, config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.mlp == "gelu_tanh" else "none")
        self.c_proj = Conv1D(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = self.gelu(h)
        return self.dropout(self.c_proj(h))


class RMSNorm(nn.Module):
    """x / √(mean(x²) + eps) · weight, computed in float32 (as Llama) and returned in x's
    dtype.

    >>> RMSNorm(2, eps=0.0)(torch.tensor([3.0, 4.0]))     # √(mean) = √12.5
    tensor([0.8485, 1.1314], grad_fn=<...>)
    """

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        y = F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps)
        return y.to(x.dtype)


def make_norm(config: TransformerConfig) -> nn.Module:
    """The normalisation ``config.norm`` names: LayerNorm (with biases if ``config.bias``) or
    RMSNorm (never biases), of width n_embd."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


class Block(nn.Module):
    """A pre-norm Transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | RaggedKVCache,
        layer: int,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, rotary)
        return x + self.mlp(self.ln_2(x))


def padded_transpose(matrix: torch.Tensor, multiple: int) -> torch.Tensor:
    """matrix [R, C] transposed into a contiguous [C, R'] whose rows are zero-padded to R', the
    next multiple of ``multiple``.

    >>> padded_transpose(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), 4)
    tensor([[1., 3., 5., 0.],
            [2., 4., 6., 0.]])
    """
    rows, columns = matrix.shape
    out = matrix.new_zeros(columns, -(-rows // multiple) * multiple)
    out[:, :rows] = matrix.t()
    return out


def rotary_tables(
    head_size: int, length: int, base: float = ROPE_BASE
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position · θ_i for positions 0..length-1, θ_i = base^(-2i/head_size),
    each [length, head_size] (the half-size table repeated twice, to match
    :func:`apply_rotary`).

    >>> cos, sin = rotary_tables(4, 3); cos[0].tolist(), sin[1, 0].item()
    ([1.0, 1.0, 1.0, 1.0], 0.8414...)
    """
    inv_freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x_i, x_{i+D/2}) of each head vector [..., T, D] by the angles of its
    position: x·cos + rotate_half(x)·sin (the GPT-NeoX / Llama layout).

    >>> apply_rotary(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]),
    ...              torch.tensor([[1.0, 1.0]]))     # a quarter turn
    tensor([[0., 1.]])
    """
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


@register_model("transformer")
class TransformerLM(LanguageModel):
    """A GPT language model; its state is a :class:`KVCache`."""

    family = "transformer"
    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        parts = {
            "wte": nn.Embedding(config.vocab_size, config.n_embd),
            "drop": nn.Dropout(config.dropout),
            "h": nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            "ln_f": make_norm(config),
        }
        if config.position == "learned":
            parts["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(parts)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.position == "rotary":
            cos, sin = rotary_tables(config.head_size, config.block_size, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale the residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        self._head_copy: tuple[tuple, torch.Tensor] | None = None

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | Conv1D):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def max_context(self) -> int:
        return self.config.block_size

    def train(self, mode: bool = True) -> TransformerLM:
        # fused optimizers update weights in place without bumping their version counter, so
        # the transposed head copy is made again after a switch between training and eval;
        # eval() on a model already in eval mode (every generate call) keeps it: making it
        # costs ~0.4 s for GPT-2's head, as much as a dozen decoding steps
        if mode != self.training:
            self._head_copy = None
        return super().train(mode)

    def forward(
        self,
        idx: torch.Tensor,
        state: KVCache | RaggedKVCache | None = None,
        return_hidden: bool = False,
    ) -> tuple[torch.Tensor, KVCache | RaggedKVCache]:
        """Logits [B, T, I] for ``idx`` [B, T] following the ``state`` cache (None: empty);
        the cache, extended by these T tokens, comes back as the new state. With
        ``return_hidden`` the inputs of the output head [B, T, D] instead of the logits.
        A :class:`RaggedKVCache` state continues each row at its own position."""
        b, t = idx.shape
        if torch.is_grad_enabled() and self._head_copy is not None:
            self._head_copy = None  # a training step may follow: its update outdates the copy
        cache = state if state is not None else KVCache(self.config.n_layer, self.max_context)
        if isinstance(cache, RaggedKVCache):
            return self._forward_ragged(idx, cache, return_hidden)
        start = cache.length
        if start + t > self.config.block_size:
            raise LmforgeError(
                f"{start + t} tokens exceed the model's block size {self.config.block_size}; "
                f"give it at most the last {self.config.block_size} tokens"
            )
        if start and cache.batch_size != b:
            raise LmforgeError(
                f"the cache holds {cache.batch_size} sequence(s) but {b} were given; "
                "continue the same batch or start with state=None"
            )
        x = self.transformer.wte(idx)
        rotary = None
        if self.config.position == "learned":
            x = x + self.transformer.wpe(torch.arange(start, start + t, device=idx.device))
        else:
            rotary = (self.rope_cos[start : start + t], self.rope_sin[start : start + t])
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer, rotary)
        cache.length = start + t
        x = self.transformer.ln_f(x)
        return (x if return_hidden else self._logits(x)), cache

    def _forward_ragged(
        self, idx: torch.Tensor, cache: RaggedKVCache, return_hidden: bool
    ) -> tuple[torch.Tensor, RaggedKVCache]:
        """:meth:`forward` with each row at its own position (batched decoding)."""
        if cache.batch_size != idx.shape[0]:
            raise LmforgeError(
                f"the cache holds {cache.batch_size} sequence(s) but {idx.shape[0]} were given"
            )
        positions = cache.advance(idx.shape[1])  # [B, T]
        x = self.transformer.wte(idx)
        rotary = None
        if self.config.position == "learned":
            x = x + self.transformer.wpe(positions)
        else:  # [B, 1, T, D]: broadcast over the heads
            rotary = (self.rope_cos[positions][:, None], self.rope_sin[positions][:, None])
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer, rotary)
        x = self.transformer.ln_f(x)
        return (x if return_hidden else self._logits(x)), cache

    def output_head(self) -> nn.Linear:
        return self.lm_head

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """x · Wᵀ with the output matrix W [I, D]. To decode a few rows on a CPU without
        gradients it multiplies by a transposed copy [D, I] instead, kept beside W and made
        again whenever W changes: a vector times a [D, I] matrix streams it about 1.8× faster
        than times the [I, D] one (for GPT-2 124M, the head is a third of each step's reads).
        The copy's rows are padded with zeros to a multiple of 16 entries (64 bytes in float32),
        which streams ~10 % faster when I is odd (GPT-2's 50,257); the padding's logits are
        cut off.
        """
        weight = self.lm_head.weight
        rows = x.shape[0] * x.shape[1]
        if torch.is_grad_enabled() or x.device.type != "cpu" or rows > 64 or weight.is_inference():
            return self.lm_head(x)
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.shape)
        if self._head_copy is None or self._head_copy[0] != key:
            self._head_copy = (key, padded_transpose(weight.detach(), HEAD_ROW_MULTIPLE))
        return (x @ self._head_copy[1])[..., : weight.shape[0]]

    def embedding_weight(self) -> torch.Tensor:
        return self.transformer.wte.weight
