import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from lmforge import generation
from lmforge.cli import main, unescape
from lmforge.errors import ConfigError
from lmforge.generation import SampleConfig, generate, generate_ids, score, stream
from lmforge.models import build_model
from lmforge.tokenizers import BPETokenizer, CharTokenizer, WordTokenizer
from tests.models.test_models import LADDER, make

TEXT = "It is great to hear that you have succeeded. Ça va? 漢字 ✓\n"


CHAR_MODELS = {
    "lstm": {"n_embd": 16, "n_hidden": 32, "n_layer": 1},
    # a block of 32 so that generating 200-400 tokens slides the window many times
    "transformer": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32},
}


@pytest.fixture(params=sorted(CHAR_MODELS))
def char_model(request):
    tok = CharTokenizer.train(TEXT)
    torch.manual_seed(0)
    model = build_model(request.param, vocab_size=tok.vocab_size, **CHAR_MODELS[request.param])
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return model.eval(), tok


def record_sampled_logits(monkeypatch) -> list[torch.Tensor]:
    """Make generation append the processed logits of every step to the returned list."""
    seen = []
    original = generation.sample_next

    def recording(logits, config, gen):
        seen.append(logits.clone())
        return original(logits, config, gen)

    monkeypatch.setattr(generation, "sample_next", recording)
    return seen


def rerun_logits(model, history: torch.Tensor, start: int) -> torch.Tensor:
    """The next logits from running the window ``history[:, start:]`` from scratch."""
    return model(history[:, start:])[0][:, -1]


@pytest.mark.parametrize("name", sorted(LADDER))
def test_generation_with_carried_state_matches_rerunning_the_window(name, monkeypatch):
    model = make(name, vocab=30).eval().double()  # float64: no rounding noise in the check
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    seen = record_sampled_logits(monkeypatch)
    prompt = [1, 2, 3, 4, 5]
    steps = 150  # past the Transformers' block of 64: the window slides twice
    cfg = SampleConfig(max_new_tokens=steps, temperature=1.0, seed=0, num_samples=2)
    tokens = torch.stack(list(generate_ids(model, prompt, cfg)), dim=1)
    history = torch.tensor([prompt] * 2)
    start = generation.prompt_window(len(prompt), model.max_context)
    for step in range(steps):
        with torch.no_grad():
            expected = rerun_logits(model, history, start)
        torch.testing.assert_close(seen[step], expected.float(), atol=1e-6, rtol=1e-6)
        history = torch.cat([history, tokens[:, step : step + 1]], dim=1)
        start = generation.slide_window(start, history.shape[1], model.max_context)


def test_seeded_sampling_is_reproducible(char_model):
    model, tok = char_model
    cfg = SampleConfig(max_new_tokens=60, seed=7, num_samples=3)
    first = generate(model, tok, "It is", cfg)
    assert first == generate(model, tok, "It is", cfg)
    assert len(set(first)) > 1  # the samples of a batch differ
    other = generate(model, tok, "It is", SampleConfig(max_new_tokens=60, seed=8, num_samples=3))
    assert other != first


def test_top_k_one_is_greedy(char_model):
    model, tok = char_model
    greedy = generate(model, tok, "It", SampleConfig(max_new_tokens=50, temperature=0))
    top1 = generate(model, tok, "It", SampleConfig(max_new_tokens=50, top_k=1, seed=3))
    assert top1 == greedy


def test_disabled_filters_equal_plain_sampling(char_model):
    model, tok = char_model
    plain = generate(model, tok, "It", SampleConfig(max_new_tokens=80, seed=5))
    off = generate(model, tok, "It", SampleConfig(max_new_tokens=80, seed=5, top_k=0, top_p=1.0))
    assert off == plain


