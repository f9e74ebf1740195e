"""The Transformer: its cache, its sliding window, its initialisation and its shapes.

The interface checks every model shares (loss at initialisation ≈ ln I, carried state equals
the whole sequence, cached generation equals re-running the window) run on the Transformer
through LADDER in test_models.py; these are the Transformer's own."""

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lmforge import generation
from lmforge.config import TRANSFORMER_PRESETS
from lmforge.errors import ConfigError, LmforgeError
from lmforge.generation import SampleConfig, generate_ids
from lmforge.models import build_model
from lmforge.models.base import model_from_config
from lmforge.models.transformer import (
    RMSNorm,
    TransformerConfig,
    apply_rotary,
    padded_transpose,
    rotary_tables,
)
from tests.test_generation import record_sampled_logits

VOCAB = 40


def small_transformer(position: str = "learned", block: int = 32, **options):
    torch.manual_seed(0)
    shape = {"n_layer": 2, "n_head": 2, "n_embd": 32, **options}
    model = build_model(
        "transformer", vocab_size=VOCAB, block_size=block, position=position, **shape
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


@pytest.mark.parametrize("return_hidden", [False, True])
def test_a_fused_step_taken_in_eval_mode_also_refreshes_the_head(return_hidden):
    """No switch of mode here: the gradient-enabled forward before the step drops the copy,
    also when the loss multiplies the hidden states by the head itself (the fused loss)."""
    torch.manual_seed(0)
    model = small_transformer()
    idx = torch.randint(0, model.config.vocab_size, (2, 8))
    with torch.no_grad():
        model(idx)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    out, _ = model(idx, return_hidden=return_hidden)
    logits = out @ model.lm_head.weight.t() if return_hidden else out
    logits.logsumexp(-1).mean().backward()
    optimizer.step()
    with torch.no_grad():
        fast, _ = model(idx)
        hidden, _ = model(idx, return_hidden=True)
    torch.testing.assert_close(fast, model.lm_head(hidden))


def test_padded_transpose_pads_the_rows_of_the_transposed_matrix_with_zeros():
    matrix = torch.arange(6.0).view(3, 2)
    padded = padded_transpose(matrix, 4)
    assert padded.tolist() == [[0.0, 2.0, 4.0, 0.0], [1.0, 3.0, 5.0, 0.0]]
    assert padded.is_contiguous() and padded_transpose(matrix, 3).shape == (2, 3)


@pytest.mark.parametrize("rows", [1, 5])
def test_the_decoding_head_of_an_odd_vocabulary_gives_exactly_its_logits(rows):
    """The padded copy's extra columns are cut off; the rest is x · Wᵀ."""
    model = build_model("transformer", vocab_size=41, n_layer=1, n_head=2, n_embd=32).eval()
    idx = torch.randint(0, 41, (1, rows), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        fast, _ = model(idx)
        hidden, _ = model(idx, return_hidden=True)
    assert fast.shape == (1, rows, 41)
    torch.testing.assert_close(fast, model.lm_head(hidden), atol=1e-6, rtol=0)


def test_generation_reuses_the_transposed_head_of_a_model_in_eval_mode():
    """Each generate call puts the model in eval mode; a model already there keeps its copy
    of the head (for GPT-2 124M, making it costs as much as a dozen decoding steps)."""
    model = small_transformer()
    config = SampleConfig(max_new_tokens=3, temperature=0.0)
    first = [int(t) for t in torch.cat(list(generate_ids(model, [1, 2], config)))]
    copy = model._head_copy[1]
    second = [int(t) for t in torch.cat(list(generate_ids(model, [1, 2], config)))]
    assert model._head_copy[1] is copy
    assert first == second


ARCHITECTURES = [
    {"norm": norm, "mlp": mlp, "n_kv_head": kv, "position": position, **biases}
    for norm, mlp, kv, position, biases in itertools.product(
        ["layernorm", "rmsnorm"],
        ["gelu", "gelu_tanh", "swiglu"],
        [None, 2, 1],
        ["learned", "rotary"],
        [{"bias": True}, {"bias": False, "attn_bias": True}],
    )
]


@pytest.mark.parametrize("options", ARCHITECTURES, ids=lambda o: "-".join(map(str, o.values())))
def test_cached_decoding_equals_the_whole_forward_for_every_architecture(options):
    model = small_transformer(n_head=4, **options)
    idx = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole, _ = model(idx)
        pieces, cache = [], None
        for start, end in [(0, 7), (7, 8), (8, 9), (9, 14), (14, 15), (15, 20)]:
            logits, cache = model(idx[:, start:end], cache)  # a prompt, tokens, a chunk
            pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, atol=2e-5, rtol=0)
    heads = options["n_kv_head"] or 4
    assert cache.keys[0].shape[:2] == (2, heads) and cache.length == 20


def test_grouped_query_attention_equals_attention_with_repeated_keys_and_values():
    grouped = small_transformer(n_head=4, n_kv_head=2, position="rotary", bias=False)
    full = small_transformer(n_head=4, position="rotary", bias=False)
    fitting = {n: w for n, w in grouped.state_dict().items() if "c_attn" not in n}
    full.load_state_dict(fitting, strict=False)
    for g, f in zip(grouped.transformer.h, full.transformer.h, strict=True):
        q, k, v = g.attn.c_attn.weight.detach().split([32, 16, 16], dim=1)
        # key/value head j serves query heads 2j and 2j + 1
        k, v = (t.view(32, 2, 8).repeat_interleave(2, dim=1).reshape(32, 32) for t in (k, v))
        with torch.no_grad():
            f.attn.c_attn.weight.copy_(torch.cat([q, k, v], dim=1))
    assert grouped.transformer.h[0].attn.c_attn.weight.shape == (32, 64)
    idx = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(grouped(idx)[0], full(idx)[0], atol=1e-5, rtol=0)
    assert grouped.num_parameters() == full.num_parameters() - 2 * 2 * 32 * 16


def test_rmsnorm_divides_by_the_root_mean_square_in_float32():
    norm = RMSNorm(4, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    x = torch.tensor([[1.0, -2.0, 3.0, -4.0]])  # mean of squares 7.5
    expected = x / math.sqrt(7.5 + 1e-5) * torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(norm(x), expected, atol=1e-6, rtol=0)
    assert norm(x.bfloat16()).dtype == torch.bfloat16
    torch.testing.assert_close(norm(x.bfloat16()).float(), expected, atol=3e-2, rtol=0)
    model = small_transformer(norm="rmsnorm", bias=True)
    assert isinstance(model.transformer.ln_f, RMSNorm) and model.transformer.ln_f.eps == 1e-5
    assert not any("ln" in name and "bias" in name for name, _ in model.named_parameters())


def test_the_mlp_kinds_compute_their_formulas():
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(4))
    for kind in ("gelu", "gelu_tanh", "swiglu"):
        mlp = small_transformer(mlp=kind, bias=False, mlp_hidden=24).transformer.h[0].mlp
        w_in, w_out = mlp.c_fc.weight, mlp.c_proj.weight
        if kind == "swiglu":
            assert w_in.shape == (32, 48)  # gate and up side by side
            gate, up = x @ w_in[:, :24], x @ w_in[:, 24:]
            expected = (gate * torch.sigmoid(gate) * up) @ w_out
        else:
            h = x @ w_in
            if kind == "gelu":
                h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
            else:
                h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
            expected = h @ w_out
        torch.testing.assert_close(mlp(x), expected, atol=1e-4, rtol=1e-5)
    assert TransformerConfig(vocab_size=1, n_embd=192, mlp="swiglu").mlp_width == 512
    assert TransformerConfig(vocab_size=1, n_embd=100, mlp="swiglu").mlp_width == 320
    assert TransformerConfig(vocab_size=1, n_embd=100).mlp_width == 400


def test_rope_theta_sets_the_rotary_base():
    _, sin = rotary_tables(4, 3, base=500000.0)
    assert sin[1, 1].item() == pytest.approx(math.sin(500000.0 ** (-2 / 4)), rel=1e-6)
    assert sin[1, 0].item() == pytest.approx(math.sin(1.0), rel=1e-6)
    model = small_transformer(position="rotary", rope_theta=500000.0)
    torch.testing.assert_close(model.rope_sin, rotary_tables(16, 32, base=500000.0)[1])


def test_a_model_config_saved_before_the_architecture_options_loads_unchanged():
    old = {  # a config.json "model" table written before norm, mlp, n_kv_head ... existed
        "family": "transformer",
        "vocab_size": 65,
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        "block_size": 16,
        "dropout": 0.0,
        "bias": False,
        "tie_weights": True,
        "position": "rotary",
    }
    model = model_from_config(old)
    config = model.config
    assert (config.norm, config.mlp, config.kv_heads, config.mlp_width) == (
        "layernorm",
        "gelu",
        2,
        128,
    )
    assert config.rope_theta == 10000.0 and config.norm_eps == 1e-5 and not config.qkv_bias
    assert isinstance(model.transformer.h[0].ln_1, torch.nn.LayerNorm)
    assert {n: tuple(p.shape) for n, p in model.state_dict().items() if ".h.0." in n} == {
        "transformer.h.0.ln_1.weight": (32,),
        "transformer.h.0.attn.c_attn.weight": (32, 96),
        "transformer.h.0.attn.c_proj.weight": (32, 32),
        "transformer.h.0.ln_2.weight": (32,),
        "transformer.h.0.mlp.c_fc.weight": (32, 128),
        "transformer.h.0.mlp.c_proj.weight": (128, 32),
    }
    assert model_from_config(model.config_dict()).config == config


@pytest.mark.parametrize(
    ("preset", "count"), [("tiny", 1_783_680), ("small", 10_745_088), ("gpt2", 85_892_352)]
)
def test_the_presets_keep_their_parameter_counts(preset, count):
    shape = TRANSFORMER_PRESETS[preset]["model"]
    block = TRANSFORMER_PRESETS[preset]["train"]["block_size"]
    with torch.device("meta"):
        model = build_model("transformer", vocab_size=65, block_size=block, **shape)
    assert model.num_parameters() == count  # as counted before the architecture options
    assert dataclasses.asdict(model.config)["norm"] == "layernorm"


def test_the_llama_preset_is_llama_shaped_at_the_tiny_presets_compute():
    def multiply_adds(model):  # per token, the block matrices (the head is the same in both)
        return sum(
            p.numel()
            for n, p in model.named_parameters()
            if n.endswith("c_fc.weight")
            or n.endswith("c_attn.weight")
            or n.endswith("c_proj.weight")
        )

    shapes = {name: TRANSFORMER_PRESETS[name]["model"] for name in ("tiny", "llama")}
    tiny, llama = (build_model("transformer", vocab_size=65, **s) for s in shapes.values())
    config = llama.config
    assert (config.norm, config.mlp, config.position, config.bias) == (
        "rmsnorm",
        "swiglu",
        "rotary",
        False,
    )
    assert config.kv_heads < config.n_head
    assert 0.9 < multiply_adds(llama) / multiply_adds(tiny) <= 1.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_head": 4, "n_kv_head": 3}, "--n-head 4 is not a multiple of --n-kv-head 3"),
        ({"norm": "batchnorm"}, "--norm must be layernorm or rmsnorm"),
        ({"mlp": "relu"}, "--mlp must be gelu, gelu_tanh or swiglu"),
        ({"mlp_hidden": 0}, "--mlp-hidden must be positive"),
        ({"norm_eps": 0.0}, "--norm-eps must be positive"),
        ({"rope_theta": -1.0}, "--rope-theta must be positive"),
    ],
)
def test_impossible_architecture_options_are_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        build_model("transformer", vocab_size=10, **options)


