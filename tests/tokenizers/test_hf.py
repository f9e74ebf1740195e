"""The ``hf`` tokenizer kind against transformers' ``AutoTokenizer``, offline.

Three small tokenizers are trained here with the ``tokenizers`` library on Tiny Shakespeare
and saved as Hugging Face model folders with ``save_pretrained``: byte-level BPE as GPT-2's,
byte-level BPE split by Llama 3's regex with a ``<|begin_of_text|>`` BOS, and
SentencePiece-style BPE with byte fallback, ``▁`` and a ``<s>`` BOS, as Llama 2's.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.config import TokenizerConfig
from lmforge.data.stream import chunk_text
from lmforge.errors import ConfigError, TokenizerError
from lmforge.generation import continuation_ids, prompt_ids
from lmforge.tokenizers import HFTokenizer, load_hf_tokenizer, load_tokenizer, tokenizer_from_dict

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAKESPEARE = Path(__file__).resolve().parents[2].parent / "shared/data/tinyshakespeare/input.txt"
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
HARD_TEXTS = [
    "",
    "Hello world",
    "  leading and trailing spaces  ",
    "tabs\tand\r\nwindows line ends\r\n\r\n",
    "emoji 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷!",
    "CJK 漢字かなカナ 한국어",
    "combining: e\u0301 a\u0308 Zalgo z\u0335\u031b\u0344\u0306",
    "RTL: שלום עולם, مرحبا بالعالم",
    "digits 1234567890123456789012345 3.14159",
    "special text <s> </s> <unk> <|endoftext|> <|begin_of_text|> mid<s>word",
    "▁ the SentencePiece mark, <0x41> as text, \u00a0nbsp",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.",
]


def _training_text() -> str:
    text = SHAKESPEARE.read_text(encoding="utf-8")[:100_000] if SHAKESPEARE.exists() else ""
    return text + "\n".join(HARD_TEXTS[1:]) * 3


def _byte_level(split: str) -> Any:
    """GPT-2-style byte-level BPE (``split="gpt2"``), or Llama 3's split and BOS."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    special = ["<|endoftext|>"]
    if split == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        special = ["<|begin_of_text|>", "<|end_of_text|>"]
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_training_text()], trainer)
    if split == "llama3":
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))],
        )
    return tok


def _sentencepiece(legacy: bool) -> Any:
    """Llama-2-style BPE: ``▁`` for spaces (one put first), byte fallback ``<0x00>..<0xFF>``
    right after ``<unk> <s> </s>``, and a ``<s>`` BOS. ``legacy``: the ``▁`` come from a
    normalizer, as in Llama 2's own tokenizer.json, else from a Metaspace pre-tokenizer, as
    transformers converts it today."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    # Pieces split at ▁ while learning (SentencePiece's split_by_whitespace), so no merge
    # crosses a space; the tokenizer itself does not split, as transformers' conversion.
    learner = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    learner.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
    special = ["<unk>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=special, show_progress=False)
    learner.train_from_iterator([_training_text()], trainer)
    spec = json.loads(learner.to_str())
    vocab = {token: i for i, token in enumerate(special + [f"<0x{b:02X}>" for b in range(256)])}
    for token, _ in sorted(spec["model"]["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    spec["model"]["vocab"] = vocab
    for added in spec["added_tokens"]:
        added["id"] = vocab[added["content"]]
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    if legacy:
        tok.pre_tokenizer = None
        tok.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
        )
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tok


STYLES = {
    "gpt2": (lambda: _byte_level("gpt2"), "<|endoftext|>", "<|endoftext|>"),
    "llama3": (lambda: _byte_level("llama3"), "<|begin_of_text|>", "<|end_of_text|>"),
    "llama2": (lambda: _sentencepiece(legacy=False), "<s>", "</s>"),
    "llama2legacy": (lambda: _sentencepiece(legacy=True), "<s>", "</s>"),
}


@pytest.fixture(scope="module", params=list(STYLES))
def folder(request, tmp_path_factory) -> Path:
    """A Hugging Face model folder's tokenizer files, written by ``save_pretrained``."""
    from transformers import PreTrainedTokenizerFast

    build, bos, eos = STYLES[request.param]
    path = tmp_path_factory.mktemp(f"{request.param}_")
    PreTrainedTokenizerFast(tokenizer_object=build(), bos_token=bos, eos_token=eos).save_pretrained(
        path
    )
    return path


