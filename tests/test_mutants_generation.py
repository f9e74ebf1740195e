"""Generation and scoring with models whose output is known exactly (found by mutation testing).

A bigram that always predicts the next character of a cycle makes greedy generation spell a
known text, so the streamed pieces, the held-back stop prefixes and the scores can be checked
for their exact values rather than against another run of the same code.
"""

import math

import pytest
import torch

from lmforge.generation import (
    SampleConfig,
    continuation_ids,
    generate,
    process_logits,
    score,
    stream,
)
from lmforge.models import build_model
from lmforge.tokenizers import CharTokenizer, WordTokenizer

CYCLE = "abcd"
GREEDY = SampleConfig(max_new_tokens=7, temperature=0)


def cycle_model(tokenizer, cycle, certainty: float = 20.0):
    """A bigram whose most likely next token after cycle[i] is cycle[i + 1] (cyclically)."""
    model = build_model("bigram", vocab_size=tokenizer.vocab_size)
    ids = tokenizer.encode(cycle)
    with torch.no_grad():
        for a, b in zip(ids, ids[1:] + ids[:1], strict=True):
            model.logits_table.weight[a, b] = certainty
    return model.eval()


@pytest.fixture
def char_cycle():
    tok = CharTokenizer.train(CYCLE + " \nx")
    return cycle_model(tok, CYCLE), tok


def test_greedy_generation_spells_the_cycle(char_cycle):
    model, tok = char_cycle
    assert generate(model, tok, "a", GREEDY) == ["bcdabcd"]
    assert list(stream(model, tok, "a", GREEDY)) == list("bcdabcd")
    assert generate(model, tok, "a", SampleConfig(max_new_tokens=0)) == [""]


def test_stream_gives_one_sample_whatever_num_samples_says(char_cycle):
    model, tok = char_cycle
    config = SampleConfig(max_new_tokens=5, temperature=0, num_samples=3)
    assert generate(model, tok, "a", config) == ["bcdab"] * 3
    assert "".join(stream(model, tok, "a", config)) == "bcdab"


@pytest.mark.parametrize(
    ("stops", "length", "pieces"),
    [
        # "c" may begin "cx": it is held back until "d" shows it does not
        (["cx"], 7, ["b", "cd", "a", "b", "cd"]),
        # the tail held back when generation ends is given out at the end
        (["cx"], 6, ["b", "cd", "a", "b", "c"]),
        # a longer stop holds back a longer tail
        (["bcx"], 7, ["bcd", "a", "bcd"]),
        (["bcx", "cx"], 7, ["bcd", "a", "bcd"]),
        # the stop fires: nothing of it, nor after it, is shown
        (["da"], 7, ["b", "c"]),
        (["zz", "ab"], 7, ["b", "c", "d"]),
    ],
)
def test_stream_holds_back_what_may_become_a_stop(char_cycle, stops, length, pieces):
    model, tok = char_cycle
    config = SampleConfig(max_new_tokens=length, temperature=0, stop=stops)
    assert list(stream(model, tok, "a", config)) == pieces
    assert generate(model, tok, "a", config) == ["".join(pieces)]


def test_a_stop_inside_one_word_cuts_at_its_first_occurrence():
    tok = WordTokenizer(["go", "xabab", "\n"])
    model = cycle_model(tok, "go xabab")
    (free,) = generate(model, tok, "go", SampleConfig(max_new_tokens=4, temperature=0))
    assert free.count("ab") == 4
    config = SampleConfig(max_new_tokens=4, temperature=0, stop=["ab"])
    assert generate(model, tok, "go", config) == [free[: free.index("ab")]]


def test_samples_stop_each_at_their_own_stop():
    tok = CharTokenizer.train("abcd")
    model = build_model("bigram", vocab_size=tok.vocab_size)  # uniform: samples differ
    config = SampleConfig(max_new_tokens=60, seed=0, num_samples=4, stop=["d"])
    texts = generate(model, tok, "a", config)
    free = generate(model, tok, "a", SampleConfig(max_new_tokens=60, seed=0, num_samples=4))
    assert texts == [t[: t.index("d")] for t in free]
    assert len(set(texts)) > 1


def test_temperature_divides_the_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    assert process_logits(logits, SampleConfig(temperature=2.0)).tolist() == [[1.0, -0.5, 0.25]]
    assert process_logits(logits, SampleConfig(temperature=1.0)).tolist() == logits.tolist()
    assert process_logits(logits, SampleConfig(temperature=0)).tolist() == logits.tolist()


def test_sampling_follows_the_temperature(char_cycle):
    """At temperature 1 a certainty of ln 3 leaves 1/(1 + 6/3) of the mass off the cycle's
    next token (6 other tokens of weight 1 against 3); at temperature 0.25 almost none."""
    _, tok = char_cycle
    model = cycle_model(tok, CYCLE, certainty=math.log(3.0))
    off_cycle = {}
    for temperature in (1.0, 0.25):
        config = SampleConfig(max_new_tokens=1, temperature=temperature, num_samples=4000, seed=0)
        texts = generate(model, tok, "a", config)
        off_cycle[temperature] = sum(t != "b" for t in texts) / len(texts)
    assert off_cycle[1.0] == pytest.approx(6 / 9, abs=0.03)
    assert off_cycle[0.25] == pytest.approx(6 / (6 + 3**4), abs=0.02)


