"""Corpora (where text comes from) and token streams (text encoded once into a memmap)."""

from lmforge.data.corpora import REGISTRY, Corpus, resolve_corpus
from lmforge.data.stream import TokenStream, WindowSampler, encode_corpus

__all__ = ["REGISTRY", "Corpus", "TokenStream", "WindowSampler", "encode_corpus", "resolve_corpus"]
