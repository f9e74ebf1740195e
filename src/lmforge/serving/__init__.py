"""``lmforge serve``: an OpenAI-compatible HTTP server with continuous batching.

Nothing is imported here, so ``import lmforge`` stays free of torch and FastAPI; see
:mod:`lmforge.serving.server` (``serve``), :mod:`lmforge.serving.app` (the endpoints) and
:mod:`lmforge.serving.engine` (the batching engine).
"""
