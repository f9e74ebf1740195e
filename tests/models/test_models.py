import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.models import build_model, model_from_config
from lmforge.runs import load_weights, save_weights
from lmforge.tokenizers import WordTokenizer

VOCAB = 50

LADDER = {
    "bigram": {},
    "context-mean": {"family": "context", "mode": "mean"},
    "context-sum": {"family": "context", "mode": "sum", "block_size": 8},
    "context-head": {"family": "context", "mode": "mean", "n_embd": 16, "block_size": 5},
    "rnn": {"n_embd": 16, "n_hidden": 32, "n_layer": 2},
    "gru": {"n_embd": 16, "n_hidden": 32, "n_layer": 2},
    "lstm": {"n_embd": 16, "n_hidden": 32, "n_layer": 2, "dropout": 0.1},
    "lstm-tied": {
        "family": "lstm",
        "n_embd": 32,
        "n_hidden": 32,
        "n_layer": 1,
        "tie_weights": True,
    },
    "transformer": {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 64, "dropout": 0.1},
    "transformer-rotary": {
        "family": "transformer",
        "n_layer": 2,
        "n_head": 4,
        "n_embd": 32,
        "block_size": 64,
        "position": "rotary",
        "bias": False,
        "tie_weights": False,
    },
}


def make(name: str, vocab: int = VOCAB):
    options = dict(LADDER[name])
    family = options.pop("family", name)
    torch.manual_seed(0)
    return build_model(family, vocab_size=vocab, **options)


@pytest.mark.parametrize("name", sorted(LADDER))
def test_loss_at_initialisation_is_log_vocab(name):
    model = make(name)
    x = torch.randint(0, VOCAB, (8, 64))
    y = torch.randint(0, VOCAB, (8, 64))
    logits, _ = model(x)
    assert logits.shape == (8, 64, VOCAB)
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1)).item()
    assert loss == pytest.approx(math.log(VOCAB), abs=0.05)


@pytest.mark.parametrize("name", sorted(LADDER))
def test_carried_state_gives_the_same_logits_as_the_whole_sequence(name):
    model = make(name).eval()
    for p in model.parameters():  # random weights so the check is not trivial
        torch.nn.init.normal_(p, std=0.3)
    idx = torch.randint(0, VOCAB, (3, 20))
    whole, _ = model(idx)
    pieces = []
    logits, state = model(idx[:, :7])  # warm up on a "prompt"
    pieces.append(logits)
    for t in range(7, 20):  # then one token at a time
        logits, state = model(idx[:, t : t + 1], state)
        pieces.append(logits)
    assert torch.allclose(torch.cat(pieces, dim=1), whole, atol=1e-5)


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("n_embd", [None, 8])
@pytest.mark.parametrize("block_size", [None, 3, 4])
def test_context_model_is_order_blind(mode, n_embd, block_size):
    tok = WordTokenizer.train("Alice drank water . then")
    torch.manual_seed(0)
    model = build_model(
        "context", vocab_size=tok.vocab_size, mode=mode, n_embd=n_embd, block_size=block_size
    )
    for p in model.parameters():
        torch.nn.init.normal_(p)
    a, _ = model(torch.tensor([tok.encode("then . Alice drank water")]))
    b, _ = model(torch.tensor([tok.encode("then . water drank Alice")]))
    assert torch.allclose(a[0, -1].softmax(-1), b[0, -1].softmax(-1), atol=1e-6)
    lstm = build_model("lstm", vocab_size=tok.vocab_size, n_embd=8, n_hidden=8, n_layer=1)
    a, _ = lstm(torch.tensor([tok.encode("Alice drank water")]))
    b, _ = lstm(torch.tensor([tok.encode("water drank Alice")]))
    assert not torch.allclose(a[0, -1], b[0, -1], atol=1e-6)  # order matters to an LSTM


def test_context_sum_and_mean_are_cumulative():
    model = build_model("context", vocab_size=4, mode="sum")
    torch.nn.init.eye_(model.embedding.weight)
    logits, _ = model(torch.tensor([[0, 1, 1, 3]]))
    assert logits[0].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 2, 0, 0], [1, 2, 0, 1]]
    model.config.mode = "mean"
    logits, _ = model(torch.tensor([[0, 1]]))
    assert logits[0].tolist() == [[1, 0, 0, 0], [0.5, 0.5, 0, 0]]


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_the_context_model_sums_a_window_of_its_block_size(mode):
    model = build_model("context", vocab_size=4, mode=mode, block_size=2)
    torch.nn.init.eye_(model.embedding.weight)
    ids = torch.tensor([[0, 1, 1, 3, 2]])
    windows = [[1, 0, 0, 0], [1, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 1], [0, 0, 1, 1]]
    expected = torch.tensor(windows, dtype=torch.float32)
    if mode == "mean":
        expected = expected / torch.tensor([1.0, 2, 2, 2, 2])[:, None]
    whole, _ = model(ids)
    assert whole[0].tolist() == expected.tolist()
    state, pieces = None, []
    for token in ids[0]:
        logits, state = model(token.view(1, 1), state)
        pieces.append(logits[0, 0])
    assert torch.stack(pieces).tolist() == expected.tolist()


