"""Small Hugging Face model folders built offline, for the import and tokenizer tests.

Tokenizers are trained with the ``tokenizers`` library on a few lines of text, models are built
from configs with random weights; both are written with ``save_pretrained`` (or by hand for
the formats ``save_pretrained`` no longer writes), so no test needs the network.

>>> folder = hf_model_folder(tmp_path / "llama", "llama")    # tokenizer + LlamaForCausalLM
>>> import_hf(folder, tmp_path / "run")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

TRAINING_TEXT = (
    "First Citizen: Before we proceed any further, hear me speak.\n"
    "All: Speak, speak. Résumé of the naïve café: 東京 and Zürich, ¿qué? 🙂\n"
    "The quick brown fox jumps over the lazy dog; 12345 + 678 = 13023.\n"
) * 20
# text that exercises byte fallback, combining marks, emoji, CJK, tabs and runs of spaces
HARD_TEXTS = [
    "Hello world",
    "  leading spaces and\ttabs\n\nnew lines  ",
    "Ünïcödé: e\u0301 ñ ß ø 東京 🙂👍🏽 مرحبا",
    "unseen: \u2603 \u0416\u0436 \U0001f680 \x00\x07",
]
BYTE_LEVEL_SPECIALS = ["<|endoftext|>"]
SENTENCEPIECE_SPECIALS = ["<unk>", "<s>", "</s>"]


def byte_level_bpe(vocab_size: int = 320) -> Any:
    """A GPT-2-style byte-level BPE ``tokenizers.Tokenizer`` trained on :data:`TRAINING_TEXT`,
    with ``<|endoftext|>`` as its one special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=BYTE_LEVEL_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([TRAINING_TEXT], trainer)
    return tokenizer


def sentencepiece_bpe(merges: int = 60) -> Any:
    """A Llama-2-style BPE ``tokenizers.Tokenizer``: ``▁`` for spaces and a ``▁`` prepended,
    ``<unk> <s> </s>`` then the 256 byte tokens ``<0x00>``..``<0xFF>`` (byte fallback for any
    character outside the vocabulary), and ``<s>`` added before every text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    def pipeline(tokenizer: Any) -> Any:
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
        )
        tokenizer.decoder = decoders.Sequence(
            [
                decoders.Replace("▁", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(" ", 1, 0),
            ]
        )
        return tokenizer

    learner = pipeline(Tokenizer(models.BPE(unk_token="<unk>")))
    characters = sorted(set(TRAINING_TEXT.replace(" ", "▁")) | {"▁"})
    trainer = trainers.BpeTrainer(
        vocab_size=len(characters) + merges,
        initial_alphabet=characters,
        show_progress=False,
    )
    learner.train_from_iterator([TRAINING_TEXT], trainer)
    learned = json.loads(learner.to_str())["model"]
    tokens = SENTENCEPIECE_SPECIALS + [f"<0x{b:02X}>" for b in range(256)]
    tokens += sorted(learned["vocab"], key=learned["vocab"].get)
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = pipeline(
        Tokenizer(
            models.BPE(
                vocab=vocab,
                merges=[
                    tuple(m) if isinstance(m, list) else tuple(m.split(" "))
                    for m in learned["merges"]
                ],
                unk_token="<unk>",
                byte_fallback=True,
                fuse_unk=True,
            )
        )
    )
    tokenizer.add_special_tokens(SENTENCEPIECE_SPECIALS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tokenizer


def save_tokenizer(tokenizer: Any, folder: Path, style: str) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` as a model folder holds them
    (``style`` is ``byte_level`` for GPT-2's, ``sentencepiece`` for Llama 2's)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    if style == "byte_level":
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "add_bos_token": False,
            "model_max_length": 1024,
        }
    else:
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "add_bos_token": True,
            "add_eos_token": False,
            "model_max_length": 1024,
        }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def hf_model(model_type: str, vocab_size: int, **overrides: Any) -> Any:
    """A small random ``transformers`` causal LM of ``model_type`` (gpt2, llama, qwen2,
    mistral) in eval mode, with grouped-query attention. Llama has an untied head, rotary base
    500,000 and epsilon 1e-3; Qwen2 has its q/k/v biases and a tied head. Weights are drawn
    with std 0.1 (not 0.02) so the logits of different tokens are far enough apart for greedy
    decoding to be stable."""
    import transformers

    torch.manual_seed(0)
    shared = {"vocab_size": vocab_size, "initializer_range": 0.1}
    if model_type == "gpt2":
        config = transformers.GPT2Config(
            n_positions=128,
            n_embd=48,
            n_layer=2,
            n_head=4,
            bos_token_id=0,
            eos_token_id=0,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **shared,
        )
        model_class = transformers.GPT2LMHeadModel
    else:
        llama_like = {
            "hidden_size": 48,
            "intermediate_size": 80,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128,
            "rms_norm_eps": 1e-6,
            "bos_token_id": 1,
            "eos_token_id": 2,
        }
        if model_type == "llama":
            # Llama 3's rotary base, and an epsilon large enough to matter for these weights
            llama_like.update(
                rms_norm_eps=1e-3, rope_parameters={"rope_type": "default", "rope_theta": 5e5}
            )
            config = transformers.LlamaConfig(tie_word_embeddings=False, **llama_like, **shared)
            model_class = transformers.LlamaForCausalLM
        elif model_type == "qwen2":
            config = transformers.Qwen2Config(tie_word_embeddings=True, **llama_like, **shared)
            model_class = transformers.Qwen2ForCausalLM
        elif model_type == "mistral":
            config = transformers.MistralConfig(
                tie_word_embeddings=False, sliding_window=None, **llama_like, **shared
            )
            model_class = transformers.MistralForCausalLM
        else:
            raise ValueError(f"no small {model_type} model here")
    for key, value in overrides.items():
        setattr(config, key, value)
    model = model_class(config).eval()
    if model_type == "qwen2":  # random, not zero, q/k/v biases, so their import is tested
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (
                    layer.self_attn.q_proj,
                    layer.self_attn.k_proj,
                    layer.self_attn.v_proj,
                ):
                    proj.bias.normal_(0.0, 0.1)
    return model


def hf_model_folder(folder: Path, model_type: str, weights: str = "safetensors") -> Path:
    """A model folder with a trained tokenizer and a small random model of ``model_type``:
    byte-level BPE for gpt2 and qwen2, SentencePiece-style BPE for llama and mistral.
    ``weights`` is ``safetensors`` (one file), ``sharded`` (an index and several files) or
    ``bin`` (``pytorch_model.bin``, as older transformers wrote it)."""
    if model_type in ("gpt2", "qwen2"):
        tokenizer, style = byte_level_bpe(), "byte_level"
    else:
        tokenizer, style = sentencepiece_bpe(), "sentencepiece"
    save_tokenizer(tokenizer, folder, style)
    model = hf_model(model_type, tokenizer.get_vocab_size())
    if weights == "bin":
        model.config.save_pretrained(folder)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        torch.save(state, folder / "pytorch_model.bin")
    else:
        shard = "20KB" if weights == "sharded" else "5GB"
        model.save_pretrained(folder, max_shard_size=shard)
    return folder
