"""Export to Hugging Face: transformers loads the folder (GPT-2 for learned positions, GPT-NeoX
for rotary ones, Llama / Qwen2 for RMSNorm + SwiGLU) and computes the same logits."""

import pytest
import torch

from lmforge.cli import main
from lmforge.export import (
    ExportError,
    gpt2_state_dict,
    hf_architecture,
    llama_state_dict,
    neox_state_dict,
    write_hf_model,
)
from lmforge.generation import SampleConfig, generate_ids
from lmforge.models import build_model
from lmforge.runs import load_run


def random_transformer(**options):
    torch.manual_seed(0)
    shape = {"n_layer": 2, "n_head": 2, "n_embd": 16, **options}
    model = build_model("transformer", vocab_size=37, block_size=24, **shape)
    for p in model.parameters():  # far from the initialisation, so every weight matters
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


OPTIONS = [{}, {"bias": False}, {"tie_weights": False}, {"dropout": 0.1}]


@pytest.mark.parametrize("position", ["learned", "rotary"])
@pytest.mark.parametrize("options", OPTIONS)
def test_transformers_computes_the_same_logits(tmp_path, options, position):
    transformers = pytest.importorskip("transformers")
    model = random_transformer(position=position, **options)
    write_hf_model(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    architecture = {"learned": "GPT2LMHeadModel", "rotary": "GPTNeoXForCausalLM"}[position]
    assert type(hf).__name__ == architecture and hf.config.vocab_size == 37
    idx = torch.randint(0, 37, (3, 24))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


LLAMA = {"position": "rotary", "norm": "rmsnorm", "mlp": "swiglu", "bias": False}
ARCHITECTURES = [
    ("GPT2LMHeadModel", {"mlp": "gelu_tanh", "mlp_hidden": 24, "norm_eps": 0.5}),
    ("GPTNeoXForCausalLM", {"position": "rotary", "mlp": "gelu_tanh", "rope_theta": 500.0}),
    ("LlamaForCausalLM", {**LLAMA, "n_head": 4, "n_kv_head": 2, "rope_theta": 500.0}),
    ("LlamaForCausalLM", {**LLAMA, "n_head": 4, "n_kv_head": 1, "tie_weights": False}),
    ("LlamaForCausalLM", {**LLAMA, "bias": True, "mlp_hidden": 20, "norm_eps": 0.5}),
    ("LlamaForCausalLM", {**LLAMA, "bias": True, "attn_bias": False}),
    ("Qwen2ForCausalLM", {**LLAMA, "attn_bias": True, "n_head": 4, "n_kv_head": 2}),
    ("Qwen2ForCausalLM", {**LLAMA, "attn_bias": True, "tie_weights": False}),
]


@pytest.mark.parametrize(
    ("architecture", "options"), ARCHITECTURES, ids=[str(o) for _, o in ARCHITECTURES]
)
def test_each_architecture_exports_to_the_same_function(tmp_path, architecture, options):
    transformers = pytest.importorskip("transformers")
    model = random_transformer(**options)
    write_hf_model(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == architecture
    idx = torch.randint(0, 37, (3, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
        torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
        # past two positions of their KV cache too
        first = hf(idx[:, :22], use_cache=True)
        step = hf(idx[:, 22:23], cache=first.cache, use_cache=True)
        step = hf(idx[:, 23:], cache=step.cache).logits
    torch.testing.assert_close(step[:, -1], ours[:, -1], atol=1e-4, rtol=0)


def test_greedy_generation_of_an_exported_llama_picks_lmforges_tokens(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = random_transformer(**LLAMA, n_head=4, n_kv_head=2)
    write_hf_model(model, tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    prompt = [3, 1, 4, 1, 5]
    expected = [int(t) for t in generate_ids(model, prompt, SampleConfig(15, temperature=0))]
    with torch.no_grad():
        generated = hf.generate(torch.tensor([prompt]), max_new_tokens=15, do_sample=False)
    assert generated[0, len(prompt) :].tolist() == expected


def test_the_llama_state_dict_cuts_the_fused_matrices():
    model = random_transformer(**LLAMA, n_head=4, n_kv_head=1, tie_weights=False)
    tensors = llama_state_dict(model)
    attn = model.transformer.h[1].attn.c_attn.weight  # [in 16, out 16 + 4 + 4]
    layer = "model.layers.1."
    torch.testing.assert_close(tensors[layer + "self_attn.q_proj.weight"], attn[:, :16].t())
    torch.testing.assert_close(tensors[layer + "self_attn.k_proj.weight"], attn[:, 16:20].t())
    torch.testing.assert_close(tensors[layer + "self_attn.v_proj.weight"], attn[:, 20:].t())
    fc = model.transformer.h[1].mlp.c_fc.weight  # [in 16, gate 64 | up 64]
    assert fc.shape == (16, 128)
    torch.testing.assert_close(tensors[layer + "mlp.gate_proj.weight"], fc[:, :64].t())
    torch.testing.assert_close(tensors[layer + "mlp.up_proj.weight"], fc[:, 64:].t())
    assert tensors[layer + "mlp.down_proj.weight"].shape == (16, 64)
    assert "lm_head.weight" in tensors and not any(k.endswith("bias") for k in tensors)
    qwen = llama_state_dict(random_transformer(**LLAMA, attn_bias=True))
    assert {k for k in qwen if k.endswith("bias")} == {
        f"model.layers.{i}.self_attn.{p}_proj.bias" for i in range(2) for p in "qkv"
    }
    assert "lm_head.weight" not in qwen  # tied to model.embed_tokens.weight


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"norm": "rmsnorm"}, "GPT-2, the Hugging Face architecture with learned positions"),
        ({"n_head": 4, "n_kv_head": 2}, "export with --norm layernorm --mlp gelu and no"),
        ({"position": "rotary", "norm": "rmsnorm"}, "--norm rmsnorm --mlp gelu with rotary"),
        ({"position": "rotary", "mlp": "swiglu"}, "nearest that export are --norm rmsnorm"),
        ({"position": "rotary", "n_head": 4, "n_kv_head": 2}, "--mlp gelu with --n-kv-head"),
    ],
)
def test_architectures_no_hf_model_computes_are_refused_in_one_line(options, message):
    model = random_transformer(**options)
    with pytest.raises(ExportError, match=message) as error:
        hf_architecture(model.config)
    assert "\n" not in str(error.value)


def test_the_state_dict_has_gpt2_names_and_layouts():
    model = random_transformer(bias=False)
    tensors = gpt2_state_dict(model)
    assert tensors["transformer.h.1.attn.c_attn.weight"].shape == (16, 48)  # Conv1D: [in, out]
    assert tensors["transformer.h.0.mlp.c_proj.weight"].shape == (64, 16)
    assert torch.count_nonzero(tensors["transformer.h.0.mlp.c_fc.bias"]) == 0
    assert tensors["transformer.h.0.mlp.c_fc.bias"].shape == (64,)
    assert "lm_head.weight" not in tensors  # tied to transformer.wte.weight
    assert "lm_head.weight" in gpt2_state_dict(random_transformer(tie_weights=False))


def test_the_rotary_state_dict_has_gpt_neox_names_and_layouts():
    model = random_transformer(position="rotary", bias=False)
    tensors = neox_state_dict(model)
    qkv = tensors["gpt_neox.layers.1.attention.query_key_value.weight"]
    ours = model.transformer.h[1].attn.c_attn.weight.t()  # [q heads, k heads, v heads] x in
    assert qkv.shape == (48, 16)
    head = 8
    for h in range(2):  # GPT-NeoX: q, k, v of head 0, then of head 1
        for part in range(3):
            theirs = qkv[(3 * h + part) * head : (3 * h + part + 1) * head]
            torch.testing.assert_close(theirs, ours[part * 16 + h * head :][:head], rtol=0, atol=0)
    assert torch.count_nonzero(tensors["gpt_neox.layers.0.mlp.dense_h_to_4h.bias"]) == 0
    assert "embed_out.weight" not in tensors  # tied to gpt_neox.embed_in.weight
    assert "embed_out.weight" in neox_state_dict(
        random_transformer(position="rotary", tie_weights=False)
    )


def test_only_transformers_export():
    with pytest.raises(ExportError, match="export it with hf_state_dict"):
        gpt2_state_dict(random_transformer(position="rotary"))
    lstm = build_model("lstm", vocab_size=10, n_embd=4, n_hidden=4, n_layer=1)
    with pytest.raises(ExportError, match="this run is a lstm model"):
        neox_state_dict(lstm)


def train_tiny_run(run, corpus, *flags):
    code = main(
        [
            "train",
            "--corpus",
            str(corpus),
            "--model",
            "transformer",
            "--n-layer",
            "1",
            "--n-head",
            "2",
            "--n-embd",
            "16",
            "--block-size",
            "16",
            "--batch-size",
            "4",
            "--max-steps",
            "4",
            "--eval-interval",
            "4",
            "--eval-iters",
            "1",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            str(run),
            *flags,
        ]
    )
    assert code == 0


TOKENIZER_FLAGS = {
    "char": [],
    "word": ["--tokenizer", "word"],
    "bpe": ["--tokenizer", "bpe", "--vocab-size", "300", "--special", "<|endoftext|>"],
}


@pytest.mark.parametrize("kind", sorted(TOKENIZER_FLAGS))
def test_transformers_loads_the_exported_run_as_it_is(tmp_path, verse_corpus, kind):
    transformers = pytest.importorskip("transformers")
    run, out = tmp_path / "run", tmp_path / "hf"
    train_tiny_run(run, verse_corpus, "--position", "learned", *TOKENIZER_FLAGS[kind])
    assert main(["export", str(run), "--format", "hf", str(out)]) == 0
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= {p.name for p in out.iterdir()}
    lm = load_run(run, device="cpu")
    text = "to be or not to be, that is the question\nall that glitters"
    ids = lm.tokenizer.encode(text)

    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer(text)["input_ids"] == ids
    model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    window = torch.tensor([ids[-16:]])
    with torch.no_grad():
        theirs = model(window).logits
        ours, _ = lm.model(window)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    if kind == "bpe":
        eot = lm.tokenizer.special_tokens["<|endoftext|>"]
        assert model.config.eos_token_id == eot == tokenizer.eos_token_id

    generator = transformers.pipeline("text-generation", model=str(out), device="cpu")
    result = generator("to be", max_new_tokens=8, do_sample=False)
    generated = result[0]["generated_text"]
    assert generated.startswith("to be") and len(generated) > len("to be")


def test_export_command_refuses_to_clobber(tmp_path, tiny_corpus, capsys):
    pytest.importorskip("transformers")
    run, out = tmp_path / "run", tmp_path / "hf"
    train_tiny_run(run, tiny_corpus, "--position", "learned")
    assert main(["export", str(run), str(out)]) == 0
    capsys.readouterr()
    assert main(["export", str(run), str(out)]) == 2
    assert "is not empty; choose another directory or pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(run), str(out), "--overwrite"]) == 0


def test_the_readme_export_of_a_default_cpu_transformer_works(tmp_path, verse_corpus, capsys):
    """`--model transformer` on a CPU is the rotary tiny preset: it exports as GPT-NeoX, and
    transformers' cached greedy generation picks lmforge's tokens."""
    transformers = pytest.importorskip("transformers")
    run, out = tmp_path / "run", tmp_path / "hf"
    train_tiny_run(run, verse_corpus, "--tokenizer", "word")
    lm = load_run(run, device="cpu")
    assert lm.model.config.position == "rotary"
    assert main(["export", str(run), "--format", "hf", str(out)]) == 0
    assert "AutoModelForCausalLM" in capsys.readouterr().err
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = lm.tokenizer.encode("to be or not to be, that is")
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits
        ours, _ = lm.model(torch.tensor([ids]))
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    greedy = SampleConfig(max_new_tokens=6, temperature=0)
    expected = [int(t) for t in generate_ids(lm.model, ids, greedy)]
    with torch.no_grad():
        generated = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)
    assert generated[0, len(ids) :].tolist() == expected
