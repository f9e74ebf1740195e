"""`lmforge import`: small random transformers models (GPT-2, Llama with grouped-query attention
and an untied head, Qwen2 with q/k/v biases, Mistral) become runs that compute transformers'
logits, decode greedily as transformers' generate does, tokenize as AutoTokenizer does, and
export back exactly. No network: the folders are built here (tests/hf_fixtures.py)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lmforge.cli import main
from lmforge.generation import SampleConfig, generate_ids
from lmforge.runs import load_run
from tests import hf_fixtures
from tests.hf_fixtures import HARD_TEXTS, TRAINING_TEXT, hf_model_folder

transformers = pytest.importorskip("transformers")

MODEL_TYPES = ["gpt2", "llama", "qwen2", "mistral"]
TEXTS = [
    "First Citizen: Before we proceed any further",
    "Zebras vex a jumping wizard in Zürich",
    "Speak, speak. Résumé 東京 🙂 12345",
]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """model type -> (Hugging Face folder, imported run directory), built on first use."""
    made: dict[str, tuple] = {}

    def get(model_type: str):
        if model_type not in made:
            root = tmp_path_factory.mktemp(model_type)
            folder = hf_model_folder(root / "hf", model_type)
            assert main(["import", str(folder), "--out", str(root / "run")]) == 0
            made[model_type] = (folder, root / "run")
        return made[model_type]

    return get


def hf_model(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


def text_batch(run) -> torch.Tensor:
    """TEXTS encoded by the run's tokenizer, cut to the shortest: [3, T]."""
    ids = [run.tokenizer.encode(text) for text in TEXTS]
    length = min(len(row) for row in ids)
    assert length >= 8
    return torch.tensor([row[:length] for row in ids])


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_logits_equal_transformers_also_when_decoding_with_the_cache(imported, model_type):
    folder, run_dir = imported(model_type)
    run = load_run(run_dir, device="cpu")
    hf = hf_model(folder)
    idx = text_batch(run)
    with torch.no_grad():
        theirs = hf(idx).logits
        ours, _ = run.model(idx)
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
        # the prompt, then three tokens one at a time through the cache
        _, cache = run.model(idx[:, :-3])
        for position in range(idx.shape[1] - 3, idx.shape[1]):
            step, cache = run.model(idx[:, position : position + 1], cache)
            torch.testing.assert_close(step[:, 0], theirs[:, position], atol=1e-4, rtol=0)


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_greedy_generation_equals_transformers_generate(imported, model_type):
    folder, run_dir = imported(model_type)
    run = load_run(run_dir, device="cpu")
    hf = hf_model(folder)
    hf.generation_config.eos_token_id = None  # 100 tokens, whatever they are
    prompt = run.tokenizer.encode("First Citizen:")
    config = SampleConfig(max_new_tokens=100, temperature=0.0, seed=0)
    ours = [int(step[0]) for step in generate_ids(run.model, prompt, config)]
    with torch.no_grad():
        theirs = hf.generate(
            torch.tensor([prompt]), max_new_tokens=100, do_sample=False, pad_token_id=0
        )[0, len(prompt) :].tolist()
    assert len(theirs) == 100
    assert ours == theirs


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])  # byte-level BPE; SentencePiece BPE
def test_the_run_tokenizes_as_autotokenizer(imported, model_type):
    folder, run_dir = imported(model_type)
    tokenizer = load_run(run_dir, device="cpu").tokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    for text in [*HARD_TEXTS, TRAINING_TEXT[:300]]:
        ids = theirs(text)["input_ids"]
        assert tokenizer.encode(text) == ids
        assert tokenizer.decode(ids) == theirs.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_the_run_tokenizer_exports_as_the_model_folder_had_it(imported, model_type, tmp_path):
    from lmforge.tokenizers.export import save_hf_tokenizer_dir
    from lmforge.tokenizers.hf import load_hf_tokenizer

    folder, run_dir = imported(model_type)
    tokenizer = load_run(run_dir, device="cpu").tokenizer
    save_hf_tokenizer_dir(tokenizer, tmp_path)
    assert load_hf_tokenizer(tmp_path) == tokenizer
    exported = transformers.AutoTokenizer.from_pretrained(tmp_path)
    original = transformers.AutoTokenizer.from_pretrained(folder)
    assert (exported.bos_token, exported.eos_token) == (original.bos_token, original.eos_token)
    for text in HARD_TEXTS:
        assert exported(text)["input_ids"] == original(text)["input_ids"]


