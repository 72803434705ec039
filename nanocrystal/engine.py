"""One training loop for every task and neural model: losses, weak-row band, EMA, schedule, pretraining, ensembles."""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config
from .encode import Batch
from .recipes import MAX_EVAL_SIZE_NM


def size_loss(pred_nm: torch.Tensor, batch: Batch, cfg: Config) -> torch.Tensor:
    """Huber on size in nm over rows with 0 < size <= 20 nm. A weak row already within `weak_band` of its label
    contributes nothing; the mean is over contributing rows."""
    target = batch.size_nm
    has_size = (target > 0) & (target <= MAX_EVAL_SIZE_NM)
    per_row = F.huber_loss(pred_nm, target.clamp_min(0), reduction="none", delta=cfg.huber_delta)
    within_band = (pred_nm - target).abs() <= cfg.weak_band * target
    contributes = has_size & ~(batch.weak & within_band)
    weight = torch.where(batch.weak, cfg.weak_weight, 1.0) * contributes
    return (per_row * weight).sum() / contributes.sum().clamp_min(1)


def shape_loss(logits: torch.Tensor, failed_logit: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Cross-entropy over the shapes on non-failed rows (0 if none) + BCE of the failed logit on every row. The failed
    rows are ignored, not cut out: no data-dependent shape, so no wait for the GPU."""
    n_shapes = logits.shape[1]
    failed = batch.shape == n_shapes
    ce = F.cross_entropy(logits, batch.shape.masked_fill(failed, -100), ignore_index=-100)
    ce = torch.where(failed.all(), logits.sum() * 0, ce)  # all rows failed: the mean over none is NaN
    return ce + F.binary_cross_entropy_with_logits(failed_logit, failed.float())


def known_shape_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Cross-entropy over the shapes on the rows with a known shape (0 if none): the size task's second target."""
    known = (batch.shape >= 0) & (batch.shape < logits.shape[1])
    ce = F.cross_entropy(logits, batch.shape.masked_fill(~known, -100), ignore_index=-100)
    return torch.where(known.any(), ce, logits.sum() * 0)


def task_loss(out: dict[str, torch.Tensor], batch: Batch, cfg: Config) -> torch.Tensor:
    if cfg.task == "size":
        loss = size_loss(out["size"], batch, cfg)
        if cfg.shape_aux_weight > 0:
            loss = loss + cfg.shape_aux_weight * known_shape_loss(out["shape"], batch)
        return loss
    return shape_loss(out["shape"], out["failed"], batch)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up, then cosine down to a tenth of the peak rate."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def descriptor_mask(batch: Batch, rate: float, generator: torch.Generator,
                    device_generator: torch.Generator) -> torch.Tensor:
    """Masked-target pretraining: with probability 0.5 hide the product descriptor of ~`rate` of the rows,
    otherwise hide one random present slot per row. The coin comes from `generator` (on the CPU), the rows' draws from
    `device_generator` (the batch's device; the same generator on a CPU), so nothing is read back from a GPU."""
    n, slots = batch.present.shape
    device = batch.present.device
    if torch.rand(1, generator=generator).item() < 0.5:
        mask = batch.is_product & (torch.rand(n, 1, generator=device_generator, device=device) < rate)
    else:
        scores = torch.rand(n, slots, generator=device_generator, device=device).masked_fill(~batch.present, -1.0)
        mask = F.one_hot(scores.argmax(1), slots).bool()
    return mask & batch.present


class EMA:
    """Exponential moving average of a model's parameters and buffers: torch's AveragedModel with
    get_ema_multi_avg_fn(decay) and use_buffers (the same arithmetic: a copy at the first update, then lerp), but its
    update count lives on the host; AveragedModel keeps it on the device and reads it back, a wait for the GPU at every
    step. `module` holds the averaged weights."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [*model.parameters(), *model.buffers()]
        if self.updates == 0:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)
        else:
            floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1 - self.decay)
            for a, c in zip(averaged, current):
                if not a.is_floating_point():
                    a.copy_(a * self.decay + c * (1 - self.decay))
        self.updates += 1


def make_optimizer(model: torch.nn.Module, cfg: Config, steps_per_epoch: int, epochs: int):
    """AdamW with linear warm-up + cosine over `epochs`."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_epochs * steps_per_epoch, total))
    return optimizer, scheduler


