import pytest
import torch
import torch.nn.functional as F

from lmforge import losses
from lmforge.losses import batch_loss, linear_cross_entropy
from lmforge.models import build_model


@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_linear_cross_entropy_equals_the_plain_path(with_bias, monkeypatch):
    monkeypatch.setattr(losses, "BLOCK_ELEMENTS", 7 * 301)  # several blocks, a ragged last one
    torch.manual_seed(0)
    h = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(301, 16, dtype=torch.float64, requires_grad=True)
    b = torch.randn(301, dtype=torch.float64, requires_grad=True) if with_bias else None
    t = torch.randint(0, 301, (50,))
    params = [p for p in (h, w, b) if p is not None]
    plain = F.cross_entropy(F.linear(h, w, b), t)
    expected = torch.autograd.grad(plain * 3.0, params)
    fused = linear_cross_entropy(h, w, b, t)
    got = torch.autograd.grad(fused * 3.0, params)
    assert fused.item() == pytest.approx(plain.item(), abs=1e-12)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-12, rtol=1e-10)
    with torch.no_grad():
        assert linear_cross_entropy(h, w, b, t).item() == pytest.approx(plain.item(), abs=1e-12)


def test_fused_path_under_bfloat16_autocast_is_close():
    torch.manual_seed(0)
    h = torch.randn(64, 32, requires_grad=True)
    w = (0.1 * torch.randn(5000, 32)).requires_grad_()
    t = torch.randint(0, 5000, (64,))
    plain = F.cross_entropy(h @ w.t(), t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(h, w, None, t)
    assert fused.dtype == torch.float32
    assert fused.item() == pytest.approx(plain.item(), rel=2e-2)


def test_models_with_a_big_vocabulary_take_the_fused_path(monkeypatch):
    torch.manual_seed(0)
    model = build_model("lstm", vocab_size=losses.FUSED_MIN_VOCAB, n_embd=8, n_hidden=8, n_layer=1)
    x = torch.randint(0, losses.FUSED_MIN_VOCAB, (2, 5))
    y = torch.randint(0, losses.FUSED_MIN_VOCAB, (2, 5))
    calls = []
    real = losses.linear_cross_entropy
    monkeypatch.setattr(losses, "linear_cross_entropy", lambda *a: calls.append(1) or real(*a))
    fused = batch_loss(model, x, y)
    assert calls == [1]
    logits, _ = model(x)
    plain = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    assert fused.item() == pytest.approx(plain.item(), abs=1e-5)
    assert batch_loss(model, x, y, reduction="sum").item() == pytest.approx(
        10 * plain.item(), abs=1e-4
    )


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.double() - expected.double()).norm() / expected.double().norm())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("rows", "logit_scale"), [(64, 1.0), (4096, 0.05), (64, 6.0)])
def test_low_precision_gradients_match_float32_ones(dtype, rows, logit_scale):
    """Many rows make each row's gradient tiny (it is divided by their number): in float16
    that underflowed to zero before the loss scaler acted. A wide logit range puts targets
    below float16's smallest probability: their log was -inf."""
    torch.manual_seed(0)
    vocab, width, scale = 5000, 16, 65536.0  # scale: a GradScaler's initial factor
    h = torch.randn(rows, width).to(dtype)
    w = (logit_scale / 4 * torch.randn(vocab, width)).to(dtype)
    b = torch.randn(vocab).to(dtype)
    t = torch.randint(0, vocab, (rows,))
    exact = [p.float().requires_grad_() for p in (h, w, b)]
    plain = F.cross_entropy(F.linear(*exact), t)
    expected = torch.autograd.grad(plain * scale, exact)
    low = [p.clone().requires_grad_() for p in (h, w, b)]
    fused = linear_cross_entropy(*low, t)
    got = torch.autograd.grad(fused * scale, low)
    assert fused.dtype == torch.float32
    assert fused.item() == pytest.approx(plain.item(), rel=1e-2)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == dtype and torch.isfinite(g).all()
        assert relative_error(g, e) < 2e-2