def test_top_k_and_top_p_keep_exactly_the_top_tokens():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    assert process_logits(logits, SampleConfig(top_k=2)).tolist() == [
        [-math.inf, 4.0, 3.0, -math.inf]
    ]
    assert process_logits(logits, SampleConfig(top_k=3)).tolist() == [[-math.inf, 4.0, 3.0, 2.0]]
    assert process_logits(logits, SampleConfig(top_k=4)).tolist() == logits.tolist()
    probs = logits.softmax(-1)[0].tolist()
    # top-p keeps the smallest set of the most likely tokens whose mass reaches p
    kept = process_logits(logits, SampleConfig(top_p=probs[1] + probs[2] + 1e-3))
    assert kept.tolist() == [[-math.inf, 4.0, 3.0, 2.0]]
    kept = process_logits(logits, SampleConfig(top_p=probs[1] + probs[2] - 1e-3))
    assert kept.tolist() == [[-math.inf, 4.0, 3.0, -math.inf]]


def test_repetition_penalty_applies_only_with_a_seen_mask():
    logits = torch.tensor([[2.0, -1.0]])
    config = SampleConfig(repetition_penalty=2.0)
    assert process_logits(logits, config).tolist() == [[2.0, -1.0]]
    seen = torch.tensor([[True, True]])
    assert process_logits(logits, config, seen).tolist() == [[1.0, -2.0]]
    assert process_logits(logits, SampleConfig(), seen).tolist() == [[2.0, -1.0]]


@pytest.mark.parametrize(
    ("prompt", "continuation", "join", "tokens"),
    [
        ("ab", "cd", " ", [" ", "c", "d"]),  # a space between two words
        ("ab", "cd", "", ["c", "d"]),
        ("ab ", "cd", " ", ["c", "d"]),  # the prompt's own space is enough
        ("ab", " cd", " ", [" ", "c", "d"]),  # so is the continuation's
        ("ab", "", " ", []),
    ],
)
def test_scored_tokens_spell_the_continuation(char_cycle, prompt, continuation, join, tokens):
    model, tok = char_cycle
    (result,) = score(model, tok, prompt, [continuation], join=join)
    assert [t for t, _ in result.tokens] == tokens
    if not tokens:
        assert (result.logprob, result.prob) == (0.0, 1.0)


def test_default_join_is_one_space(char_cycle):
    model, tok = char_cycle
    (result,) = score(model, tok, "ab", ["cd"])
    assert [t for t, _ in result.tokens] == [" ", "c", "d"]
    assert continuation_ids(tok, "ab", "cd") == (tok.encode("ab"), tok.encode(" cd"))
    assert continuation_ids(tok, "", "cd") == (tok.encode("\n"), tok.encode("cd"))


def test_score_of_the_cycle_is_exact(char_cycle):
    """After "a" the bigram gives "b" the probability e^2 / (e^2 + 6)."""
    _, tok = char_cycle
    model = cycle_model(tok, CYCLE, certainty=2.0)
    (result,) = score(model, tok, "a", ["bcd"], join="")
    step = 2.0 - math.log(math.exp(2.0) + tok.vocab_size - 1)
    assert result.logprob == pytest.approx(3 * step, rel=1e-6)
    assert result.prob == pytest.approx(math.exp(3 * step))
    assert result.logprob_per_token == pytest.approx(step, rel=1e-6)
    assert result.to_dict() == {
        "continuation": "bcd",
        "logprob": result.logprob,
        "prob": result.prob,
        "tokens": [
            {"token": c, "logprob": lp} for c, (_, lp) in zip("bcd", result.tokens, strict=True)
        ],
    }


def test_scores_past_the_block_use_the_last_block_of_context():
    """A continuation longer than the Transformer's block: each token is scored from at most
    the last ``block_size`` tokens before it, counted from the start of the text."""
    tok = CharTokenizer.train("abcdefgh ")
    torch.manual_seed(0)
    model = build_model(
        "transformer", vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=8
    ).eval()
    prompt, continuation = "abc", "defghabcdefgh"
    (result,) = score(model, tok, prompt, [continuation], join="")
    ids = tok.encode(prompt + continuation)
    expected = []
    with torch.no_grad():
        for t in range(len(prompt), len(ids)):
            window = torch.tensor([ids[max(0, t - 8) : t]])
            expected.append(float(model(window)[0][0, -1].log_softmax(-1)[ids[t]]))
    assert [lp for _, lp in result.tokens] == pytest.approx(expected, abs=1e-5)
    assert result.logprob == pytest.approx(sum(expected), abs=1e-4)
