"""The fused big-vocabulary loss against the plain one where mutation testing found gaps:
float32 inputs, bias and several blocks under autocast, frozen weights or inputs."""

import pytest
import torch
import torch.nn.functional as F

from lmforge import losses
from lmforge.losses import linear_cross_entropy

VOCAB, DIM, ROWS = 301, 16, 50


def inputs(dtype=torch.float32, bias=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(ROWS, DIM, dtype=dtype, generator=generator)
    w = 0.3 * torch.randn(VOCAB, DIM, dtype=dtype, generator=generator)
    b = torch.randn(VOCAB, dtype=dtype, generator=generator) if bias else None
    t = torch.randint(0, VOCAB, (ROWS,), generator=generator)
    return h, w, b, t


@pytest.fixture(autouse=True)
def several_blocks(monkeypatch):
    monkeypatch.setattr(losses, "BLOCK_ELEMENTS", 7 * VOCAB)  # blocks of 7 rows, a ragged last


def test_float32_fused_loss_and_gradients_equal_the_plain_ones():
    """Matrix products stay in float32 when autocast is off (a bfloat16 product would be off
    by about 1e-2)."""
    h, w, b, t = inputs()
    params = [p.requires_grad_() for p in (h, w, b)]
    plain = F.cross_entropy(F.linear(h, w, b), t)
    expected = torch.autograd.grad(plain, params)
    fused = linear_cross_entropy(h, w, b, t)
    assert fused.dtype == torch.float32
    assert fused.item() == pytest.approx(plain.item(), rel=1e-6)
    for got, want in zip(torch.autograd.grad(fused, params), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        assert linear_cross_entropy(h, w, b, t).item() == pytest.approx(plain.item(), rel=1e-6)


@pytest.mark.parametrize("with_grad", [True, False])
def test_bfloat16_autocast_with_a_bias_over_several_blocks_is_close(with_grad):
    h, w, b, _ = inputs()
    b = 3 * b
    t = b.topk(ROWS).indices  # the bias matters: it favours the targets
    plain = F.cross_entropy(F.linear(h, w, b), t).item()
    for p in (h, w, b):
        p.requires_grad_(with_grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(h, w, b, t)
    assert fused.dtype == torch.float32
    assert fused.item() == pytest.approx(plain, rel=2e-2)


@pytest.mark.parametrize("frozen", ["weight", "hidden"])
def test_a_frozen_operand_still_gives_the_other_its_gradient(frozen):
    h, w, _, t = inputs(dtype=torch.float64, bias=False)
    trained = w if frozen == "hidden" else h
    trained.requires_grad_()
    (expected,) = torch.autograd.grad(F.cross_entropy(F.linear(h, w), t), [trained])
    (got,) = torch.autograd.grad(linear_cross_entropy(h, w, None, t), [trained])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