def test_training_gives_the_context_model_its_window():
    from lmforge.config import resolve_config

    config = resolve_config({"out": "x", "model": {"family": "context"}})
    assert config.model["block_size"] == config.train.block_size == 16
    config = resolve_config(
        {"out": "x", "model": {"family": "context"}, "train": {"block_size": 9}}
    )
    assert config.model["block_size"] == 9


def test_a_long_context_sample_keeps_its_entropy(monkeypatch):
    from lmforge import generation
    from lmforge.generation import SampleConfig, generate_ids

    torch.manual_seed(0)
    model = build_model("context", vocab_size=40, mode="sum", block_size=16)
    torch.nn.init.normal_(model.embedding.weight, std=0.1)
    entropies = []
    original = generation.sample_next

    def recording(logits, config, generator):
        entropies.append(float(torch.distributions.Categorical(logits=logits).entropy()))
        return original(logits, config, generator)

    monkeypatch.setattr(generation, "sample_next", recording)
    cfg = SampleConfig(max_new_tokens=2000, seed=0)
    list(generate_ids(model, [0], cfg))
    early, late = sum(entropies[16:200]) / 184, sum(entropies[-200:]) / 200
    # unbounded, the sum of 2,000 embeddings halves the entropy (1.9 -> 0.95 nats)
    assert late > 0.9 * early and late > 3.0  # ln 40 = 3.7


def test_bigram_logits_are_rows_of_the_table():
    model = build_model("bigram", vocab_size=3)
    with torch.no_grad():
        model.logits_table.weight.copy_(torch.arange(9.0).reshape(3, 3))
    logits, state = model(torch.tensor([[2, 0]]))
    assert logits[0].tolist() == [[6, 7, 8], [0, 1, 2]] and state is None


def test_tied_weights_are_shared_counted_once_and_saved_once(tmp_path):
    model = make("lstm-tied")
    assert model.head.weight is model.embedding.weight
    untied = build_model("lstm", vocab_size=VOCAB, n_embd=32, n_hidden=32, n_layer=1)
    assert untied.num_parameters() - model.num_parameters() == VOCAB * 32
    save_weights(model, tmp_path / "m.safetensors")
    fresh = model_from_config(model.config_dict())
    load_weights(fresh, tmp_path / "m.safetensors")
    assert fresh.head.weight is fresh.embedding.weight
    assert torch.equal(fresh.embedding.weight, model.embedding.weight)


def flatten_like_cudnn(model):
    """Put every recurrent weight of ``model`` into one shared buffer, as ``nn.LSTM`` does on a
    GPU (``flatten_parameters``): each weight becomes a view that covers part of it."""
    rnn = model.rnn
    flat = torch.empty(sum(w.numel() for w in rnn._flat_weights))
    offset = 0
    with torch.no_grad():
        for w in rnn._flat_weights:
            view = flat[offset : offset + w.numel()].view_as(w)
            view.copy_(w)
            w.data = view
            offset += w.numel()


@pytest.mark.parametrize("name", ["lstm", "lstm-tied", "gru"])
def test_weights_in_one_shared_buffer_save_and_load(name, tmp_path):
    model = make(name)
    flatten_like_cudnn(model)
    state = model.state_dict()
    assert state["rnn.weight_ih_l0"].untyped_storage().data_ptr() == (
        state["rnn.weight_hh_l0"].untyped_storage().data_ptr()
    )
    save_weights(model, tmp_path / "m.safetensors")  # safetensors' save_model refuses this
    plain, flat = (model_from_config(model.config_dict()) for _ in range(2))
    flatten_like_cudnn(flat)  # loading into the shared views writes through them
    for fresh in (plain, flat):
        assert not torch.equal(fresh.state_dict()["rnn.weight_hh_l0"], state["rnn.weight_hh_l0"])
        load_weights(fresh, tmp_path / "m.safetensors")
        for key, value in model.state_dict().items():
            assert torch.equal(fresh.state_dict()[key], value), key


def test_options_that_do_not_apply_are_rejected():
    with pytest.raises(ConfigError, match="--n-hidden do not apply to model 'bigram'"):
        build_model("bigram", vocab_size=5, n_hidden=3)
    with pytest.raises(ConfigError, match="unknown model 'gpt5'"):
        build_model("gpt5", vocab_size=5)
    with pytest.raises(ConfigError, match="--tie-weights needs"):
        build_model("lstm", vocab_size=5, n_embd=4, n_hidden=8, tie_weights=True)