def read_tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_import_export_import_is_exact(imported, model_type, tmp_path):
    folder, run_dir = imported(model_type)
    assert main(["export", str(run_dir), str(tmp_path / "hf")]) == 0
    exported = hf_model(tmp_path / "hf")
    idx = text_batch(load_run(run_dir, device="cpu"))
    with torch.no_grad():  # transformers reads the export as the original
        torch.testing.assert_close(exported(idx).logits, hf_model(folder)(idx).logits)
    eos_id = hf_model(folder).config.eos_token_id  # generate stops where the original does
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == eos_id
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "again")]) == 0
    first = json.loads((run_dir / "config.json").read_text())
    second = json.loads((tmp_path / "again" / "config.json").read_text())
    assert second["model"] == first["model"]
    before = read_tensors(run_dir / "model.safetensors")
    after = read_tensors(tmp_path / "again" / "model.safetensors")
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name


def test_the_run_config_says_what_was_imported(imported):
    folder, run_dir = imported("llama")
    config = json.loads((run_dir / "config.json").read_text())
    model = config["model"]
    assert (model["n_head"], model["n_kv_head"], model["n_embd"], model["mlp_hidden"]) == (
        4,
        2,
        48,
        80,
    )
    assert (model["norm"], model["mlp"], model["position"], model["tie_weights"]) == (
        "rmsnorm",
        "swiglu",
        "rotary",
        False,
    )
    assert (model["norm_eps"], model["rope_theta"], model["block_size"]) == (1e-3, 5e5, 128)
    assert config["source"]["model_type"] == "llama"
    assert config["source"]["path"] == str(folder.resolve())
    assert config["tokenizer_kind"] == "hf"
    qwen = json.loads((imported("qwen2")[1] / "config.json").read_text())["model"]
    assert (qwen["bias"], qwen["attn_bias"], qwen["tie_weights"]) == (False, True, True)


