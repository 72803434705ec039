"""Training throughput (samples/s) and peak memory of a preset's model on fold 0 of the paper split, with the training
loop's own step (engine.train_step: forward, loss, backward, AdamW, schedule, EMA).

    python bench/throughput.py --preset paper --batch_size 1024 --steps 5
    python bench/throughput.py --preset cpu
    python bench/throughput.py --preset paper --batch_size 256 1024 --upstream --rounds 3   # beside upstream's model

--upstream also times upstream's architecture at the preset's width, depth, heads and feed-forward width, built here
from its description (not its code): every recipe padded to 14 substance slots (13 reagents + the product), each slot
one 514-wide input [512-d descriptor, scaled amount, is_product] projected to d, the scaled conditions projected and
added to every slot, a learned CLS token in front (15 tokens a row), nn.TransformerEncoder (post-norm, ReLU, the
preset's dropout) with the empty slots masked out of attention, a size head on the CLS output; Huber loss and AdamW,
without our schedule and EMA (less work per step than ours). Its batch is synthetic (random inputs) with the slot
counts of real rows of the same fold. The two models are timed in turns (ours, upstream's, ours, ...) so that a
shared CPU slows both alike; the figure is each one's median over --rounds.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nanocrystal.config import Config, ConfigError, field_values, resolve  # noqa: E402
from nanocrystal.descriptors import load_descriptors  # noqa: E402
from nanocrystal.encode import Batch, encode, fit_encoder  # noqa: E402
from nanocrystal.engine import EMA, for_training, make_optimizer, resolve_device, train_step  # noqa: E402
from nanocrystal.model import MAX_REAGENTS  # noqa: E402
from nanocrystal.recipes import load_dataset  # noqa: E402
from nanocrystal.runs import fold_data, make_model_factory  # noqa: E402
from nanocrystal.splits import combined_table, paper_folds  # noqa: E402

UPSTREAM_SLOTS = MAX_REAGENTS + 1  # 13 reagent slots + the product
UPSTREAM_INPUTS = 514  # descriptor (512), scaled amount, is_product


class UpstreamTransformer(nn.Module):
    """Upstream's architecture from its description (see the module docstring)."""

    def __init__(self, cfg: Config, n_conditions: int):
        super().__init__()
        d = cfg.d_model
        self.embed = nn.Linear(UPSTREAM_INPUTS, d)
        self.conditions = nn.Linear(n_conditions, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        layer = nn.TransformerEncoderLayer(d, cfg.n_heads, cfg.d_ffn, cfg.dropout, batch_first=True)  # post-norm
        self.encoder = nn.TransformerEncoder(layer, cfg.depth)
        self.size_head = nn.Linear(d, 1)

    def forward(self, slots: torch.Tensor, empty: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(slots) + self.conditions(conditions).unsqueeze(1)
        tokens = torch.cat([self.cls.expand(len(slots), -1, -1), tokens], dim=1)
        padding = torch.cat([torch.zeros_like(empty[:, :1]), empty], dim=1)
        return self.size_head(self.encoder(tokens, src_key_padding_mask=padding)[:, 0]).squeeze(-1)


def upstream_step(cfg: Config, rows: Batch, device: torch.device, generator: torch.Generator):
    """One training step of UpstreamTransformer on synthetic rows with the slot counts of `rows`."""
    n = len(rows)
    counts = rows.present.sum(1)
    slots = torch.randn(n, UPSTREAM_SLOTS, UPSTREAM_INPUTS, generator=generator)
    empty = torch.arange(UPSTREAM_SLOTS) >= counts.unsqueeze(1)
    conditions = torch.randn(n, rows.conditions.shape[1], generator=generator)
    size_nm = torch.rand(n, generator=generator) * 20
    slots, empty, conditions, size_nm = (t.to(device) for t in (slots, empty, conditions, size_nm))
    model = UpstreamTransformer(cfg, conditions.shape[1]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    params = sum(p.numel() for p in model.parameters())

    def step(batch_size: int) -> None:
        index = torch.randint(0, n, (batch_size,), generator=generator).to(device)
        model.train()
        loss = nn.functional.huber_loss(model(slots[index], empty[index], conditions[index]), size_nm[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step, params


def seconds_per_step(step, batch_size: int, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step(batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--batch_size", type=int, nargs="+", default=[0], help="0 = the preset's")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=1, help="timings per model; the median is reported")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--upstream", action="store_true", help="also time upstream's architecture, in turns")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="Config fields over the preset's, e.g. pack_tokens=false (JSON values)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        cfg = resolve(args.preset, {"device": args.device, **field_values(args.set)})
    except ConfigError as error:
        parser.error(str(error))
    dataset = load_dataset(cfg.data_dir)
    store = load_descriptors(cfg.feats_path)
    table = combined_table(dataset)
    data = fold_data(cfg, table, paper_folds(table, 5, 0)[0], dataset.n_shapes)
    encoder = fit_encoder(data.train, store, cfg.amount_scaling, cfg.use_product, cfg.size_as_input)
    device = resolve_device(cfg)
    rows = encode(data.train, encoder, data.train_weak)
    batch_all = rows.to(device)
    model = make_model_factory(cfg, encoder, store, dataset.n_shapes)().to(device)
    optimizer, scheduler = make_optimizer(model, cfg, steps_per_epoch=1, epochs=10 ** 6)
    ema = EMA(model, cfg.ema_decay)
    generator = torch.Generator().manual_seed(0)
    params = sum(p.numel() for p in model.parameters())

    trained = for_training(model, cfg)

    def ours(batch_size: int) -> None:  # the training loop's own step
        index = torch.randint(0, len(batch_all), (batch_size,), generator=generator).to(device)
        train_step(trained, ema, optimizer, scheduler, batch_all.index(index), cfg)

    models = {"ours": ours}
    if args.upstream:
        models["upstream"], upstream_params = upstream_step(cfg, rows, device, generator)
    real = 2 + rows.present.sum(1).float().mean().item()
    print(f"preset {args.preset}: d={cfg.d_model} depth={cfg.depth} heads={cfg.n_heads} ffn={cfg.d_ffn} "
          f"params={params:,} device={device} threads={args.threads} pack_tokens={cfg.pack_tokens} "
          f"compile_model={cfg.compile_model}")
    print(f"  ours: tokens per row {2 + rows.present.shape[1]} padded, {real:.2f} real on average (CLS, conditions, "
          "substances)" + (f"; upstream: {UPSTREAM_SLOTS + 1} per row, all computed (CLS + {UPSTREAM_SLOTS} slots), "
                           f"params={upstream_params:,}" if args.upstream else ""))
    for batch_size in [b or cfg.batch_size for b in args.batch_size]:
        for name, step in models.items():  # warm-up: first-call allocations (and --set compile_model=true's compile)
            warm_start = time.perf_counter()
            for _ in range(2):
                step(batch_size)
            if name == "ours" and cfg.compile_model:
                print(f"  batch {batch_size}: warm-up with the compile {time.perf_counter() - warm_start:.0f} s")
        timings: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, step in models.items():
                timings[name].append(seconds_per_step(step, batch_size, args.steps, device))
        rates = {}
        for name, seconds in timings.items():
            median = statistics.median(seconds)
            rates[name] = batch_size / median
            each = ", ".join(f"{batch_size / s:,.0f}" for s in seconds)
            if name == "ours":  # bench/paper_gpu.sh reads the steps/s of this line
                print(f"  batch {batch_size}: {rates[name]:,.0f} training samples/s ({1000 * median / batch_size:.3f} "
                      f"ms per sample, {1 / median:.1f} steps/s; rounds: {each})")
            else:
                print(f"  batch {batch_size}: upstream {rates[name]:,.0f} training samples/s (rounds: {each})")
        if args.upstream:
            print(f"  batch {batch_size}: ours / upstream = {rates['ours'] / rates['upstream']:.2f}")
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak resident memory {peak_rss_mib:,.0f} MiB"
          + (f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB" if device.type == "cuda"
             else ""))


if __name__ == "__main__":
    main()
