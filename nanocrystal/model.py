"""RecipeTransformer: a set transformer over substance tokens and condition tokens, read by a CLS token."""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .config import Config
from .encode import Batch


class PeriodicEmbedding(nn.Module):
    """rtdl's PLR embedding of scalars (Gorishniy et al. 2022): sin/cos of learned frequencies, linear, ReLU.
    Lets the network resolve small differences in a temperature or an amount, which plain linear maps blur."""

    def __init__(self, n_features: int, d: int, n_frequencies: int = 16, sigma: float = 1.0):
        super().__init__()
        self.frequencies = nn.Parameter(torch.randn(n_features, n_frequencies) * sigma)
        self.linear = nn.Linear(2 * n_frequencies, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., n_features) -> (..., n_features, d)
        angles = 2 * torch.pi * x.unsqueeze(-1) * self.frequencies
        return torch.relu(self.linear(torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)))


class RecipeTransformer(nn.Module):
    """Tokens: [CLS] + one conditions token + one per substance (projected descriptor + amount embedding +
    reagent/product type); padding is masked out of attention. The heads read the CLS output together with the
    conditions again: within a recipe series only the conditions change, so they get a direct path to the output."""

    def __init__(self, cfg: Config, descriptors: torch.Tensor, n_conditions: int, n_shapes: int,
                 size_center: float = 0.0, size_scale: float = 1.0):
        super().__init__()
        self.size_center, self.size_scale = size_center, size_scale
        d = cfg.d_model
        # The descriptor table is a buffer: each step projects only the substances in the batch, once each.
        mean, std = descriptors[1:].mean(0), descriptors[1:].std(0).clamp_min(1e-3)
        normalised = (descriptors - mean) / std
        normalised[0] = 0.0  # PlaceHolder / unknown stays empty
        self.register_buffer("descriptors", normalised, persistent=False)
        self.descriptor_proj = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(descriptors.shape[1], d))
        if cfg.freeze_descriptors:
            self.descriptor_proj.requires_grad_(False)
        # a learned offset per substance, zero at start: lets the model tell apart substances whose descriptors
        # are close, without losing the descriptor's generalisation to substances seen rarely
        self.substance_offset = nn.Embedding(len(descriptors), d) if cfg.substance_embedding else None
        if self.substance_offset is not None:
            nn.init.zeros_(self.substance_offset.weight)
        if cfg.numeric_embedding == "periodic":
            self.amount_embed = nn.Sequential(PeriodicEmbedding(1, d), nn.Flatten(-2))
            self.condition_embed = nn.Sequential(PeriodicEmbedding(n_conditions, d), nn.Flatten(-2),
                                                 nn.Linear(n_conditions * d, d), nn.GELU(), nn.Linear(d, d))
        elif cfg.numeric_embedding == "mlp":
            self.amount_embed = nn.Sequential(nn.Linear(1, d), nn.GELU(), nn.Linear(d, d))
            self.condition_embed = nn.Sequential(nn.Linear(n_conditions, d), nn.GELU(), nn.Linear(d, d))
        else:
            raise ValueError(f"unknown numeric_embedding {cfg.numeric_embedding!r}; choose mlp or periodic")
        self.type_embed = nn.Embedding(2, d)  # reagent, product
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, cfg.n_heads, cfg.d_ffn, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.fuse = nn.Sequential(nn.Linear(2 * d, cfg.d_ffn), nn.GELU(), nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.d_ffn, d), nn.GELU())
        self.size_head = nn.Linear(d, 1)
        self.shape_head = nn.Linear(d, n_shapes)
        self.failed_head = nn.Linear(d, 1)

    def embed_substances(self, ids: torch.Tensor, drop_descriptor: torch.Tensor | None = None) -> torch.Tensor:
        unique, inverse = torch.unique(ids, return_inverse=True)
        projected = self.descriptor_proj(self.descriptors[unique])
        if self.substance_offset is not None:
            projected = projected + self.substance_offset(unique)
        projected = projected[inverse]
        if drop_descriptor is not None:  # masked-target pretraining hides some descriptors
            projected = projected * (~drop_descriptor).unsqueeze(-1)
        return projected

    def cls_embedding(self, batch: Batch, drop_descriptor: torch.Tensor | None = None) -> torch.Tensor:
        n = batch.substance_ids.shape[0]
        substances = (self.embed_substances(batch.substance_ids, drop_descriptor)
                      + self.amount_embed(batch.amounts.unsqueeze(-1)) + self.type_embed(batch.is_product.long()))
        conditions = self.condition_embed(batch.conditions)
        tokens = torch.cat([self.cls.expand(n, -1, -1), conditions.unsqueeze(1), substances], dim=1)
        keep = torch.ones(n, 2, dtype=torch.bool, device=tokens.device)
        padding = ~torch.cat([keep, batch.present], dim=1)
        # sequences this short run ~15% faster through the plain attention kernel than the fused ones on CPU
        with sdpa_kernel(SDPBackend.MATH) if tokens.device.type == "cpu" else nullcontext():
            hidden = self.encoder(tokens, src_key_padding_mask=padding)
        return self.fuse(torch.cat([self.norm(hidden[:, 0]), conditions], dim=1))

    def forward(self, batch: Batch, drop_descriptor: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        cls = self.cls_embedding(batch, drop_descriptor)
        return {
            "size": self.size_center + self.size_scale * self.size_head(cls).squeeze(-1),
            "shape": self.shape_head(cls),
            "failed": self.failed_head(cls).squeeze(-1),
        }
