"""The training step's speed-ups keep its maths: token packing, the host-side EMA, the sync-free losses."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from nanocrystal.config import resolve
from nanocrystal.encode import encode, fit_encoder
from nanocrystal.engine import EMA, descriptor_mask, make_optimizer, shape_loss, train_step
from nanocrystal.model import fast_dropout
from nanocrystal.runs import fold_data, make_model_factory
from nanocrystal.splits import paper_folds


@pytest.fixture(scope="module")
def rows(table, descriptors):
    """200 training rows of fold 0 (recipes with 3 to 11 substances), encoded, and their encoder."""
    cfg = resolve("tiny")
    data = fold_data(cfg, table, paper_folds(table, 5, 0)[0], 11)
    encoder = fit_encoder(data.train, descriptors, "log", True, False)
    batch = encode(data.train, encoder, data.train_weak)
    return encoder, batch.index(torch.arange(200))


def two_models(rows, descriptors, **fields):
    """The same weights, without and with pack_tokens."""
    encoder, _ = rows
    cfg = resolve("tiny", {"d_model": 32, "depth": 2, "n_heads": 4, "d_ffn": 48, **fields})
    torch.manual_seed(0)
    padded = make_model_factory(cfg, encoder, descriptors, 11)()
    packed = make_model_factory(replace(cfg, pack_tokens=True), encoder, descriptors, 11)()
    packed.load_state_dict(padded.state_dict())
    return padded, packed


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_packed_tokens_give_the_padded_models_outputs_and_gradients(rows, descriptors, mode):
    _, batch = rows
    assert batch.present.sum(1).min() < batch.present.shape[1]  # rows with padding slots: packing skips them
    padded, packed = two_models(rows, descriptors)
    outputs = []
    for model in (padded, packed):
        model.train(mode == "train")
        out = model(batch)
        (out["size"].square().mean() + out["shape"].logsumexp(1).mean()).backward()
        outputs.append(out)
    for key in ("size", "shape", "failed"):
        torch.testing.assert_close(outputs[0][key], outputs[1][key], rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(padded.named_parameters(), packed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    # a row's output does not depend on the other rows of its batch (no padding leaks in)
    alone = packed(batch.index(torch.arange(3)))["size"]
    torch.testing.assert_close(alone, outputs[1]["size"][:3], rtol=1e-5, atol=1e-5)


def test_fast_dropout_drops_at_rate_p_and_scales_what_it_keeps():
    x = torch.ones(400, 256, requires_grad=True)
    torch.manual_seed(0)
    out = fast_dropout(x, 0.1, training=True)
    kept = out != 0
    assert out[kept].unique().tolist() == pytest.approx([1 / 0.9])
    assert (~kept).float().mean().item() == pytest.approx(0.1, abs=0.003)  # 102,400 draws: sd 0.001
    assert out.mean().item() == pytest.approx(1.0, abs=0.01)
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())  # the gradient passes through the same mask and scale
    assert not torch.equal(kept, fast_dropout(x, 0.1, training=True) != 0)  # a new mask each call
    assert fast_dropout(x, 0.1, training=False) is x and fast_dropout(x, 0.0, training=True) is x
    odd = fast_dropout(torch.ones(3, 5), 0.5, training=True)  # a size that is not a multiple of four
    assert odd.shape == (3, 5) and set(odd.unique().tolist()) <= {0.0, 2.0}


def test_packed_tokens_apply_dropout_in_training_only(rows, descriptors):
    _, batch = rows
    padded, packed = two_models(rows, descriptors, dropout=0.1)
    packed.train()
    first, second = (packed(batch)["size"] for _ in range(2))
    assert not torch.allclose(first, second)  # new masks each step
    packed.eval(), padded.eval()
    torch.testing.assert_close(packed(batch)["size"], padded(batch)["size"], rtol=1e-5, atol=1e-5)


def test_the_host_side_ema_is_torchs_averaged_model_to_the_bit(rows, descriptors):
    _, batch = rows
    cfg = resolve("tiny")
    model, _ = two_models(rows, descriptors)
    ours = EMA(model, 0.9)
    torchs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    optimizer, scheduler = make_optimizer(model, cfg, 1, 10)
    for _ in range(4):
        train_step(model, ours, optimizer, scheduler, batch, cfg)
        torchs.update_parameters(model)
    for (name, a), b in zip(ours.module.state_dict().items(), torchs.module.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(ours.module.size_head.weight, model.size_head.weight)  # an average, not a copy


def test_mixed_precision_is_for_a_gpu_only(rows, descriptors):
    """On a CPU, --mixed_precision (on by default) leaves the step in float32: the same weights after a step."""
    _, batch = rows
    weights = []
    for mixed in (True, False):
        cfg = resolve("tiny", {"mixed_precision": mixed})
        model, _ = two_models(rows, descriptors)
        optimizer, scheduler = make_optimizer(model, cfg, 1, 10)
        train_step(model, EMA(model, 0.9), optimizer, scheduler, batch, cfg)
        weights.append(model.size_head.weight.detach().clone())
    assert torch.equal(*weights)


def test_the_shape_loss_with_only_failed_rows_is_their_failed_logit_loss():
    logits = torch.randn(4, 11, requires_grad=True)
    batch = type("Rows", (), {"shape": torch.full((4,), 11)})()
    loss = shape_loss(logits, torch.zeros(4), batch)
    loss.backward()
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())  # BCE of logit 0 against "failed"
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_the_pretraining_mask_hides_present_slots_only(rows):
    _, batch = rows
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        mask = descriptor_mask(batch, 0.5, generator, generator)
        assert not (mask & ~batch.present).any()
        product_only = bool((mask & ~batch.is_product).sum() == 0)
        assert product_only or bool((mask.sum(1) == 1).all())  # the product of some rows, or one slot per row


def test_the_throughput_bench_times_ours_beside_upstreams_architecture(monkeypatch, capsys):
    import runpy

    from nanocrystal.config import ROOT

    monkeypatch.setattr("sys.argv", ["throughput.py", "--preset", "tiny", "--steps", "1", "--rounds", "2",
                                     "--batch_size", "32", "--upstream", "--threads", "1"])
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(ROOT / "bench" / "throughput.py"), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    assert "upstream: 15 per row, all computed" in lines[1]
    assert any("batch 32: upstream" in line and "rounds: " in line for line in lines)
    assert any(line.strip().startswith("batch 32: ours / upstream =") for line in lines)
