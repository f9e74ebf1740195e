"""Cross-entropy for next-token prediction, including a fused output layer for big vocabularies.

With a vocabulary of I tokens, B·T positions and hidden size D, the plain path materialises the
[B·T, I] logits, their softmax and its gradient: 93 MB per tensor for the word-language-model
example (20 × 35 positions × 33,278 words, float32). :func:`linear_cross_entropy` instead walks
over blocks of rows, computing each block's logits, loss and gradients while they are in cache,
and never holds more than one block: the same loss and gradients, in a fraction of the memory
traffic.

>>> hidden, weight = torch.randn(700, 200), torch.randn(33278, 200)
>>> targets = torch.randint(0, 33278, (700,))
>>> linear_cross_entropy(hidden, weight, None, targets)  # F.cross_entropy(hidden @ weight.T, ...)
tensor(...)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# Above this vocabulary size the fused path is used (below it the logits are small anyway).
FUSED_MIN_VOCAB = 4096
# Logits per block: rows × vocabulary ≈ this many floats (16 MB): large enough for efficient
# matrix products, small enough to stay below malloc's mmap threshold and be reused.
BLOCK_ELEMENTS = 1 << 22


def _blockwise(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    compute_dtype: torch.dtype,
    with_grads: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(summed loss, d mean-loss/d hidden, /d weight, /d bias), block of rows by block.

    The loss and the gradients come out in float32 (or wider): a float16 gradient divided by
    the number of rows would underflow before the loss scaler could multiply it."""
    n, vocab = hidden.shape[0], weight.shape[0]
    rows = max(1, BLOCK_ELEMENTS // vocab)
    exact = torch.promote_types(hidden.dtype, torch.float32)  # softmax and sums: ≥ float32
    w = weight.to(compute_dtype)
    h_all = hidden.to(compute_dtype)
    total = torch.zeros((), dtype=exact, device=hidden.device)
    grad_hidden = torch.empty_like(hidden, dtype=exact) if with_grads else None
    grad_weight = torch.zeros_like(weight, dtype=exact) if with_grads else None
    grad_bias = None
    if with_grads and bias is not None:
        grad_bias = torch.zeros_like(bias, dtype=exact)
    low_precision = compute_dtype in (torch.bfloat16, torch.float16)
    everything = torch.arange(rows, device=targets.device)
    for start in range(0, n, rows):
        h = h_all[start : start + rows]
        t = targets[start : start + rows]
        if low_precision and with_grads:
            # Autocast precision, as nn.Linear + cross_entropy under autocast would have: the
            # logits stay in the low dtype and one softmax kernel turns them into float32
            # probabilities, which are also the gradient's operand.
            logits = h @ w.t()
            if bias is not None:
                logits += bias.to(compute_dtype)
            probs = torch.softmax(logits, dim=-1, dtype=exact)
            total += _low_precision_losses(logits, probs, t).sum()
        else:
            logits = (h @ w.t()).to(exact)
            if bias is not None:
                logits += bias.to(exact)
            picked = logits.gather(1, t[:, None]).squeeze(1)
            if not with_grads:
                total += (torch.logsumexp(logits, dim=-1) - picked).sum()
                continue
            top = logits.amax(dim=-1, keepdim=True)
            probs = logits.sub_(top).exp_()  # one exp per logit, in the block's own memory
            norm = probs.sum(dim=-1)
            total += (top.squeeze(1) + norm.log() - picked).sum()
            probs.div_(norm[:, None])
        # d(sum of losses)/d logits = softmax - one-hot; the 1/n of the mean comes after
        probs[everything[: len(t)], t] -= 1.0
        if grad_bias is not None:
            grad_bias += probs.sum(0)
        d_logits = probs.to(compute_dtype)  # the matrix products run in the compute dtype
        grad_hidden[start : start + rows] = d_logits @ w
        grad_weight.add_(d_logits.t() @ h)
    if with_grads:
        grad_hidden.div_(n)
        grad_weight.div_(n)
        if grad_bias is not None:
            grad_bias.div_(n)
    return total, grad_hidden, grad_weight, grad_bias


def _low_precision_losses(
    logits: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """-log probs[i, targets[i]] in float32; rows whose target probability underflows even
    float32 (a loss above ~87 nats) are recomputed from their logits with a log-sum-exp."""
    picked = probs.gather(1, targets[:, None]).squeeze(1)
    losses = -picked.log()
    tiny = (picked < torch.finfo(probs.dtype).tiny).nonzero().squeeze(1)
    if len(tiny):
        row_logits = logits[tiny].to(probs.dtype)
        exact = torch.logsumexp(row_logits, dim=-1) - row_logits.gather(
            1, targets[tiny, None]
        ).squeeze(1)
        losses[tiny] = exact
    return losses


class _LinearCrossEntropy(torch.autograd.Function):
    """mean_i CE(hidden_i · Wᵀ + b, target_i); the gradients are made during the forward pass,
    block by block, and only scaled in backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        compute_dtype: torch.dtype,
    ) -> torch.Tensor:
        total, gh, gw, gb = _blockwise(hidden, weight, bias, targets, compute_dtype, True)
        ctx.save_for_backward(gh, gw, gb)
        ctx.hidden_dtype = hidden.dtype
        ctx.weight_dtype = weight.dtype
        ctx.has_bias = bias is not None
        return total / hidden.shape[0]

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:  # type: ignore[override]
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_output.to(grad_weight.dtype)
        # the scale (a loss scaler's factor) multiplies before any cast to a low dtype
        gh = (grad_hidden * scale).to(ctx.hidden_dtype) if ctx.needs_input_grad[0] else None
        gw = (grad_weight * scale).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        gb = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = (grad_bias * scale).to(ctx.weight_dtype)
        return gh, gw, gb, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T + bias`` [N, I] against ``targets`` [N],
    without materialising the logits. Matrix products run in the autocast dtype when autocast
    is on (the softmax then reads low-precision logits but sums in float32); the loss is
    always float32 or wider."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = hidden.dtype
    with torch.autocast(device_type=device_type, enabled=False):
        if not torch.is_grad_enabled():
            total = _blockwise(hidden, weight, bias, targets, compute_dtype, False)[0]
            return total / hidden.shape[0]
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets, compute_dtype)


def unwrap(model: torch.nn.Module) -> Any:
    """The model inside DistributedDataParallel and torch.compile wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            return model
        model = inner


def fused_output_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The output layer :func:`batch_loss` fuses with the softmax (a linear head over a
    vocabulary of at least ``FUSED_MIN_VOCAB`` tokens), or None: the loss then sees the full
    [B, T, I] logits."""
    head = model.output_head() if hasattr(model, "output_head") else None
    return head if head is not None and head.out_features >= FUSED_MIN_VOCAB else None


def batch_loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    reduction: str = "mean",
    last: int | None = None,
) -> torch.Tensor:
    """Cross-entropy (nats, float32) of the model's next-token predictions for ``y`` given
    ``x`` (each [B, T]); ``reduction`` is ``mean`` or ``sum``. With ``last``, only the last
    ``last`` predictions of each row count (the others are context: sliding-window evaluation).

    Models with a linear output head and a vocabulary of at least ``FUSED_MIN_VOCAB`` tokens
    go through :func:`linear_cross_entropy` (``model(x, return_hidden=True)``)."""
    head = fused_output_head(unwrap(model))
    if last is not None:
        y = y[:, y.shape[1] - last :]
    if head is not None:
        hidden, _ = model(x, return_hidden=True)
        if last is not None:
            hidden = hidden[:, hidden.shape[1] - last :]
        loss = linear_cross_entropy(
            hidden.reshape(-1, hidden.shape[-1]), head.weight, head.bias, y.reshape(-1)
        )
        return loss * y.numel() if reduction == "sum" else loss
    logits, _ = model(x)
    if last is not None:
        logits = logits[:, logits.shape[1] - last :]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), reduction=reduction
    )