@pytest.fixture(scope="module")
def auto(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def tok(folder: Path) -> HFTokenizer:
    return load_hf_tokenizer(folder)


def _style(folder: Path) -> str:
    return folder.name.split("_")[0]


def _kept(folder: Path, text: str) -> str | None:
    """What decoding gives back of ``text``: all of it, but a SentencePiece-style tokenizer
    decodes ``▁`` as a space; with a Metaspace pre-tokenizer text that starts with a space
    gets no ``▁`` put first while the decoder still strips one; a legacy one puts a ``▁``
    after each special token (``None``: not known here). transformers' decode does the same."""
    style = _style(folder)
    if not style.startswith("llama2"):
        return text
    if style == "llama2legacy" and any(s in text for s in ("<s>", "</s>", "<unk>")):
        return None
    text = text.replace("\u2581", " ")
    return text[1:] if style == "llama2" and text.startswith(" ") else text


# --- ids, BOS and EOS as AutoTokenizer gives them ------------------------------------------


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_ids_identical_to_autotokenizer(tok, auto, text):
    assert tok.encode(text) == auto(text)["input_ids"]
    assert tok.encode_array(text).tolist() == auto(text)["input_ids"]


@FUZZ
@given(text=st.text(max_size=80))
def test_ids_identical_to_autotokenizer_on_any_text(tok, auto, text):
    assert tok.encode(text) == auto(text)["input_ids"]


def test_bos_and_eos_as_the_model_says(tok, auto, folder):
    assert (tok.bos_id, tok.eos_id) == (auto.bos_token_id, auto.eos_token_id)
    assert tok.add_bos == (_style(folder) != "gpt2")
    assert not tok.add_eos
    assert tok.encode("")[:1] == ([tok.bos_id] if tok.add_bos else [])
    assert tok.encode_continuation("To be") == auto("To be", add_special_tokens=False)["input_ids"]
    assert tok.vocab_size == len(auto)


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_decode_gives_the_text_back(tok, auto, folder, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == tok.decode(tok.encode_continuation(text))
    assert tok.decode(ids) == auto.decode(ids[1:] if tok.add_bos else ids)
    assert _kept(folder, text) in (tok.decode(ids), None)


@FUZZ
@given(text=st.text(max_size=80))
def test_decode_gives_any_text_back(folder, text):
    tok = load_hf_tokenizer(folder)
    assert tok.decode(tok.encode_continuation(text)) == _kept(folder, text)
    assert tok.decode(tok.encode(text)) == _kept(folder, text)


def test_scoring_never_puts_a_bos_inside(tok):
    context, target = continuation_ids(tok, "To be", "or not")
    assert context == tok.encode("To be") and tok.bos_id not in target
    assert tok.decode(context + target) == "To be or not"
    context, target = continuation_ids(tok, "", "Speak")
    assert context == ([tok.bos_id] if tok.add_bos else tok.encode("\n"))
    assert target == tok.encode_continuation("Speak")
    assert prompt_ids(tok, "") == context


def test_gpt2_style_encodes_with_lmforge_bpe_to_the_same_ids(tok, folder, monkeypatch):
    assert (tok.fast_path() is not None) == (_style(folder) == "gpt2")
    text = _training_text()[:50_000] + "".join(HARD_TEXTS)
    library = tok._backend.encode(text, add_special_tokens=True).ids
    assert tok.encode(text) == library
    monkeypatch.setenv("LMFORGE_HF_ENGINE", "tokenizers")
    assert load_hf_tokenizer(folder).fast_path() is None


@FUZZ
@given(
    text=st.lists(
        st.sampled_from(
            ["a", "b", " ", "  ", "\n", "\t", "é", "漢", "😀", "'s", ".", "12", "<|endoftext|>"]
        ),
        max_size=30,
    ).map("".join)
)
def test_lmforge_bpe_matches_the_library_on_any_text(folder, text):
    tok = load_hf_tokenizer(folder)
    plain = tok._plain_backend().encode(text, add_special_tokens=False).ids
    assert tok.encode(text) == tok._backend.encode(text).ids
    assert tok.encode_chunk(text, "plain").tolist() == plain


# --- special-token text in a corpus ---------------------------------------------------------


def test_special_text_modes(tok, folder):
    special = tok.eos_token
    text = f"a {special} b"
    allowed = tok.encode_chunk(text, "allow").tolist()
    plain = tok.encode_chunk(text, "plain").tolist()
    assert tok.eos_id in allowed and tok.eos_id not in plain
    assert tok.decode(plain) == _kept(folder, text.replace(special, "x")).replace("x", special)
    assert allowed == tok.encode_continuation(text)
    with pytest.raises(TokenizerError, match=f"special token '{special}' \\(at character 2\\)"):
        tok.encode_chunk(text, "error")
    assert tok.encode_chunk("a b", "error").tolist() == tok.encode_continuation("a b")
    with pytest.raises(TokenizerError, match="special-text mode"):
        tok.encode_chunk("a", "sometimes")


def test_chunks_encode_to_the_ids_of_the_whole_text(tok, folder):
    text = _training_text()[:20_000] + "\n<|endoftext|>\n<s>x\n"
    chunks = list(chunk_text(text, size=500))
    assert len(chunks) > 30
    assert tok.chunks_are_independent == (not _style(folder).startswith("llama2"))
    for mode in ("plain", "allow"):
        parts = [ids.tolist() for ids in tok.encode_chunks(chunks, mode)]
        assert len(parts) == len(chunks)
        assert [i for part in parts for i in part] == tok.encode_chunk(text, mode).tolist()
        if tok.chunks_are_independent:
            assert parts[0] == tok.encode_chunk(chunks[0], mode).tolist()


# --- streaming decode -----------------------------------------------------------------------


def _streamed(tok: HFTokenizer, ids: list[int]) -> list[str]:
    decoder = tok.stream_decoder()
    return [decoder.push(i) for i in ids] + [decoder.flush()]


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_stream_pieces_are_whole_characters_that_join_to_decode(tok, folder, text):
    ids = tok.encode(text)
    pieces = _streamed(tok, ids)
    assert "".join(pieces) == tok.decode(ids)
    assert _kept(folder, text) in (tok.decode(ids), None)
    assert not any("\ufffd" in piece for piece in pieces)


def test_stream_holds_a_character_until_its_last_byte(tok, folder):
    euro = "€".encode()
    if _style(folder).startswith("llama2"):
        # A run of byte tokens waits for the next other token: a further byte could make the
        # run invalid UTF-8, and then every byte of it decodes to U+FFFD.
        ids = [tok._backend.token_to_id(f"<0x{b:02X}>") for b in euro]
        assert _streamed(tok, ids) == ["", "", "", "€"]
        assert _streamed(tok, [*ids, 0x80 + 3]) == ["", "", "", "", "\ufffd" * 4]
        assert _streamed(tok, [*ids, tok._backend.token_to_id("a")]) == ["", "", "", "€a", ""]
    else:
        ids = tok.encode_continuation("€")
        assert len(ids) == 3, "the test needs € split over tokens"
        assert _streamed(tok, ids) == ["", "", "€", ""]
    assert _streamed(tok, ids[:2]) == ["", "", tok.decode(ids[:2])]


@FUZZ
@given(data=st.data())
def test_stream_of_any_ids_joins_to_decode(folder, data):
    tok = load_hf_tokenizer(folder)
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=40))
    assert "".join(_streamed(tok, ids)) == tok.decode(ids)


