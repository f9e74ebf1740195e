"""lmforge serve: an OpenAI-compatible server with continuous batching."""