def train_step(model: torch.nn.Module, ema: EMA, optimizer, scheduler, batch: Batch, cfg: Config,
               drop: torch.Tensor | None = None) -> torch.Tensor:
    """One optimisation step and EMA update; returns the loss without reading it back: nothing in the step waits for
    a GPU. With --mixed_precision on a GPU, the forward pass and loss run in bfloat16 autocast (weights, gradients and
    the optimizer stay float32; bfloat16 needs no loss scaling); a CPU step is plain float32."""
    device = batch.size_nm.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision and device.type == "cuda"):
        loss = task_loss(model(batch, drop), batch, cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    ema.update_parameters(model)
    return loss.detach()


def epoch_order(failed: torch.Tensor, failure_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """The rows of one epoch, shuffled: every row, except that only a fresh random `failure_fraction` of the failed
    syntheses (`failed`, on the CPU) takes part. They are most of the shape task's rows and train only the failed
    logit, so a fraction of them per epoch buys more epochs over the recipes for the same time."""
    order = torch.randperm(len(failed), generator=generator)
    if failure_fraction < 1.0:
        order = order[~failed[order] | (torch.rand(len(order), generator=generator) < failure_fraction)]
    return order


def run_epochs(model: torch.nn.Module, ema: EMA, data: Batch, cfg: Config, epochs: int,
               generator: torch.Generator, masked: bool, on_epoch=None, report=None,
               device_generator: torch.Generator | None = None) -> list[float]:
    """`epochs` passes over `data` in shuffled batches; returns the mean loss per epoch. `report(epoch, loss)` after
    each epoch (progress)."""
    failed = (data.shape == model.shape_head.out_features).cpu()  # the failure class is n_shapes
    rows_per_epoch = len(data) - (1.0 - cfg.failure_fraction) * int(failed.sum())
    optimizer, scheduler = make_optimizer(model, cfg, math.ceil(rows_per_epoch / cfg.batch_size), epochs)
    losses = []
    for epoch in range(epochs):
        model.train()
        order = epoch_order(failed, cfg.failure_fraction, generator).to(data.size_nm.device)
        epoch_loss = torch.zeros((), device=data.size_nm.device)
        for start in range(0, len(order), cfg.batch_size):
            batch = data.index(order[start:start + cfg.batch_size])
            drop = (descriptor_mask(batch, cfg.pretrain_mask_rate, generator, device_generator or generator)
                    if masked else None)
            epoch_loss += train_step(model, ema, optimizer, scheduler, batch, cfg, drop) * len(batch)
        losses.append(epoch_loss.item() / len(order))
        if report is not None:
            report(epoch + 1, losses[-1])
        if on_epoch is not None:
            on_epoch(epoch + 1, ema.module)
    return losses


def snapshot_epochs(cfg: Config) -> list[int]:
    """Epochs whose EMA weights are kept: the last one, plus `snapshots - 1` earlier ones spread over the last
    `snapshot_span` of training. Snapshots of one run are a nearly free ensemble."""
    if cfg.snapshots <= 1:
        return [cfg.epochs]
    first = cfg.epochs * (1 - cfg.snapshot_span)
    step = (cfg.epochs - first) / (cfg.snapshots - 1)
    return sorted({max(1, round(first + k * step)) for k in range(cfg.snapshots)})


def resolve_device(cfg: Config) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def for_training(model: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """The module the steps call: with --compile_model, torch.compile of `model` (dynamic shapes: a batch's token
    count varies), sharing its weights; the EMA and the snapshots keep the plain module."""
    return torch.compile(model, dynamic=True) if cfg.compile_model else model


def train_member(make_model, data: Batch, cfg: Config, seed: int, on_epoch=None, report=None) -> tuple[list, list]:
    """Train one model (optional masked pretraining, then finetuning from its weights); return copies of its EMA
    weights at the snapshot epochs, and the loss per epoch. `report(stage, epoch, loss)` after each epoch of each
    stage (pretrain, train)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = resolve_device(cfg)
    model = make_model().to(device)
    trained = for_training(model, cfg)
    data = data.to(device)
    losses = []
    if cfg.pretrain_epochs:
        ema = EMA(model, cfg.ema_decay)
        device_generator = None if device.type == "cpu" else torch.Generator(device).manual_seed(seed)
        losses += run_epochs(trained, ema, data, cfg, cfg.pretrain_epochs, generator, True,
                             report=report and (lambda epoch, loss: report("pretrain", epoch, loss)),
                             device_generator=device_generator)
    ema = EMA(model, cfg.ema_decay)
    keep_at = snapshot_epochs(cfg)
    snapshots = []

    def after_epoch(epoch: int, averaged: torch.nn.Module) -> None:
        if epoch in keep_at:
            snapshots.append(copy.deepcopy(averaged).cpu().eval())
        if on_epoch is not None:
            on_epoch(epoch, averaged)

    losses += run_epochs(trained, ema, data, cfg, cfg.epochs, generator, False, after_epoch,
                         report and (lambda epoch, loss: report("train", epoch, loss)))
    return snapshots, losses


@torch.no_grad()
def predict(model: torch.nn.Module, data: Batch, batch_size: int = 2048) -> dict[str, np.ndarray]:
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list] = {"size": [], "shape": [], "failed": []}
    for chunk in data.chunks(batch_size):
        out = model(chunk.to(device))
        parts["size"].append(out["size"])
        parts["shape"].append(torch.softmax(out["shape"], dim=1))
        parts["failed"].append(torch.sigmoid(out["failed"]))
    return {k: torch.cat(v).cpu().numpy() for k, v in parts.items()}


def ensemble_predict(models: list[torch.nn.Module], data: Batch) -> dict[str, np.ndarray]:
    """Mean over members, plus the spread of the size predictions."""
    each = [predict(m, data) for m in models]
    out = {k: np.mean([e[k] for e in each], axis=0) for k in each[0]}
    out["size_std"] = np.std([e["size"] for e in each], axis=0)
    return out