def test_top_p_and_top_k_filter_the_distribution():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    probs = logits.softmax(-1)[0]
    kept = generation.process_logits(logits, SampleConfig(top_p=float(probs[0]) + 1e-3))
    assert torch.isfinite(kept[0]).tolist() == [True, True, False, False]
    kept = generation.process_logits(logits, SampleConfig(top_p=float(probs[0]) - 1e-3))
    assert torch.isfinite(kept[0]).tolist() == [True, False, False, False]
    kept = generation.process_logits(logits, SampleConfig(top_k=3))
    assert torch.isfinite(kept[0]).tolist() == [True, True, True, False]


def test_repetition_penalty_lowers_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 2.0]])
    seen = torch.tensor([[True, True, False]])
    out = generation.process_logits(logits, SampleConfig(repetition_penalty=2.0), seen)
    assert out.tolist() == [[1.0, -2.0, 2.0]]


def test_stop_strings_end_output_exactly_before_the_stop(char_model):
    model, tok = char_model
    cfg = SampleConfig(max_new_tokens=400, seed=1, num_samples=4)
    free = generate(model, tok, "It", cfg)
    stop = next(c for c in "aeiost " if all(c in text for text in free))
    stopped = generate(
        model, tok, "It", SampleConfig(max_new_tokens=400, seed=1, num_samples=4, stop=[stop])
    )
    for full, cut in zip(free, stopped, strict=True):
        assert cut == full[: full.index(stop)]
    one = SampleConfig(max_new_tokens=400, seed=1, stop=[stop + stop, stop])
    assert "".join(stream(model, tok, "It", one)) == generate(model, tok, "It", one)[0]
    assert stop not in generate(model, tok, "It", one)[0]


def test_stream_joins_to_the_full_text_with_multibyte_characters(char_model):
    model, tok = char_model
    cfg = SampleConfig(max_new_tokens=200, seed=2)
    pieces = list(stream(model, tok, "漢", cfg))
    assert "".join(pieces) == generate(model, tok, "漢", cfg)[0]
    assert any(ord(c) > 127 for c in "".join(pieces))
    for piece in pieces:
        piece.encode("utf-8")  # every piece is valid text on its own


def test_scores_of_all_single_token_continuations_sum_to_one(char_model):
    model, tok = char_model
    results = score(model, tok, "It is great", tok.chars, join="")
    assert all(len(r.tokens) == 1 for r in results)
    assert math.fsum(r.prob for r in results) == pytest.approx(1.0, abs=1e-5)
    assert [r.logprob for r in results] == sorted((r.logprob for r in results), reverse=True)


def test_score_of_a_continuation_is_the_sum_of_its_token_logprobs():
    tok = WordTokenizer.train("It is great to hear that you have succeeded potato is round am good")
    torch.manual_seed(0)
    model = build_model("lstm", vocab_size=tok.vocab_size, n_embd=8, n_hidden=8, n_layer=1)
    prompt = "It is great to hear that"
    (result,) = score(model, tok, prompt, ["you have succeeded"])
    ids = tok.encode(prompt + " you have succeeded")
    with torch.no_grad():
        logp = model(torch.tensor([ids[:-1]]))[0][0].log_softmax(-1)
    n = len(tok.encode(prompt))
    expected = sum(float(logp[t - 1, ids[t]]) for t in range(n, len(ids)))
    assert result.logprob == pytest.approx(expected, abs=1e-5)
    assert [t for t, _ in result.tokens] == ["you", "have", "succeeded"]
    assert result.prob == pytest.approx(math.exp(expected))


WORDS = "It is great to hear that you have succeeded. (Really?) Yes, it is!\nGreat news.\n"
TOKENIZERS = {
    "char": lambda: CharTokenizer.train(WORDS),
    "word": lambda: WordTokenizer.train(WORDS),
    "word-whitespace": lambda: WordTokenizer.train(WORDS, split="whitespace"),
    "bpe": lambda: BPETokenizer.train(WORDS + "Ça va? 漢字 ✓", vocab_size=300),
}


