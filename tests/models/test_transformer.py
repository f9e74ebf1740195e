"""The Transformer: its cache, its sliding window, its initialisation and its shapes.

The interface checks every model shares (loss at initialisation ≈ ln I, carried state equals
the whole sequence, cached generation equals re-running the window) run on the Transformer
through LADDER in test_models.py; these are the Transformer's own."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge import generation
from lmforge.config import TRANSFORMER_PRESETS
from lmforge.errors import ConfigError, LmforgeError
from lmforge.generation import SampleConfig, generate_ids
from lmforge.models import build_model
from lmforge.models.transformer import apply_rotary, rotary_tables
from tests.test_generation import record_sampled_logits

VOCAB = 40


def small_transformer(position: str = "learned", block: int = 32, **options):
    torch.manual_seed(0)
    model = build_model(
        "transformer",
        vocab_size=VOCAB,
        n_layer=2,
        n_head=2,
        n_embd=32,
        block_size=block,
        position=position,
        **options,
    )
    for p in model.parameters():  # weights far from uniform, so every token matters
        torch.nn.init.normal_(p, std=0.4)
    return model.eval()


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_cached_greedy_generation_equals_recomputation_for_300_tokens(position, monkeypatch):
    model = small_transformer(position, block=32)
    seen = record_sampled_logits(monkeypatch)
    prompt = [3, 1, 4, 1, 5]
    cached = [int(t) for t in generate_ids(model, prompt, SampleConfig(300, temperature=0))]

    history = list(prompt)  # from scratch: re-run the whole window at every step
    start = generation.prompt_window(len(history), model.max_context)
    slides = 0
    with torch.no_grad():
        for step in range(300):
            logits = model(torch.tensor([history[start:]]))[0][0, -1]
            torch.testing.assert_close(seen[step][0], logits, atol=1e-5, rtol=0)
            history.append(int(logits.argmax()))
            new_start = generation.slide_window(start, len(history), model.max_context)
            slides += new_start != start
            start = new_start
    assert cached == history[len(prompt) :]
    assert slides >= 30  # 300 tokens with a block of 32: well past the block size


def test_slide_keeps_between_three_quarters_and_all_of_the_block():
    start, widths = 0, []
    for length in range(1, 400):
        start = generation.slide_window(start, length, 32)
        widths.append(length - start)
    assert max(widths) == 32 and min(widths[40:]) == 24
    assert generation.slide_window(0, 33, 32) == 33 - 24


def test_a_prompt_longer_than_the_block_is_cropped_to_its_end():
    model = small_transformer(block=16)
    prompt = list(torch.randint(0, VOCAB, (50,), generator=torch.Generator().manual_seed(1)))
    prompt = [int(t) for t in prompt]
    config = SampleConfig(max_new_tokens=40, seed=3)
    whole = [int(t) for t in generate_ids(model, prompt, config)]
    cropped = [int(t) for t in generate_ids(model, prompt[-16:], config)]
    assert whole == cropped


def test_feeding_past_the_block_size_or_another_batch_is_a_clear_error():
    model = small_transformer(block=8)
    with pytest.raises(LmforgeError, match="9 tokens exceed the model's block size 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    _, cache = model(torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(LmforgeError, match="exceed the model's block size 8"):
        model(torch.zeros(2, 3, dtype=torch.long), cache)
    with pytest.raises(LmforgeError, match="the cache holds 2 sequence"):
        model(torch.zeros(3, 1, dtype=torch.long), cache)


def test_the_cache_grows_in_place_up_to_the_block_size():
    model = small_transformer(block=200)
    _, cache = model(torch.zeros(1, 3, dtype=torch.long))
    assert cache.length == 3 and cache.keys[0].shape == (1, 2, 3, 16)
    _, same = model(torch.zeros(1, 1, dtype=torch.long), cache)
    assert same is cache and cache.length == 4 and cache.keys[0].shape[2] == 64
    for _ in range(150):
        _, cache = model(torch.zeros(1, 1, dtype=torch.long), cache)
    assert cache.length == 154 and cache.keys[1].shape[2] == 200


def test_gpt2_initialisation_and_weight_tying():
    torch.manual_seed(0)
    n_layer = 6
    model = build_model(
        "transformer", vocab_size=500, n_layer=n_layer, n_head=4, n_embd=256, block_size=64
    )
    assert model.lm_head.weight is model.transformer.wte.weight
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(0.02 / math.sqrt(2 * n_layer), rel=0.05)
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert p.std().item() == pytest.approx(0.02, rel=0.05)
        elif name.endswith("bias") and "ln" not in name:
            assert torch.count_nonzero(p) == 0


def test_the_gpt2_preset_has_124m_parameters():
    shape = TRANSFORMER_PRESETS["gpt2"]["model"]
    with torch.device("meta"):
        model = build_model("transformer", vocab_size=50257, block_size=1024, **shape)
    # 124,439,808: GPT-2 small's count with the position table (nanoGPT prints 123.65M
    # because it leaves the 786,432 position weights out)
    assert model.num_parameters() == 124_439_808
    with torch.device("meta"):
        rotary = build_model(
            "transformer", vocab_size=50257, block_size=1024, **{**shape, "position": "rotary"}
        )
    assert model.num_parameters() - rotary.num_parameters() == 1024 * 768


def test_rotary_attention_scores_depend_on_relative_position_only():
    cos, sin = rotary_tables(8, 64)
    q, k = torch.randn(8), torch.randn(8)

    def score(m: int, n: int) -> float:
        rq = apply_rotary(q[None], cos[m : m + 1], sin[m : m + 1])
        rk = apply_rotary(k[None], cos[n : n + 1], sin[n : n + 1])
        return float(rq @ rk.T)

    assert score(10, 3) == pytest.approx(score(50, 43), abs=1e-5)
    assert score(10, 3) != pytest.approx(score(10, 4), abs=1e-3)
    rotated = apply_rotary(q[None], cos[7:8], sin[7:8])
    assert rotated.norm().item() == pytest.approx(q.norm().item(), rel=1e-6)


def test_decoding_reads_the_current_output_matrix():
    model = small_transformer(block=16)
    idx = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        _, cache = model(idx[:, :2])
        step, _ = model(idx[:, 2:], cache)  # one token: the transposed head copy
    with torch.no_grad():
        model.transformer.wte.weight.mul_(2.0)  # an in-place update, as an optimizer step
    with torch.inference_mode():
        _, cache = model(idx[:, :2])
        after, _ = model(idx[:, 2:], cache)
    whole, _ = model(idx)  # with gradients: the plain matrix product
    assert not torch.allclose(after, step)
    torch.testing.assert_close(after[0, -1], whole[0, -1].detach(), atol=1e-5, rtol=0)


def test_dropout_is_active_in_training_only():
    model = small_transformer(dropout=0.3)
    idx = torch.randint(0, VOCAB, (2, 10))
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])


def test_training_on_a_repeated_pattern_drives_the_loss_down():
    torch.manual_seed(0)
    model = build_model("transformer", vocab_size=8, n_layer=2, n_head=2, n_embd=32, block_size=16)
    data = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7] * 3])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        logits, _ = model(data[:, :16])
        loss = F.cross_entropy(logits.reshape(-1, 8), data[0, 1:17])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_embd": 30, "n_head": 4}, "not a multiple of --n-head 4"),
        ({"n_embd": 12, "n_head": 4, "position": "rotary"}, "rotary positions need an even"),
        ({"position": "alibi"}, "--position must be learned or rotary"),
        ({"dropout": 1.0}, "--dropout must be in"),
        ({"block_size": 0}, "--block-size must be positive"),
    ],
)
def test_impossible_shapes_are_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        build_model("transformer", vocab_size=10, **options)


def test_decoding_after_a_fused_optimizer_step_uses_the_updated_head():
    """Fused AdamW changes the head in place without bumping its version; the transposed copy
    used to decode a few rows on the CPU must not outlive the step."""
    torch.manual_seed(0)
    model = small_transformer()
    idx = torch.randint(0, model.config.vocab_size, (2, 8))
    model.eval()
    with torch.no_grad():
        model(idx)  # makes the transposed copy
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    logits, _ = model(idx)
    logits.logsumexp(-1).mean().backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        fast, _ = model(idx)
        hidden, _ = model(idx, return_hidden=True)
    torch.testing.assert_close(fast, model.lm_head(hidden))
