"""SASRec: causal self-attention over the clicks of a session.

Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018. Choices:

* Input: item embedding scaled by ``sqrt(d)`` (the authors' code) plus a learned positional
  embedding (Sec. III-B). Sequences are LEFT-padded and positions count from the end: the most
  recent item always gets position ``max_len - 1``, exactly as in the paper's fixed-length
  left-padded input, so a prefix scores the same whatever padding it comes with.
* Blocks: the paper's layout ``x + Dropout(g(LayerNorm(x)))`` (pre-LN, Sec. III-C/D, Eq. 4)
  for the self-attention (Q, K, V projections, no output projection, as the paper) and the
  point-wise two-layer ReLU feed-forward network; dropout on the input embedding, the attention
  weights and both residual branches; a final LayerNorm.
* Causality: position ``t`` attends to positions ``<= t`` whose item is not padding (every
  position also sees itself so a padded row stays finite; real positions never see padding).
* Output layer tied to the item embedding (Sec. III-E, "shared item embedding"): the score of
  item ``i`` at position ``t`` is ``F_t · M_i``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from shoprec.config import StrictModel
from shoprec.models.base import NeuralBundleMixin

__all__ = ["SASRec", "SASRecConfig"]


class SASRecConfig(StrictModel):
    """Model knobs. ``n_items = 0`` means "not set yet": fill it from the dataset.

    Defaults: 2 blocks and 1 head (the paper's choice), ``max_len = 50`` (the paper's setting
    for the sparse datasets), ``hidden = 64`` and dropout 0.2 (the paper uses 50 and 0.2-0.5).
    """

    name: Literal["sasrec"] = "sasrec"
    n_items: int = Field(default=0, ge=0)
    max_len: int = Field(default=50, ge=1)
    hidden: int = Field(default=64, ge=1)
    n_blocks: int = Field(default=2, ge=1)
    n_heads: int = Field(default=1, ge=1)
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)


class _Block(nn.Module):
    """One pre-LN self-attention block + point-wise feed-forward network."""

    def __init__(self, d: int, n_heads: int) -> None:
        super().__init__()
        if d % n_heads:
            raise ValueError(f"hidden={d} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.ln_attn = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.ln_ffn = nn.LayerNorm(d)
        self.ffn1 = nn.Linear(d, d)
        self.ffn2 = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, p: float) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(self.ln_attn(x))  # (B, T, 3D)
        qkv = qkv.view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, T, D/heads)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        a = a.transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        x = x + F.dropout(a, p, p > 0)
        f = self.ffn2(F.dropout(F.relu(self.ffn1(self.ln_ffn(x))), p, p > 0))  # (B, T, D)
        return x + F.dropout(f, p, p > 0)


class SASRec(NeuralBundleMixin):
    """The SASRec network; implements :class:`shoprec.models.base.NextItemModel`."""

    name = "sasrec"

    config_class = SASRecConfig
    config: SASRecConfig

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        if config.n_items < 1:
            raise ValueError("SASRecConfig.n_items must be set (>= 1) before building a model")
        self.config = config
        self.n_items = config.n_items
        d = config.hidden
        self.item_emb = nn.Embedding(config.n_items + 1, d, padding_idx=0)  # (N+1, D)
        self.pos_emb = nn.Embedding(config.max_len, d)  # (L, D)
        self.blocks = nn.ModuleList(_Block(d, config.n_heads) for _ in range(config.n_blocks))
        self.ln_out = nn.LayerNorm(d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        d = self.config.hidden
        with torch.no_grad():
            nn.init.normal_(self.item_emb.weight, std=d**-0.5)
            self.item_emb.weight[0].zero_()
            nn.init.normal_(self.pos_emb.weight, std=d**-0.5)
        for block in self.blocks:
            assert isinstance(block, _Block)
            for lin in (block.qkv, block.ffn1, block.ffn2):
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(B, T, D)`` of LEFT-padded ``inputs (B, T)`` (``T <= max_len``).

        Dropout is active when the module is in training mode.
        """
        t = inputs.shape[1]
        if t > self.config.max_len:
            raise ValueError(f"sequence width {t} exceeds max_len={self.config.max_len}")
        p = self.config.dropout if self.training else 0.0
        pos = torch.arange(self.config.max_len - t, self.config.max_len, device=inputs.device)
        x = self.item_emb(inputs) * math.sqrt(self.config.hidden) + self.pos_emb(pos)  # (B,T,D)
        x = F.dropout(x, p, p > 0)
        causal = torch.ones(t, t, dtype=torch.bool, device=inputs.device).tril()  # (T, T)
        eye = torch.eye(t, dtype=torch.bool, device=inputs.device)  # (T, T)
        allowed = (causal & (inputs != 0).unsqueeze(1)) | eye  # (B, T, T) query x key
        allowed = allowed.unsqueeze(1)  # (B, 1, T, T) broadcast over heads
        for block in self.blocks:
            x = block(x, allowed, p)
        return self.ln_out(x)  # (B, T, D)

    @property
    def output_weight(self) -> torch.Tensor:
        """The tied output item matrix ``(N+1, D)`` (row 0 = padding)."""
        return self.item_emb.weight

    @torch.no_grad()
    def session_vectors(self, prefixes: torch.Tensor) -> torch.Tensor:
        """The last position's output ``(B, D)`` of LEFT-padded ``prefixes (B, T)``: the vector
        :meth:`score` multiplies with the item matrix. Prefixes longer than ``max_len`` keep
        their last ``max_len`` items. No dropout and no autocast (full precision)."""
        was_training = self.training
        device = self.item_emb.weight.device
        self.eval()
        try:
            with torch.autocast(device_type=device.type, enabled=False):
                prefixes = prefixes.to(device)[:, -self.config.max_len :]
                last: torch.Tensor = self.encode(prefixes)[:, -1]  # (B, D)
                return last
        finally:
            self.train(was_training)

    def score_columns(
        self, vectors: torch.Tensor, lo: int, hi: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Columns ``lo:hi`` of the scores of the session vectors ``(B, D)``: ``(B, hi - lo)``,
        by the same float32 product as :meth:`score` (column 0, padding, is ``-inf``);
        ``out``: a contiguous ``(B, hi - lo)`` tensor to write into."""
        weight = self.item_emb.weight[lo:hi].T
        with torch.autocast(device_type=vectors.device.type, enabled=False):
            scores = vectors @ weight if out is None else torch.matmul(vectors, weight, out=out)
        if lo == 0 and hi > 0:
            scores[:, 0] = float("-inf")
        return scores

    def output_items(self) -> tuple[torch.Tensor, None]:
        """``(W (N+1, D), no bias)``: scores are ``session_vectors @ W.T``."""
        return self.item_emb.weight.detach(), None

    @torch.no_grad()
    def score(self, prefixes: torch.Tensor) -> torch.Tensor:
        """Full-catalogue scores ``(B, N+1)`` from the last position of LEFT-padded prefixes.

        Prefixes longer than ``max_len`` keep their last ``max_len`` items. No dropout and no
        autocast: scores are computed in full precision (ties matter for pessimistic ranking).
        """
        return self.score_columns(self.session_vectors(prefixes), 0, self.n_items + 1)
