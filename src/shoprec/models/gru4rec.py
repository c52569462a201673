"""GRU4Rec: a GRU over the clicks of a session, scoring items with an output item matrix.

Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks", ICLR 2016;
Hidasi & Karatzoglou, "Recurrent Neural Networks with Top-k Gains for Session-based
Recommendations", CIKM 2018; the official GRU4Rec implementation's README / paramfiles
(Hidasi & Czapp, "The Effect of Third Party Implementations on Reproducibility", RecSys 2023).

Choices, each from those sources:

* ``embedding = 0``: *constrained embedding* (the official default since v2.x): the output
  item matrix ``W_y`` is also the input embedding, so the input size is ``layers[-1]``.
  ``embedding > 0``: a separate learned input embedding of that size. (The official third
  option, one-hot input into the first GRU layer, is not implemented.)
* A stack of GRU layers (``layers``), dropout on the input embedding (``dropout_p_embed``) and
  on every GRU output (``dropout_p_hidden``); as in the official code the dropped-out output
  is also the state carried to the next step during training.
* The score of item ``i`` is ``h · W_y[i] + b_y[i]`` (output bias as in the official code).
  Training only scores the mini-batch columns (targets + sampled negatives, see
  :meth:`GRU4Rec.train_scores`); the final activation / loss live in ``training``.
* Weights: per-gate Glorot-uniform ``±sqrt(6 / (fan_in + fan_out))`` and zero biases, as the
  official ``init_parameter_matrix``.

This file depends on torch and the config base only; training lives in
``shoprec.training.regimes``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from shoprec.config import StrictModel
from shoprec.models.base import NeuralBundleMixin

__all__ = ["GRU4Rec", "GRU4RecConfig", "PrefixTrie", "prefix_trie"]


class GRU4RecConfig(StrictModel):
    """Model knobs; defaults are the official Diginetica paramfile (bpr-max, shared embedding).

    ``n_items = 0`` means "not set yet": fill it from the dataset before building the model.
    """

    name: Literal["gru4rec"] = "gru4rec"
    n_items: int = Field(default=0, ge=0)
    layers: list[int] = Field(default_factory=lambda: [512], min_length=1)
    embedding: int = Field(default=0, ge=0)  # 0 = constrained (input = output item weights)
    dropout_p_embed: float = Field(default=0.5, ge=0.0, lt=1.0)
    dropout_p_hidden: float = Field(default=0.3, ge=0.0, lt=1.0)


def _glorot_uniform_(tensor: torch.Tensor, fan_in: int, fan_out: int) -> None:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        tensor.uniform_(-bound, bound)


class GRU4Rec(NeuralBundleMixin):
    """The GRU4Rec network; implements :class:`shoprec.models.base.NextItemModel`."""

    name = "gru4rec"

    config_class = GRU4RecConfig
    config: GRU4RecConfig

    def __init__(self, config: GRU4RecConfig) -> None:
        super().__init__()
        if config.n_items < 1:
            raise ValueError("GRU4RecConfig.n_items must be set (>= 1) before building a model")
        self.config = config
        self.n_items = config.n_items
        rows = config.n_items + 1  # row 0 = padding, never trained
        d_out = config.layers[-1]
        self.constrained = config.embedding == 0
        d_in = d_out if self.constrained else config.embedding
        self.item_weight = nn.Parameter(torch.empty(rows, d_out))  # W_y (N+1, H)
        self.item_bias = nn.Parameter(torch.zeros(rows, 1))  # b_y (N+1, 1)
        self.input_embedding: nn.Parameter | None = None
        if not self.constrained:
            self.input_embedding = nn.Parameter(torch.empty(rows, d_in))  # (N+1, E)
        sizes = [d_in, *config.layers]
        self.cells = nn.ModuleList(
            nn.GRUCell(sizes[i], sizes[i + 1]) for i in range(len(config.layers))
        )
        # Set by the training regime: sparse gradients for the item matrices (Adagrad on rows).
        self.sparse_grad = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _glorot_uniform_(self.item_weight, self.item_weight.shape[0], self.item_weight.shape[1])
        nn.init.zeros_(self.item_bias)
        if self.input_embedding is not None:
            _glorot_uniform_(
                self.input_embedding, self.input_embedding.shape[0], self.input_embedding.shape[1]
            )
        for cell in self.cells:
            assert isinstance(cell, nn.GRUCell)
            h, d = cell.hidden_size, cell.input_size
            for g in range(3):  # reset, update, new gates: Glorot per gate block
                _glorot_uniform_(cell.weight_ih[g * h : (g + 1) * h], d, h)
                _glorot_uniform_(cell.weight_hh[g * h : (g + 1) * h], h, h)
            nn.init.zeros_(cell.bias_ih)
            nn.init.zeros_(cell.bias_hh)

    # --- state -------------------------------------------------------------------------------
    @property
    def hidden_sizes(self) -> list[int]:
        return list(self.config.layers)

    def init_hidden(
        self, batch_size: int, device: torch.device | None = None
    ) -> list[torch.Tensor]:
        """Zero state, one ``(B, H_l)`` tensor per layer."""
        dev = device if device is not None else self.item_weight.device
        return [torch.zeros(batch_size, h, device=dev) for h in self.config.layers]

    def _layers(self, x: torch.Tensor, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run one step of the GRU stack on embedded input ``x (B, E)``; dropout when training."""
        out: list[torch.Tensor] = []
        for layer, cell in enumerate(self.cells):
            x = cell(x, hidden[layer])  # (B, H_l)
            x = F.dropout(x, self.config.dropout_p_hidden, self.training)
            out.append(x)
        return out

    def step(self, inputs: torch.Tensor, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """One click per row: ``inputs (B,)`` item_idx, ``hidden`` per layer ``(B, H_l)``."""
        table = self.item_weight if self.input_embedding is None else self.input_embedding
        e = F.embedding(inputs, table)  # (B, E)
        e = F.dropout(e, self.config.dropout_p_embed, self.training)
        return self._layers(e, hidden)

    # --- training ----------------------------------------------------------------------------
    def train_scores(
        self, inputs: torch.Tensor, hidden: list[torch.Tensor], columns: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Scores of the mini-batch ``columns (C,)`` after one step; returns (scores, new state).

        ``inputs (B,)``; the item rows are looked up once for inputs and columns together when
        the embedding is constrained (as the official code); with ``sparse_grad`` the item
        matrices get sparse gradients (only the touched rows).
        """
        b = inputs.shape[0]
        if self.input_embedding is None:
            rows = F.embedding(
                torch.cat([inputs, columns]), self.item_weight, sparse=self.sparse_grad
            )  # (B + C, H)
            e, out_w = rows[:b], rows[b:]  # (B, H), (C, H)
        else:
            e = F.embedding(inputs, self.input_embedding, sparse=self.sparse_grad)  # (B, E)
            out_w = F.embedding(columns, self.item_weight, sparse=self.sparse_grad)  # (C, H)
        out_b = F.embedding(columns, self.item_bias, sparse=self.sparse_grad).squeeze(1)  # (C,)
        e = F.dropout(e, self.config.dropout_p_embed, self.training)
        new_hidden = self._layers(e, hidden)
        scores = torch.addmm(out_b, new_hidden[-1], out_w.T)  # (B, C)
        return scores, new_hidden

    # --- NextItemModel -----------------------------------------------------------------------
    def score_hidden(self, top: torch.Tensor) -> torch.Tensor:
        """Full-catalogue scores ``(B, N+1)`` from the top layer's state ``(B, H)``."""
        return self.score_columns(top, 0, self.n_items + 1)

    def score_columns(
        self, vectors: torch.Tensor, lo: int, hi: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Columns ``lo:hi`` of the scores from the top layer's state ``vectors (B, H)``:
        ``(B, hi - lo)``, a new contiguous tensor. The full catalogue is ``lo=0, hi=N+1``
        (:meth:`score_hidden`), so a block is computed by the same float32 product; column 0
        (padding) is ``-inf``. Evaluation scores the catalogue block by block
        (:mod:`shoprec.evaluation.evaluate`), so a block's output stays in the CPU cache;
        ``out``: a contiguous ``(B, hi - lo)`` tensor to write into."""
        bias, weight = self.item_bias.T[:, lo:hi], self.item_weight[lo:hi].T
        if out is None:
            scores = torch.addmm(bias, vectors, weight)
        else:
            scores = torch.addmm(bias, vectors, weight, out=out)
        if lo == 0 and hi > 0:
            scores[:, 0] = float("-inf")
        return scores

    @torch.no_grad()
    def score(self, prefixes: torch.Tensor) -> torch.Tensor:
        """Run the GRU from a zero state over each LEFT-padded prefix ``(B, T)``; ``(B, N+1)``.

        A padding position (item 0) leaves the state unchanged, so padding never changes the
        scores. No dropout and no autocast: scores are computed in full precision (ties matter
        for pessimistic ranking), whatever the module's mode or an enclosing autocast.
        """
        with torch.autocast(device_type=self.item_weight.device.type, enabled=False):
            return self.score_hidden(self.session_vectors(prefixes))

    @torch.no_grad()
    def session_vectors(self, prefixes: torch.Tensor) -> torch.Tensor:
        """The top layer's state ``(B, H)`` after each LEFT-padded prefix ``(B, T)``: the vector
        :meth:`score` multiplies with the item matrix (serving ranks with it, see
        :meth:`output_items`). Full precision, no dropout, as :meth:`score`.

        Prefixes that share a beginning share its steps: the batch's prefixes form a trie
        (:func:`prefix_trie`) and the GRU runs once per trie node, level by level, each level a
        batched step from the parents' states. An evaluation chunk holds the prefixes
        ``s[:1], s[:2], ...`` of each test session, so this costs one step per case instead
        of one per padded position (21.4 vs 1.1 per case on the Diginetica test set). A
        padding position (item 0) is skipped wherever it stands.
        """
        was_training = self.training
        device = self.item_weight.device
        if was_training:  # (a served model is in eval mode already: no per-call module walk)
            self.eval()
        try:
            with torch.autocast(device_type=device.type, enabled=False):
                trie = prefix_trie(prefixes.tolist())
                states = [torch.zeros(trie.n_nodes, h, device=device) for h in self.config.layers]
                items = torch.as_tensor(trie.items, dtype=torch.long, device=device)
                parents = torch.as_tensor(trie.parents, dtype=torch.long, device=device)
                for level in trie.levels:
                    nodes = torch.as_tensor(level, dtype=torch.long, device=device)
                    par = parents[nodes]
                    new = self.step(items[nodes], [s.index_select(0, par) for s in states])
                    for s, n in zip(states, new, strict=True):
                        s.index_copy_(0, nodes, n)
                rows = torch.as_tensor(trie.row_nodes, dtype=torch.long, device=device)
                return states[-1].index_select(0, rows)
        finally:
            if was_training:
                self.train()

    # --- serving -----------------------------------------------------------------------------
    def prepare_serving(self) -> None:
        """Serving: precompute the first layer's input gates of every item, ``(N+1, 3H_0)``
        float32 (``W_ih e_i + b_ih``; 265 MB for 43k items x 512 units), so that a click costs
        one matrix-vector product (``W_hh h``) instead of two. :meth:`advance` uses the table
        while the weights it came from are unchanged, and computes the gates per click
        otherwise."""
        first = self.cells[0]
        assert isinstance(first, nn.GRUCell)
        table = self.item_weight if self.input_embedding is None else self.input_embedding
        with torch.no_grad():
            gates = torch.empty(table.shape[0], first.weight_ih.shape[0], device=table.device)
            for lo in range(0, table.shape[0], 4096):
                hi = min(table.shape[0], lo + 4096)
                torch.addmm(first.bias_ih, table[lo:hi], first.weight_ih.T, out=gates[lo:hi])
        self._serving_gates = (gates, self._gate_sources())

    def _gate_sources(self) -> tuple[int, ...]:
        """Versions of the tensors the gate table is made of (in-place updates bump them)."""
        first = self.cells[0]
        assert isinstance(first, nn.GRUCell)
        table = self.item_weight if self.input_embedding is None else self.input_embedding
        return tuple(t._version for t in (table, first.weight_ih, first.bias_ih))

    def _first_gates(self, items: list[int]) -> torch.Tensor:
        """The first layer's input gates ``(n, 3H_0)`` of ``items``, one matrix-vector product
        per item (the table of :meth:`prepare_serving` holds the same up to float32 rounding)."""
        first = self.cells[0]
        assert isinstance(first, nn.GRUCell)
        table = self.item_weight if self.input_embedding is None else self.input_embedding
        return torch.stack([torch.addmv(first.bias_ih, first.weight_ih, table[i]) for i in items])

    @torch.no_grad()
    def advance(
        self,
        prefixes: torch.Tensor,
        hidden: list[torch.Tensor] | None = None,
        *,
        matrix_from: int = 0,
    ) -> list[torch.Tensor]:
        """Serving: the state per layer ``(B, H_l)`` after running the LEFT-padded ``prefixes
        (B, T)`` from ``hidden`` (the zero state when None; padding, item 0, is skipped).
        Inference only: no dropout, no autocast, whatever the module's mode.

        ``GRUCell``'s operations in its order, but one session at a time, with
        matrix-vector products: a row's result never depends on the other rows of the batch
        (a matrix product's bits do: MKL picks its kernel by the number of rows). So
        ``advance(p[:, j:], advance(p[:, :j]))`` equals ``advance(p)`` bit for bit, and a
        serving cache can resume a session from a stored state. A lone session also costs
        less this way (a matrix-vector product reads the weights once, without packing them).
        Against :meth:`session_vectors` the states agree up to float32 rounding.

        The loop (:func:`_advance_rows`) runs as TorchScript, which holds no GIL while it
        runs, so a service's event loop is not stalled by it; where TorchScript is unavailable
        the same function runs in Python (the same operations, the same bits, tested). The
        first layer's input gates come from the table of :meth:`prepare_serving`, or are
        computed for the batch's items when there is no (current) table.

        ``matrix_from > 0``: a batch of at least that many sessions runs each step for all of
        its sessions at once, as matrix products (:func:`_advance_matrix`): about half the
        cost for 8 sessions, but a row's bits then depend on the batch (MKL picks its kernel
        by the number of rows), so the states agree with the per-session ones only up to
        float32 rounding. 0 (the default) keeps every session on its own.
        """
        device = self.item_weight.device
        with torch.autocast(device_type=device.type, enabled=False):
            b = prefixes.shape[0]
            state = list(hidden) if hidden is not None else self.init_hidden(b, device)
            rows = [[i for i in items if i != 0] for items in prefixes.tolist()]
            cached = getattr(self, "_serving_gates", None)
            if cached is not None and cached[1] == self._gate_sources():
                table = cached[0]
            else:  # no (current) gate table: the gates of this batch's items, rows renumbered
                distinct = sorted({i for items in rows for i in items})
                table = self._first_gates(distinct) if distinct else torch.empty(0, device=device)
                position = {item: p for p, item in enumerate(distinct)}
                rows = [[position[i] for i in items] for items in rows]
            cells = [c for c in self.cells if isinstance(c, nn.GRUCell)]
            matrix = 0 < matrix_from <= sum(1 for items in rows if items)
            run = _scripted(_advance_matrix if matrix else _advance_rows)
            return run(
                rows,
                state,
                table,
                [c.weight_ih for c in cells],
                [c.bias_ih for c in cells],
                [c.weight_hh for c in cells],
                [c.bias_hh for c in cells],
            )

    def output_items(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W_y (N+1, H), b_y (N+1,))``: ``score = session_vectors @ W_y.T + b_y`` (column 0
        is then set to -inf)."""
        return self.item_weight.detach(), self.item_bias.detach().squeeze(1)


@dataclass(frozen=True)
class PrefixTrie:
    """The distinct prefixes of a batch of sessions. Node 0 is the empty prefix; node ``v``
    extends node ``parents[v]`` by ``items[v]``; ``levels[d - 1]`` lists the nodes of length
    ``d``; ``row_nodes[r]`` is the node of row ``r``'s whole prefix."""

    parents: list[int]
    items: list[int]
    levels: list[list[int]]
    row_nodes: list[int]

    @property
    def n_nodes(self) -> int:
        return len(self.parents)


def prefix_trie(rows: list[list[int]]) -> PrefixTrie:
    """The :class:`PrefixTrie` of ``rows`` (item lists; zeros, i.e. padding, are skipped).

    >>> t = prefix_trie([[0, 5, 7], [0, 0, 5], [5, 7, 9], [0, 0, 0]])
    >>> t.parents, t.items, t.levels, t.row_nodes
    ([0, 0, 1, 2], [0, 5, 7, 9], [[1], [2], [3]], [2, 1, 3, 0])
    """
    children: dict[tuple[int, int], int] = {}
    parents = [0]
    items = [0]
    levels: list[list[int]] = []
    row_nodes: list[int] = []
    for row in rows:
        node = 0
        depth = 0
        for item in row:
            if item == 0:
                continue
            key = (node, item)
            child = children.get(key)
            if child is None:
                child = len(parents)
                children[key] = child
                parents.append(node)
                items.append(item)
                if depth == len(levels):
                    levels.append([])
                levels[depth].append(child)
            node = child
            depth += 1
        row_nodes.append(node)
    return PrefixTrie(parents=parents, items=items, levels=levels, row_nodes=row_nodes)


def _advance_rows(
    rows: list[list[int]],
    state: list[torch.Tensor],
    gate_table: torch.Tensor,
    w_ih: list[torch.Tensor],
    b_ih: list[torch.Tensor],
    w_hh: list[torch.Tensor],
    b_hh: list[torch.Tensor],
) -> list[torch.Tensor]:
    """:meth:`GRU4Rec.advance`'s loop: each row's items (indices into ``gate_table``, the
    first layer's input gates ``(n, 3H_0)``) run one at a time from the row's ``state``,
    with matrix-vector products in ``torch.gru_cell``'s order of operations. Written for
    TorchScript (:func:`_scripted_advance`), whose interpreter releases the GIL and
    dispatches each operation for less than Python does; plain Python gives the same bits."""
    out = [h.clone() for h in state]
    for r in range(len(rows)):
        items = rows[r]
        if len(items) == 0:
            continue
        gates = gate_table[torch.tensor(items, dtype=torch.long, device=gate_table.device)]
        hs = [h[r] for h in state]
        for t in range(len(items)):
            x = gates[t]
            for layer in range(len(w_hh)):
                gi = x if layer == 0 else torch.addmv(b_ih[layer], w_ih[layer], x)
                gh = torch.addmv(b_hh[layer], w_hh[layer], hs[layer])
                x = _gru_update(gi, gh, hs[layer])
                hs[layer] = x
        for layer in range(len(hs)):
            out[layer][r] = hs[layer]
    return out


def _advance_matrix(
    rows: list[list[int]],
    state: list[torch.Tensor],
    gate_table: torch.Tensor,
    w_ih: list[torch.Tensor],
    b_ih: list[torch.Tensor],
    w_hh: list[torch.Tensor],
    b_hh: list[torch.Tensor],
) -> list[torch.Tensor]:
    """:func:`_advance_rows` for a batch at once: the rows, longest first, all start at step 0,
    and step ``t`` runs the rows that still have an item (a leading block, as the rows are
    sorted) as one matrix product per layer, in ``torch.gru_cell``'s order of operations.
    The same states up to float32 rounding: a matrix product's bits depend on its number of
    rows."""
    device = gate_table.device
    lengths = torch.tensor([len(items) for items in rows], dtype=torch.long)
    order = torch.argsort(lengths, descending=True, stable=True)  # longest first
    ranked_order: list[int] = order.tolist()
    ranked = [rows[r] for r in ranked_order]
    steps = len(ranked[0]) if len(ranked) > 0 else 0
    grid = torch.tensor(
        [items + [0] * (steps - len(items)) for items in ranked], dtype=torch.long, device=device
    ).view(len(ranked), steps)
    running: list[int] = (lengths.view(-1, 1) > torch.arange(steps)).sum(0).tolist()
    order = order.to(device)
    hs = [h.index_select(0, order) for h in state]  # (B, H) each, rows in ``ranked`` order
    for t in range(steps):
        k = running[t]  # rows 0..k-1 have an item at step t
        x = gate_table.index_select(0, grid[:k, t])  # (k, 3H_0)
        for layer in range(len(w_hh)):
            h = hs[layer][:k]  # (k, H)
            gi = x if layer == 0 else torch.addmm(b_ih[layer], x, w_ih[layer].t())
            gh = torch.addmm(b_hh[layer], h, w_hh[layer].t())  # (k, 3H)
            x = _gru_update(gi, gh, h)
            hs[layer][:k] = x
    out = [h.clone() for h in state]
    for layer in range(len(hs)):
        out[layer].index_copy_(0, order, hs[layer])
    return out


_SCRIPTED: dict[str, Callable[..., list[torch.Tensor]] | None] = {}  # name -> scripted or None


def _scripted(fn: Callable[..., list[torch.Tensor]]) -> Callable[..., list[torch.Tensor]]:
    """``fn`` compiled by TorchScript once per process (its interpreter holds no GIL while it
    runs), or ``fn`` itself where this torch cannot script it (TorchScript is deprecated; the
    same operations then run in Python, with the same bits)."""
    if fn.__name__ not in _SCRIPTED:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "torch.jit.script is deprecated"
                _SCRIPTED[fn.__name__] = torch.jit.script(fn)
        except Exception:  # any failure means: run it in Python
            _SCRIPTED[fn.__name__] = None
    return _SCRIPTED[fn.__name__] or fn


def _scripted_advance() -> Callable[..., list[torch.Tensor]] | None:
    """:func:`_advance_rows` compiled by TorchScript once per process, or None where this
    torch cannot (:meth:`GRU4Rec.advance` then runs the same operations in Python)."""
    _scripted(_advance_rows)
    return _SCRIPTED[_advance_rows.__name__]


def _gru_update(gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One GRU update from the input gates ``gi (..., 3H)`` and hidden gates ``gh (..., 3H)``
    (overwritten) of the state ``h (..., H)`` (one session, or a batch of them), in
    ``torch.gru_cell``'s order of operations: reset and update gates, new gate
    ``tanh(gi_n + r * gh_n)``, then ``(h - n) * z + n``."""
    hs = h.shape[-1]
    rz = gh[..., : 2 * hs].add_(gi[..., : 2 * hs]).sigmoid_()  # (..., 2H): reset, update
    n = gh[..., 2 * hs :].mul_(rz[..., :hs]).add_(gi[..., 2 * hs :]).tanh_()  # (..., H)
    return (h - n).mul_(rz[..., hs:]).add_(n)
