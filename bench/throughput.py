"""Training throughput (samples/s) and peak memory of a preset's model on fold 0 of the paper split.

    python bench/throughput.py --preset paper --batch_size 1024 --steps 5
    python bench/throughput.py --preset cpu
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nanocrystal.config import resolve  # noqa: E402
from nanocrystal.descriptors import load_descriptors  # noqa: E402
from nanocrystal.encode import encode, fit_encoder  # noqa: E402
from nanocrystal.engine import make_optimizer, resolve_device, train_step  # noqa: E402
from nanocrystal.recipes import load_dataset  # noqa: E402
from nanocrystal.runs import fold_data, make_model_factory  # noqa: E402
from nanocrystal.splits import combined_table, paper_folds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--batch_size", type=int, default=0, help="0 = the preset's")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {"device": args.device, **({"batch_size": args.batch_size} if args.batch_size else {})}
    cfg = resolve(args.preset, overrides)
    dataset = load_dataset(cfg.data_dir)
    store = load_descriptors(cfg.feats_path)
    table = combined_table(dataset)
    data = fold_data(cfg, table, paper_folds(table, 5, 0)[0], dataset.n_shapes)
    encoder = fit_encoder(data.train, store, cfg.amount_scaling, cfg.use_product, cfg.size_as_input)
    device = resolve_device(cfg)
    batch_all = encode(data.train, encoder, data.train_weak).to(device)
    model = make_model_factory(cfg, encoder, store, dataset.n_shapes)().to(device)
    optimizer, scheduler = make_optimizer(model, cfg, steps_per_epoch=1, epochs=args.steps + 3)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:  # the training loop's own step (engine.train_step): forward, backward, AdamW, EMA
        rows = torch.randint(0, len(batch_all), (cfg.batch_size,), generator=generator).to(device)
        train_step(model, ema, optimizer, scheduler, batch_all.index(rows), cfg)

    for _ in range(3):  # warm-up
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    samples = args.steps * cfg.batch_size
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in model.parameters())
    print(f"preset {args.preset}: d={cfg.d_model} depth={cfg.depth} ffn={cfg.d_ffn} params={params:,} "
          f"batch={cfg.batch_size} device={device} threads={args.threads}")
    print(f"  {samples / seconds:,.0f} training samples/s ({1000 * seconds / samples:.3f} ms per sample, "
          f"{args.steps / seconds:.1f} steps/s)")
    print(f"  peak resident memory {peak_rss_mib:,.0f} MiB"
          + (f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB" if device.type == "cuda"
             else ""))


if __name__ == "__main__":
    main()
