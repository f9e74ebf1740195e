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
    model = build_model("lstm", vocab_size=losses.FUSED_MIN_VOCAB, n_embd=8, n_hidden=8,
                        n_layer=1)
    x = torch.randint(0, losses.FUSED_MIN_VOCAB, (2, 5))
    y = torch.randint(0, losses.FUSED_MIN_VOCAB, (2, 5))
    calls = []
    real = losses.linear_cross_entropy
    monkeypatch.setattr(losses, "linear_cross_entropy",
                        lambda *a: calls.append(1) or real(*a))
    fused = batch_loss(model, x, y)
    assert calls == [1]
    logits, _ = model(x)
    plain = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    assert fused.item() == pytest.approx(plain.item(), abs=1e-5)
    assert batch_loss(model, x, y, reduction="sum").item() == pytest.approx(
        10 * plain.item(), abs=1e-4)