def random_lstm(vocab_size: int, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("lstm", vocab_size=vocab_size, n_embd=8, n_hidden=16, n_layer=1)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return model.eval()


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
@pytest.mark.parametrize("prompt", ["It is great", ""])
def test_prompt_and_sample_print_as_the_decoded_token_sequence(kind, prompt):
    tok = TOKENIZERS[kind]()
    model = random_lstm(tok.vocab_size)
    cfg = SampleConfig(max_new_tokens=40, seed=4, num_samples=3)
    ids = generation.prompt_ids(tok, prompt)
    new = torch.stack(list(generate_ids(model, ids, cfg)), dim=1).tolist()
    completions = generate(model, tok, prompt, cfg)
    printed_prompt = prompt or "\n"  # an empty prompt starts from a line break
    assert tok.decode(ids) == printed_prompt
    for sample, completion in zip(new, completions, strict=True):
        assert printed_prompt + completion == tok.decode(ids + sample)
    one = dataclasses.replace(cfg, num_samples=1)
    (sample,) = torch.stack(list(generate_ids(model, ids, one)), dim=1).tolist()
    assert printed_prompt + "".join(stream(model, tok, prompt, one)) == tok.decode(ids + sample)


def test_a_normalising_tokenizer_prints_the_prompt_as_typed_and_the_sample_in_context():
    tok = WordTokenizer.train(WORDS, lowercase=True)
    model = random_lstm(tok.vocab_size)
    cfg = SampleConfig(max_new_tokens=30, seed=1)
    prompt = "It  is GREAT"
    ids = generation.prompt_ids(tok, prompt)
    new = [int(t) for t in generate_ids(model, ids, cfg)]
    decoded = tok.decode(ids + new)
    assert decoded.startswith("it is great ")
    (completion,) = generate(model, tok, prompt, cfg)
    assert completion == decoded[len("it is great") :]


@pytest.fixture(scope="module")
def word_run(tmp_path_factory) -> str:
    """A bigram trained for a few steps on word-level verse (lines end in line breaks)."""
    folder = tmp_path_factory.mktemp("word-run")
    corpus = folder / "verse.txt"
    lines = ["to be or not to be, that is the question", "it is great to hear that you did it"]
    corpus.write_text("\n".join(lines[i % 3 % 2] for i in range(300)) + "\n", encoding="utf-8")
    run = folder / "run"
    train = ["train", "--corpus", str(corpus), "--tokenizer", "word", "--model", "bigram"]
    steps = ["--max-steps", "30", "--eval-interval", "30", "--eval-iters", "1"]
    options = ["--learning-rate", "0.1", "--batch-size", "8", "--block-size", "16"]
    assert main([*train, *steps, *options, "--out", str(run), "--device", "cpu", "--quiet"]) == 0
    return str(run)


def test_the_sample_command_prints_prompt_and_sample_as_decoded(word_run, capsys):
    from lmforge.runs import load_run

    run = load_run(word_run, device="cpu")
    ids = generation.prompt_ids(run.tokenizer, "it is great")
    cfg = SampleConfig(max_new_tokens=12, seed=5)
    expected = run.tokenizer.decode(ids + [int(t) for t in generate_ids(run.model, ids, cfg)])
    assert expected.startswith("it is great ")
    sample = ["sample", word_run, "--prompt", "it is great", "--length", "12", "--seed", "5"]
    for extra in ([], ["--stream"]):
        capsys.readouterr()
        assert main([*sample, *extra]) == 0
        assert capsys.readouterr().out == expected + "\n"


def test_stop_strings_on_the_command_line_understand_escapes(word_run, capsys):
    sample = ["sample", word_run, "--prompt", "to be", "--length", "60", "--seed", "2"]
    capsys.readouterr()
    assert main(sample) == 0
    free = capsys.readouterr().out
    line_end = free.index("\n")
    assert line_end < len(free) - 1  # the free sample goes on past a line break
    for stop in ("\\n", "\\x0a", "\\u000A"):
        for extra in ([], ["--stream"]):
            assert main([*sample, "--stop", stop, *extra]) == 0
            assert capsys.readouterr().out == free[:line_end] + "\n"
    assert main([*sample, "--stop", "\\q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown escape \\q" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("\\n\\n", "\n\n"),
        ("\\t|\\r", "\t|\r"),
        ("a\\\\nb", "a\\nb"),
        ("\\\"\\'", "\"'"),
        ("\\xe9\\u00e9\\U0001F600", "éé😀"),
        ("plain", "plain"),
    ],
)
def test_unescape_decodes_the_usual_escapes(typed, meant):
    assert unescape(typed) == meant


@pytest.mark.parametrize("typed", ["\\q", "end\\", "\\x4", "\\xZZ", "\\u12", "\\U00110000"])
def test_unescape_rejects_a_bad_escape_in_one_line(typed):
    with pytest.raises(ConfigError, match="--stop") as error:
        unescape(typed)
    assert "\n" not in str(error.value)


def test_temperature_divides_the_logits():
    logits = torch.tensor([[1.0, 2.0, -4.0]])
    out = generation.process_logits(logits, SampleConfig(temperature=0.5))
    assert out.tolist() == [[2.0, 4.0, -8.0]]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sampled_frequencies_follow_the_tempered_distribution(temperature):
    model = build_model("bigram", vocab_size=3)
    with torch.no_grad():
        model.logits_table.weight.copy_(torch.tensor([0.0, 1.0, 2.0]).expand(3, 3))
    cfg = SampleConfig(max_new_tokens=1, temperature=temperature, num_samples=20_000, seed=0)
    (drawn,) = list(generate_ids(model, [0], cfg))
    frequencies = torch.bincount(drawn, minlength=3) / cfg.num_samples
    expected = (torch.tensor([0.0, 1.0, 2.0]) / temperature).softmax(-1)
    torch.testing.assert_close(frequencies, expected, atol=0.015, rtol=0)


def test_the_stop_filter_holds_back_a_partial_stop_string():
    stop_filter = generation.StopFilter(["\n\n"])
    assert [stop_filter.feed(p) for p in ["ab", "\n", "c\n", "\nd"]] == ["ab", "", "\nc", ""]
    assert stop_filter.stopped and stop_filter.finish() == ""
    unstopped = generation.StopFilter(["\n\n"])
    assert [unstopped.feed(p) for p in ["ab", "\n"]] + [unstopped.finish()] == ["ab", "", "\n"]


def test_a_stop_string_spanning_tokens_never_reaches_the_stream(char_model):
    model, tok = char_model
    cfg = SampleConfig(max_new_tokens=100, seed=3)
    (free,) = generate(model, tok, "It", cfg)
    stop = free[20:23]  # three tokens: the first two are held back until the third decides
    expected = free[: free.index(stop)]
    stopped = dataclasses.replace(cfg, stop=[stop])
    pieces = list(stream(model, tok, "It", stopped))
    assert "".join(pieces) == expected
    assert generate(model, tok, "It", stopped) == [expected]


def test_bits_per_character_count_the_tokens_per_character(word_run, capsys):
    from lmforge.runs import load_run

    capsys.readouterr()
    assert main(["eval", word_run, "--split", "all", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    run = load_run(word_run, device="cpu")
    text = (Path(word_run).parent / "verse.txt").read_text(encoding="utf-8")
    tokens = len(run.tokenizer.encode(text))
    assert tokens < len(text) / 3  # words: far fewer tokens than characters
    assert result["tokens"] == tokens - 1
    expected = result["loss"] * tokens / len(text) / math.log(2)
    assert result["bits_per_char"] == pytest.approx(expected, rel=1e-12)


def test_bits_per_character_of_a_result_with_four_characters_per_token():
    from lmforge.evaluation import EvalResult

    result = EvalResult(loss=2.0, tokens=9, chars=40, stream_tokens=10)
    assert result.bits_per_char == pytest.approx(2.0 / 4 / math.log(2), rel=1e-15)