# --- the file --------------------------------------------------------------------------------


def test_load_of_save_is_the_same_tokenizer(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = load_tokenizer(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["kind"] == "hf" and data["tokenizer"]["model"]["type"] == "BPE"
    assert isinstance(loaded, HFTokenizer) and loaded == tok and loaded.to_json() == tok.to_json()
    assert (loaded.bos_id, loaded.eos_id, loaded.add_bos) == (tok.bos_id, tok.eos_id, tok.add_bos)
    assert pickle.loads(pickle.dumps(tok)) == tok  # worker processes get it this way
    for text in HARD_TEXTS:
        assert loaded.encode(text) == tok.encode(text)


def test_export_gives_back_a_folder_autotokenizer_reads_alike(tok, tmp_path):
    from transformers import AutoTokenizer

    from lmforge.tokenizers.export import save_hf_tokenizer_dir

    save_hf_tokenizer_dir(tok, tmp_path)
    assert load_hf_tokenizer(tmp_path) == tok
    auto = AutoTokenizer.from_pretrained(tmp_path)
    for text in HARD_TEXTS:
        assert auto(text)["input_ids"] == tok.encode(text)


def test_token_text_for_tables(tok, folder):
    space = "▁" if _style(folder).startswith("llama2") else "Ġ"
    the = tok._backend.token_to_id(f"{space}the")
    assert tok.id_to_token(the) == " the" and tok.token_bytes(the) == b" the"
    assert tok.id_to_token(tok.eos_id) == tok.eos_token
    if _style(folder).startswith("llama2"):
        assert tok.token_bytes(3 + 0xE2) == b"\xe2" and tok.id_to_token(3 + 0xE2) == "\\xe2"
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.id_to_token(tok.vocab_size)


# --- errors ----------------------------------------------------------------------------------


def test_a_folder_without_tokenizer_json_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="is not a folder"):
        load_hf_tokenizer(tmp_path / "missing")
    with pytest.raises(TokenizerError, match=r"has no tokenizer.json$"):
        load_hf_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(TokenizerError, match=r"slow tokenizers are not supported.*save_pretrained"):
        load_hf_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="is not valid JSON"):
        load_hf_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "Nonsense"}}', encoding="utf-8")
    with pytest.raises(TokenizerError, match="cannot be read"):
        load_hf_tokenizer(tmp_path)


def test_a_bos_missing_from_the_vocabulary_is_a_clear_error(tok, folder, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["bos_token"] = {"content": "<nope>", "special": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(TokenizerError, match="BOS token '<nope>' is not in the tokenizer"):
        load_hf_tokenizer(tmp_path)


def test_a_damaged_description_is_a_clear_error(tok):
    data = tok.to_dict()
    with pytest.raises(TokenizerError, match="unknown fields"):
        tokenizer_from_dict({**data, "extra": 1})
    with pytest.raises(TokenizerError, match="must be a JSON object"):
        tokenizer_from_dict({**data, "tokenizer": "text"})
    with pytest.raises(TokenizerError, match="eos_token must be a string"):
        tokenizer_from_dict({**data, "eos_token": 3})


def test_kind_hf_is_not_trained():
    from lmforge.tokenizers import train_tokenizer

    with pytest.raises(TokenizerError, match="kind hf is not trained"):
        train_tokenizer("hf", "some text")


def test_run_config_takes_kind_hf_from_a_file():
    TokenizerConfig(kind="hf", file="RUN/tokenizer.json").validate()
    with pytest.raises(ConfigError, match="kind hf is read from its file"):
        TokenizerConfig(kind="hf").validate()