def test_the_architecture_flags_reach_the_model_configuration(tmp_path):
    from lmforge.cli import build_parser
    from lmforge.config import resolve_config
    from lmforge.train_flags import ALL_TRAIN_FLAGS, nested_options

    flags = "--preset llama --n-kv-head 3 --mlp-hidden 100 --rope-theta 5e5 --norm-eps 1e-6"
    flags += " --no-tie-weights --attn-bias --device cpu"
    args = build_parser().parse_args(["train", "--model", "transformer", *flags.split()])
    overrides = nested_options(args, ALL_TRAIN_FLAGS) | {"out": str(tmp_path)}
    model = resolve_config(overrides).model
    assert model["n_kv_head"] == 3 and model["n_head"] == 6 and model["mlp"] == "swiglu"
    assert model["mlp_hidden"] == 100 and model["rope_theta"] == 5e5
    assert model["norm_eps"] == 1e-6 and model["norm"] == "rmsnorm"
    assert model["tie_weights"] is False and model["attn_bias"] is True
    args = build_parser().parse_args(["train", "--norm", "layernorm", "--mlp", "gelu_tanh"])
    assert nested_options(args, ALL_TRAIN_FLAGS)["model"] == {
        "norm": "layernorm",
        "mlp": "gelu_tanh",
    }
    args = build_parser().parse_args(["train", "--no-bias", "--tie-weights"])
    assert nested_options(args, ALL_TRAIN_FLAGS)["model"] == {"bias": False, "tie_weights": True}
