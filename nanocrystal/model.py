"""The neural models: RecipeTransformer (the paper's model) and two baselines, RecipeMLP ("DNN") and RecipeLSTM.

All three share `RecipeModel`: the same substance tokens (projected descriptor + learned offset + amount embedding +
reagent/product type), the same conditions embedding and the same heads, which read the vector `cls_embedding`
returns. They differ only in how that vector is made from the tokens, so the engine, checkpoints, `predict` and the
report treat them alike. `MODELS` maps `Config.model` to the class.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils.rnn import pack_padded_sequence

from .config import Config
from .encode import Batch
from .recipes import NAME_COLUMNS

MAX_REAGENTS = len(NAME_COLUMNS)  # reagent slots of the recipe table (A..M)


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


def fusion(cfg: Config) -> nn.Sequential:
    """2d -> d: a recipe vector together with the conditions embedding again. Within a recipe series only the
    conditions change, so they get a direct path to the heads."""
    d = cfg.d_model
    return nn.Sequential(nn.Linear(2 * d, cfg.d_ffn), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.d_ffn, d),
                         nn.GELU())


class RecipeModel(nn.Module):
    """Inputs and heads shared by every neural model; a subclass adds its layers in `build` and defines
    `cls_embedding(batch, drop) -> (N, d)`. The attribute names and the initialisation order are those of the first
    RecipeTransformer: its saved checkpoints keep loading and its seeded runs give the same numbers."""

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
        self.descriptor_mean, self.descriptor_std = mean, std  # add_substances normalises new rows the same way
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
        self.build(cfg)  # before the heads: parameters are initialised in the order of the first RecipeTransformer
        self.size_head = nn.Linear(d, 1)
        self.shape_head = nn.Linear(d, n_shapes)
        self.failed_head = nn.Linear(d, 1)

    def add_substances(self, vectors: torch.Tensor) -> None:
        """Rows for substances the model never trained on (predict), appended to the vocabulary: normalised with the
        training table's mean and spread, with no learned offset (a zero one, as every offset starts)."""
        self.descriptors = torch.cat([self.descriptors, (vectors - self.descriptor_mean) / self.descriptor_std])
        if self.substance_offset is not None:
            weight = self.substance_offset.weight.detach()
            self.substance_offset = nn.Embedding.from_pretrained(
                torch.cat([weight, weight.new_zeros(len(vectors), weight.shape[1])]), freeze=True)

    def embed_substances(self, ids: torch.Tensor, drop_descriptor: torch.Tensor | None = None) -> torch.Tensor:
        if ids.is_cuda:  # every substance: torch.unique's size would be read back from the GPU, a wait per step
            unique, inverse = torch.arange(len(self.descriptors), device=ids.device), ids
        else:
            unique, inverse = torch.unique(ids, return_inverse=True)
        projected = self.descriptor_proj(self.descriptors[unique])
        if self.substance_offset is not None:
            projected = projected + self.substance_offset(unique)
        projected = projected[inverse]
        if drop_descriptor is not None:  # masked-target pretraining hides some descriptors
            projected = projected * (~drop_descriptor).unsqueeze(-1)
        return projected

    def substance_tokens(self, batch: Batch, drop_descriptor: torch.Tensor | None = None) -> torch.Tensor:
        """(N, S, d), one per slot of the batch; padding slots are not zero (callers mask or skip them)."""
        return (self.embed_substances(batch.substance_ids, drop_descriptor)
                + self.amount_embed(batch.amounts.unsqueeze(-1)) + self.type_embed(batch.is_product.long()))

    def build(self, cfg: Config) -> None:
        raise NotImplementedError

    def cls_embedding(self, batch: Batch, drop_descriptor: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: Batch, drop_descriptor: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        cls = self.cls_embedding(batch, drop_descriptor)
        return {
            "size": self.size_center + self.size_scale * self.size_head(cls).squeeze(-1),
            "shape": self.shape_head(cls),
            "failed": self.failed_head(cls).squeeze(-1),
        }


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout whose keep mask comes from 16-bit random integers, four from each 64-bit draw. On a CPU
    torch's dropout draws one 32-bit number per element and costs twice a 256-wide matrix product on the same
    activations; this draws a quarter as many. The drop rate is rounded to a multiple of 1/65536."""
    if not training or p == 0.0:
        return x
    bits = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-2 ** 63, None)
    keep = bits.view(torch.int16)[:x.numel()].view(x.shape) >= round(p * 65536) - 32768
    return x * (keep * (1.0 / (1.0 - p))).to(x.dtype)


def packed_encoder(encoder: nn.TransformerEncoder, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The pre-norm `encoder` over the real tokens only: (N, L, d) tokens, (N, L) keep (real tokens first in each
    row, the first one read out) -> (N, d) outputs of each row's first token. The same maths as the encoder with
    padding masked out, with less work:
    - its linear layers (nearly all of the work) skip the padding slots: a recipe has 5.8 substances on average in
      a batch padded to 11; only attention sees the padded layout (N, heads, L, d / heads);
    - the last layer computes only what the first token's output needs: keys and values of every token, the rest
      for the first token alone;
    - dropout draws its masks with `fast_dropout`.
    Dropout draws differ from the padded run's, so a seeded run with dropout differs from one without packing."""
    n, length, d = tokens.shape
    rows, slots = keep.nonzero(as_tuple=True)  # the real tokens, row by row
    first = torch.cumsum(keep.sum(1), 0) - keep.sum(1)  # each row's first token among the real ones
    padding = torch.zeros(n, 1, 1, length, dtype=tokens.dtype, device=tokens.device).masked_fill(
        ~keep[:, None, None, :], float("-inf"))
    x = tokens[rows, slots]  # (T, d)
    heads = encoder.layers[0].self_attn.num_heads
    head_width = d // heads

    def padded(values: torch.Tensor) -> torch.Tensor:  # (T, d) -> (N, heads, L, d / heads), zero at padding
        out = values.new_zeros(n, heads, length, head_width)
        out[rows, :, slots] = values.view(len(values), -1, head_width)
        return out

    for i, layer in enumerate(encoder.layers):
        attention, last = layer.self_attn, i == len(encoder.layers) - 1
        training = layer.training
        normed = layer.norm1(x)
        # one product per projection (not one of width 3d split after): the split's backward would stack the three
        # padded gradients into a new tensor
        weight, bias = attention.in_proj_weight.split(d), attention.in_proj_bias.split(d)
        key, value = (padded(nn.functional.linear(normed, w, b)) for w, b in zip(weight[1:], bias[1:]))
        if last:  # only the first token's output is read: its query alone
            query = nn.functional.linear(normed[first], weight[0], bias[0]).view(n, heads, 1, head_width)
        else:
            query = padded(nn.functional.linear(normed, weight[0], bias[0]))
        scores = torch.softmax(query @ key.transpose(-1, -2) * head_width ** -0.5 + padding, dim=-1)
        mixed = fast_dropout(scores, attention.dropout, training) @ value  # (N, heads, L or 1, d / heads)
        if last:
            x, mixed = x[first], mixed.reshape(n, d)
        else:
            mixed = mixed[rows, :, slots].reshape(-1, d)
        x = x + fast_dropout(attention.out_proj(mixed), layer.dropout1.p, training)
        inner = fast_dropout(layer.activation(layer.linear1(layer.norm2(x))), layer.dropout.p, training)
        x = x + fast_dropout(layer.linear2(inner), layer.dropout2.p, training)
    return x


class RecipeTransformer(RecipeModel):
    """Tokens: [CLS] + one conditions token + one per substance; padding is masked out of attention. The heads read
    the CLS output fused with the conditions embedding."""

    def build(self, cfg: Config) -> None:
        d = cfg.d_model
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, cfg.n_heads, cfg.d_ffn, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.fuse = fusion(cfg)
        self.pack_tokens = cfg.pack_tokens

    def cls_embedding(self, batch: Batch, drop_descriptor: torch.Tensor | None = None) -> torch.Tensor:
        n = batch.substance_ids.shape[0]
        substances = self.substance_tokens(batch, drop_descriptor)
        conditions = self.condition_embed(batch.conditions)
        tokens = torch.cat([self.cls.expand(n, -1, -1), conditions.unsqueeze(1), substances], dim=1)
        keep = torch.cat([torch.ones(n, 2, dtype=torch.bool, device=tokens.device), batch.present], dim=1)
        if self.pack_tokens and tokens.device.type == "cpu":
            cls = packed_encoder(self.encoder, tokens, keep)
        else:  # sequences this short run ~15% faster through the plain attention kernel than the fused ones on CPU
            with sdpa_kernel(SDPBackend.MATH) if tokens.device.type == "cpu" else nullcontext():
                cls = self.encoder(tokens, src_key_padding_mask=~keep)[:, 0]
        return self.fuse(torch.cat([self.norm(cls), conditions], dim=1))


class RecipeMLP(RecipeModel):
    """The paper's "DNN": an MLP on one fixed-length vector per recipe, [conditions embedding, product token,
    reagent token 1..MAX_REAGENTS], each d wide, absent reagents zero. Like the trees' vector (per-slot amount and
    descriptor, conditions, product descriptor), but the descriptor reduction is learned instead of a PCA, and the
    reagents are in slot order with empty slots skipped (the encoder packs present substances first)."""

    def build(self, cfg: Config) -> None:
        d, width = cfg.d_model, cfg.d_ffn
        layers: list[nn.Module] = [nn.Linear((MAX_REAGENTS + 2) * d, width), nn.GELU(), nn.Dropout(cfg.dropout)]
        for _ in range(cfg.depth - 1):
            layers += [nn.Linear(width, width), nn.GELU(), nn.Dropout(cfg.dropout)]
        self.trunk = nn.Sequential(*layers, nn.Linear(width, d), nn.GELU())

    def cls_embedding(self, batch: Batch, drop_descriptor: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.substance_tokens(batch, drop_descriptor)
        reagents = tokens * (batch.present & ~batch.is_product).unsqueeze(-1)
        # the batch keeps only as many slots as its fullest recipe: pad back to the fixed width (reagents come first,
        # so a product token in the last column is cut; it was zeroed just above)
        reagents = nn.functional.pad(reagents, (0, 0, 0, MAX_REAGENTS + 1 - reagents.shape[1]))[:, :MAX_REAGENTS]
        product = (tokens * batch.is_product.unsqueeze(-1)).sum(1)
        return self.trunk(torch.cat([self.condition_embed(batch.conditions), product, reagents.flatten(1)], dim=1))


class RecipeLSTM(RecipeModel):
    """An LSTM over the substance tokens in slot order (reagents, then the product token when used); its final
    state is fused with the conditions embedding, as in the transformer."""

    def build(self, cfg: Config) -> None:
        d = cfg.d_model
        self.lstm = nn.LSTM(d, d, num_layers=cfg.depth, batch_first=True, dropout=cfg.dropout if cfg.depth > 1 else 0)
        self.fuse = fusion(cfg)

    def cls_embedding(self, batch: Batch, drop_descriptor: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.substance_tokens(batch, drop_descriptor)
        # present substances come first in every row: a row's length is its count (a row with none reads one
        # padding token rather than nothing)
        lengths = batch.present.sum(1).clamp_min(1).cpu()
        _, (hidden, _) = self.lstm(pack_padded_sequence(tokens, lengths, batch_first=True, enforce_sorted=False))
        return self.fuse(torch.cat([hidden[-1], self.condition_embed(batch.conditions)], dim=1))


MODELS: dict[str, type[RecipeModel]] = {"transformer": RecipeTransformer, "mlp": RecipeMLP, "lstm": RecipeLSTM}
