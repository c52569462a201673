"""ChurnNet: a tabular multilayer perceptron that outputs the log-odds of churn.

Raw features go through ``sign(x) * log1p(|x|)`` (heavy-tailed counts and money; optional)
and a standardization whose mean / std are fitted on the training rows and stored as buffers,
so the saved tensors alone rebuild the exact scorer. The body is ``Linear -> ReLU ->
Dropout`` blocks and a final ``Linear(., 1)``; it is trained with binary cross-entropy on
the logits (see ``shoprec.churn.train``). Per-customer drivers use occlusion (Zeiler &
Fergus 2014) against the mean customer: a feature's contribution is the change in log-odds
when that feature alone is set to its training mean (standardized value 0).

An ensemble (``members > 1``, :meth:`ChurnNet.ensemble_of`) holds several such bodies that
share the standardization and averages their logits; it is still one module with one
``forward``, so scoring, occlusion and the bundle format are the same.

This module depends on torch only: no Lightning, no pickles. ``to_bundle`` gives a JSON-able
config plus a dict of tensors (``torch.save`` / ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["ChurnNet"]


def _mlp(width: int, hidden: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class _MeanOfMembers(nn.Module):
    """Mean of the members' outputs (logits)."""

    def __init__(self, members: list[nn.Sequential]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(z) for m in self.members]).mean(dim=0)


class ChurnNet(nn.Module):
    """MLP over standardized tabular features; ``forward`` returns churn logits ``(B,)``."""

    name = "churn_net"
    mean: torch.Tensor  # buffers: standardization of the (log-transformed) features
    std: torch.Tensor

    def __init__(
        self,
        feature_names: list[str],
        hidden: list[int] | tuple[int, ...] = (64, 32),
        dropout: float = 0.1,
        log_transform: bool = True,
        members: int = 1,
    ) -> None:
        super().__init__()
        self.feature_names = list(feature_names)
        self.hidden = [int(h) for h in hidden]
        self.dropout = float(dropout)
        self.log_transform = bool(log_transform)
        self.members = int(members)
        n = len(self.feature_names)
        if n == 0:
            raise ValueError("ChurnNet needs at least one feature")
        if self.members < 1:
            raise ValueError("ChurnNet needs at least one member")
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        self.body: nn.Module = (
            _mlp(n, self.hidden, self.dropout)
            if self.members == 1
            else _MeanOfMembers([_mlp(n, self.hidden, self.dropout) for _ in range(self.members)])
        )

    @classmethod
    def ensemble_of(cls, nets: list[ChurnNet]) -> ChurnNet:
        """One network averaging the logits of ``nets`` (single-member networks with the same
        features, architecture and standardization); a single net is returned as it is."""
        if not nets:
            raise ValueError("an ensemble needs at least one network")
        first = nets[0]
        if len(nets) == 1:
            return first
        for other in nets[1:]:
            same = (
                other.feature_names == first.feature_names
                and other.hidden == first.hidden
                and other.log_transform == first.log_transform
                and other.members == 1
                and torch.equal(other.mean, first.mean)
                and torch.equal(other.std, first.std)
            )
            if not same:
                raise ValueError("ensemble members must share features, layers and scaling")
        out = cls(first.feature_names, first.hidden, first.dropout, first.log_transform, len(nets))
        out.mean.copy_(first.mean)
        out.std.copy_(first.std)
        assert isinstance(out.body, _MeanOfMembers)
        for target, net in zip(out.body.members, nets, strict=True):
            target.load_state_dict(net.body.state_dict())
        out.eval()
        return out

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def _pre(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        return torch.sign(x) * torch.log1p(torch.abs(x)) if self.log_transform else x

    def set_standardization(self, x_train: torch.Tensor) -> None:
        """Fit the buffers ``mean`` / ``std`` on raw training features ``(N, F)``.

        A constant feature gets ``std = 1`` (its standardized value is then always 0).
        """
        pre = self._pre(x_train)
        mean = pre.mean(dim=0)
        std = pre.std(dim=0, unbiased=False)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        self.mean.copy_(mean)
        self.std.copy_(std)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw features ``(B, F)`` -> standardized inputs of the MLP."""
        return (self._pre(x) - self.mean) / self.std

    def forward_standardized(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(z).squeeze(-1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw features ``(B, F)`` -> churn logits ``(B,)``."""
        return self.forward_standardized(self.standardize(x))

    @torch.no_grad()
    def predict_logits(self, x: torch.Tensor, batch_size: int = 65_536) -> torch.Tensor:
        """Logits in eval mode (no dropout), batched; the module's mode is restored."""
        was_training = self.training
        self.eval()
        try:
            parts = [self(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
            return torch.cat(parts) if parts else torch.zeros(0)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def occlusion(self, x: torch.Tensor) -> torch.Tensor:
        """Contribution of each feature to each row's logit, ``(B, F)``.

        ``logit(z) - logit(z with z_j = 0)``: positive values push towards churn. Setting
        ``z_j = 0`` replaces feature ``j`` by the training mean (the "mean customer").
        """
        was_training = self.training
        self.eval()
        try:
            z = self.standardize(x)
            base = self.forward_standardized(z)
            out = torch.empty_like(z)
            for j in range(z.shape[1]):
                zj = z.clone()
                zj[:, j] = 0.0
                out[:, j] = base - self.forward_standardized(zj)
            return out
        finally:
            self.train(was_training)

    def to_bundle(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON-able config, tensors) that :meth:`from_bundle` rebuilds this model from."""
        config = {
            "name": self.name,
            "feature_names": self.feature_names,
            "hidden": self.hidden,
            "dropout": self.dropout,
            "log_transform": self.log_transform,
            "members": self.members,
        }
        tensors = {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}
        return config, tensors

    @classmethod
    def from_bundle(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> ChurnNet:
        model = cls(
            feature_names=list(config["feature_names"]),
            hidden=list(config["hidden"]),
            dropout=float(config["dropout"]),
            log_transform=bool(config["log_transform"]),
            members=int(config.get("members", 1)),
        )
        model.load_state_dict(tensors)
        model.eval()
        return model