@pytest.mark.parametrize("weights", ["sharded", "bin"])
def test_sharded_safetensors_and_pytorch_bin_import_the_same_weights(tmp_path, weights):
    single = hf_model_folder(tmp_path / "single", "llama")
    other = hf_model_folder(tmp_path / weights, "llama", weights=weights)
    expected = {"sharded": "model.safetensors.index.json", "bin": "pytorch_model.bin"}[weights]
    assert (other / expected).is_file() and not (other / "model.safetensors").exists()
    for folder, out in ((single, "a"), (other, "b")):
        assert main(["import", str(folder), "--out", str(tmp_path / out)]) == 0
    a, b = (
        read_tensors(tmp_path / "a" / "model.safetensors"),
        read_tensors(tmp_path / "b" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_old_gpt2_checkpoints_without_the_transformer_prefix_import_the_same(imported, tmp_path):
    from safetensors.torch import save_file

    folder, run_dir = imported("gpt2")
    old = shutil.copytree(folder, tmp_path / "old")
    tensors = {
        name.removeprefix("transformer."): tensor
        for name, tensor in read_tensors(folder / "model.safetensors").items()
    }
    mask = torch.tril(torch.ones(1, 1, 128, 128))  # the causal masks old files carry
    tensors.update({f"h.{i}.attn.bias": mask.clone() for i in range(2)})
    save_file(tensors, str(old / "model.safetensors"))
    assert "wte.weight" in tensors and "transformer.wte.weight" not in tensors
    assert main(["import", str(old), "--out", str(tmp_path / "run")]) == 0
    again = read_tensors(tmp_path / "run" / "model.safetensors")
    before = read_tensors(run_dir / "model.safetensors")
    assert again.keys() == before.keys()
    assert all(torch.equal(again[name], before[name]) for name in before)


def test_dtype_stores_the_weights_in_bfloat16(imported, tmp_path):
    folder, run_dir = imported("llama")
    out = tmp_path / "bf16"
    assert main(["import", str(folder), "--out", str(out), "--dtype", "bfloat16"]) == 0
    full = read_tensors(run_dir / "model.safetensors")
    half = read_tensors(out / "model.safetensors")
    for name, tensor in full.items():
        assert half[name].dtype == torch.bfloat16
        assert torch.equal(half[name], tensor.to(torch.bfloat16)), name


def test_hf_names_are_downloaded_with_huggingface_hub(imported, tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    folder, _ = imported("gpt2")
    asked = []

    def snapshot_download(name, **options):
        asked.append(name)
        if name == "missing/model":
            raise OSError("Repository Not Found for url: https://huggingface.co/missing/model")
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert main(["import", "hf:tiny/gpt2", "--out", str(tmp_path / "run")]) == 0
    source = json.loads((tmp_path / "run" / "config.json").read_text())["source"]
    assert source["path"] == "hf:tiny/gpt2" and asked == ["tiny/gpt2"]
    with pytest.raises(Exception, match=r"cannot download hf:missing/model \(Repository Not"):
        from lmforge.importing import import_hf

        import_hf("hf:missing/model", tmp_path / "other")


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])  # no BOS; BOS before every text
def test_commands_work_on_an_imported_run(imported, model_type, tmp_path, capsys):
    _, run_dir = imported(model_type)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TRAINING_TEXT, encoding="utf-8")
    capsys.readouterr()
    assert main(["sample", str(run_dir), "--prompt", "First", "--length", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("First")
    assert main(["score", str(run_dir), "--prompt", "The quick", "brown", "red", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(["eval", str(run_dir), "--corpus", str(corpus), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] > 0 and result["loss"] > 0
    # no training metrics: every picture but the loss curves, and a note saying why
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "pics")]) == 0
    captured = capsys.readouterr()
    paths = captured.out.split("\n\n")[1].split()
    assert paths == [str(tmp_path / "pics" / n) for n in ("embeddings.png", "neighbours.txt")]
    assert captured.err == (
        f"lmforge: no training metrics in {run_dir} (an imported model): loss.png not drawn\n"
    )
    assert (tmp_path / "pics" / "embeddings.png").read_bytes().startswith(b"\x89PNG")


# --- errors: one line, exit 2, nothing written ---------------------------------------------


def import_error(capsys, folder, out) -> str:
    capsys.readouterr()
    assert main(["import", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmforge: error: ") and err.count("\n") == 1, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return err


@pytest.fixture
def gpt2_folder(imported, tmp_path):
    """A copy of the GPT-2 folder that a test may damage."""
    return shutil.copytree(imported("gpt2")[0], tmp_path / "hf")


def edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_an_unknown_model_type_is_one_line(gpt2_folder, tmp_path, capsys):
    edit_config(gpt2_folder, model_type="bert")
    err = import_error(capsys, gpt2_folder, tmp_path / "run")
    assert "model_type 'bert' cannot be imported" in err and "gpt2, llama" in err


@pytest.mark.parametrize("changes", [{"n_head": 5}, {"n_layer": "2"}, {"vocab_size": None}])
def test_a_config_lmforge_cannot_build_is_one_line(gpt2_folder, tmp_path, capsys, changes):
    edit_config(gpt2_folder, **changes)
    err = import_error(capsys, gpt2_folder, tmp_path / "run")
    assert "config.json" in err and ("cannot build" in err or "has no vocab_size" in err)


def test_missing_config_weights_or_tokenizer_are_one_line(gpt2_folder, tmp_path, capsys):
    err = import_error(capsys, tmp_path / "nowhere", tmp_path / "run")
    assert "model folder not found" in err
    tokenizer = (gpt2_folder / "tokenizer.json").rename(tmp_path / "tokenizer.json")
    assert "has no tokenizer.json" in import_error(capsys, gpt2_folder, tmp_path / "run")
    tokenizer.rename(gpt2_folder / "tokenizer.json")
    (gpt2_folder / "model.safetensors").unlink()
    assert "has no weights (model.safetensors" in import_error(capsys, gpt2_folder, tmp_path / "r")
    (gpt2_folder / "config.json").unlink()
    assert "has no config.json" in import_error(capsys, gpt2_folder, tmp_path / "run")


def test_a_shape_mismatch_is_one_line(gpt2_folder, tmp_path, capsys):
    edit_config(gpt2_folder, n_positions=64)
    err = import_error(capsys, gpt2_folder, tmp_path / "run")
    assert "transformer.wpe.weight" in err and "[128, 48]" in err and "[64, 48]" in err


def test_a_tokenizer_smaller_than_the_embedding_is_refused(tmp_path, capsys):
    folder = hf_model_folder(tmp_path / "hf", "gpt2")  # a tokenizer of 320 tokens
    hf_fixtures.hf_model("gpt2", 384).save_pretrained(folder)
    err = import_error(capsys, folder, tmp_path / "run")
    assert "384 embedding rows but its tokenizer only 320 tokens" in err


class Payload:
    """Not a tensor: unpickling it needs this module's code."""


def test_a_pytorch_bin_needing_arbitrary_code_is_refused(gpt2_folder, tmp_path, capsys):
    (gpt2_folder / "model.safetensors").unlink()
    torch.save({"transformer.wte.weight": Payload()}, gpt2_folder / "pytorch_model.bin")
    err = import_error(capsys, gpt2_folder, tmp_path / "run")
    assert "needs arbitrary Python code" in err


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling 'linear'"),
        ({"sliding_window": 16, "use_sliding_window": True}, "sliding attention window of 16"),
        ({"hidden_act": "gelu"}, "activation 'gelu'"),
        ({"head_dim": 16}, "head_dim 16"),
    ],
)
def test_what_lmforge_cannot_represent_is_refused(imported, tmp_path, capsys, changes, problem):
    folder = shutil.copytree(imported("llama")[0], tmp_path / "hf")
    edit_config(folder, **changes)
    err = import_error(capsys, folder, tmp_path / "run")
    assert problem in err and "cannot represent" in err


def test_an_existing_run_is_replaced_only_with_overwrite(imported, tmp_path, capsys):
    folder, _ = imported("gpt2")
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["import", str(folder), "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    assert main(["import", str(folder), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
