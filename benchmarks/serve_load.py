"""Load on ``lmforge serve``: concurrent streaming clients against one server, and the
single-sequence rate of ``lmforge sample``'s loop measured in the same run.

For each run (a Tiny Shakespeare ``tiny`` Transformer and the default LSTM, trained here for
10 steps unless given: speed does not depend on how well a model is trained), the script
starts ``lmforge serve`` on loopback, then for 1, 8, 32 and 64 concurrent clients sends
streaming ``/v1/completions`` requests (128 new tokens each, sampled at temperature 0.8,
prompts of mixed lengths cut from the corpus) and reports:

* aggregate generated tokens/s (all clients' tokens over the level's wall time),
* p50 / p99 time to first token and gap between chunks (over every chunk of every client),
  and the mean tokens per chunk (the engine wakes the server's event loop at most every 10 ms
  for plain tokens, so a fast model's tokens arrive a few to a chunk),
* errors (non-200 responses, broken streams, fewer tokens than asked),
* the server process's CPU time per generated token (user + system, all its threads; Linux):
  on a machine shared with other jobs, wall-clock rates swing with the load while CPU time per
  token barely moves, so it is the figure to compare there,
* the cores the server process and the clients (this process) kept busy: CPU seconds over
  the level's wall time (a server whose threads take turns at Python's GIL stays near 1),

each the median over ``--repeats`` rounds of the level (errors: the total), after one short
unmeasured request to each model and one short unmeasured run of each peer (warm-up),

the serving engine alone in this process (no HTTP: requests submitted to an ``Engine`` on the
same weights, prompts and settings, with serve's engine threads) for 1 and for the most
clients, the bound the server's rates cannot pass, with the engine's seconds by phase
(``Engine.seconds``: reading prompts and slid windows, decoding, sampling) and the rate its
reads alone allow (generated tokens over read seconds: a level cannot pass it even if decoding
and sampling cost nothing); and ``generation.generate_ids`` in this
process (what ``lmforge sample`` runs) on the same weights, 128 tokens from the single client's
prompt, as the single-client peer (tokens/s and CPU time per token, median of ``--repeats``;
its rounds and the engine alone's are taken in turn with the single-client level's, so that a
drift of the machine's speed hits them alike): with torch's default threads (as ``lmforge
sample`` runs) and with one (on a busy machine the default can be many times slower: the
intra-op threads wait for cores). Goals: 0 errors; 64 clients ≥ 10× the 1-client rate;
1 client ≥ 0.9× ``sample``'s rate.

    python benchmarks/serve_load.py                        # trains both runs in a temp dir
    python benchmarks/serve_load.py --runs runs/tiny runs/lstm --clients 1 8 32 64
    python benchmarks/serve_load.py --repeats 3 --server-threads 2   # the engine on 2 threads
    python benchmarks/serve_load.py --device cuda                     # runs, server, peers on a GPU
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import torch

from lmforge.data.corpora import resolve_corpus
from lmforge.generation import SampleConfig, generate_ids, prompt_ids
from lmforge.runs import load_run
from lmforge.serving.engine import Engine, Request, Sequence, TokenInfo
from lmforge.serving.server import engine_threads

TRAIN = {
    "tiny": ["--model", "transformer", "--preset", "tiny"],
    "lstm": ["--model", "lstm"],
}


def train_runs(directory: Path, steps: int, device: str) -> list[Path]:
    """A ``tiny`` Transformer and a default LSTM on Tiny Shakespeare, ``steps`` steps each."""
    runs = []
    for name, flags in TRAIN.items():
        out = directory / name
        command = [sys.executable, "-m", "lmforge", "train", *flags, "--out", str(out)]
        command += ["--device", device]
        command += ["--max-steps", str(steps), "--eval-interval", str(steps)]
        command += ["--eval-iters", "2", "--quiet", "--overwrite"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        runs.append(out)
    return runs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    runs: list[Path], port: int, max_batch: int, threads: int | None, device: str
) -> subprocess.Popen:
    command = [sys.executable, "-m", "lmforge", "serve", *map(str, runs)]
    command += ["--port", str(port), "--max-batch", str(max_batch), "--device", device]
    if threads is not None:
        command += ["--threads", str(threads)]
    server = subprocess.Popen(command, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"lmforge serve exited with code {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.terminate()
    raise SystemExit("lmforge serve did not come up within 300 s")


def mixed_prompts(text: str, count: int, seed: int) -> list[str]:
    """``count`` prompts of 1 to 100 characters, each starting at a line of the corpus."""
    rng = random.Random(seed)
    starts = [i + 1 for i, c in enumerate(text[:200_000]) if c == "\n"]
    prompts = []
    for _ in range(count):
        start = rng.choice(starts)
        prompts.append(text[start : start + rng.randint(1, 100)] or "\n")
    return prompts


async def one_client(
    client: httpx.AsyncClient, model: str, prompt: str, tokens: int, seed: int
) -> dict:
    """One streamed completion: chunk arrival times and the tokens the server counted."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": tokens,
        "temperature": 0.8,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    arrivals: list[float] = []
    generated = 0
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                return {"error": f"HTTP {response.status_code}"}
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    generated = chunk["usage"]["completion_tokens"]
                elif chunk["choices"] and chunk["choices"][0]["text"]:
                    arrivals.append(time.perf_counter())
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
        return {"error": repr(exc)}
    if generated != tokens or not arrivals:
        return {"error": f"{generated} tokens of {tokens}"}
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return {"ttft": arrivals[0] - sent, "gaps": gaps, "tokens": generated, "chunks": len(arrivals)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far; NaN off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def load_level(port: int, model: str, prompts: list[str], tokens: int) -> dict:
    """All ``len(prompts)`` clients at once; the figures of the level."""
    limits = httpx.Limits(max_connections=len(prompts) + 4)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=600, limits=limits
    ) as client:
        started, client_cpu = time.perf_counter(), time.process_time()
        results = await asyncio.gather(
            *(one_client(client, model, p, tokens, seed=i) for i, p in enumerate(prompts))
        )
        wall = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
    good = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    ttfts = [r["ttft"] for r in good]
    gaps = [g for r in good for g in r["gaps"]]
    return {
        "clients": len(prompts),
        "tokens_per_s": sum(r["tokens"] for r in good) / wall,
        "ttft_p50": percentile(ttfts, 50),
        "ttft_p99": percentile(ttfts, 99),
        "itl_p50": percentile(gaps, 50),
        "itl_p99": percentile(gaps, 99),
        "per_chunk": sum(r["tokens"] for r in good) / max(1, sum(r["chunks"] for r in good)),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "wall": wall,
        "client_cores": client_cpu / wall,
    }


def measured_level(
    server: subprocess.Popen, port: int, model: str, prompts: list[str], tokens: int, repeats: int
) -> dict:
    """:func:`load_level` ``repeats`` times, with the server's CPU milliseconds per generated
    token of each round, merged by :func:`merged_rounds`."""
    rounds = []
    for _ in range(repeats):
        cpu = cpu_seconds(server.pid)
        level = asyncio.run(load_level(port, model, prompts, tokens))
        cpu = cpu_seconds(server.pid) - cpu
        level["cpu_ms"] = 1000 * cpu / (len(prompts) * tokens)
        level["server_cores"] = cpu / level["wall"]
        rounds.append(level)
    return merged_rounds(rounds)


def warm_up(
    port: int, model_id: str, model: Any, ids: list[int], threads: tuple[int, int | None]
) -> None:
    """One short completion through the server and one short run of each in-process peer,
    not measured: a model's first steps pay one-off costs (on a GPU, CUDA's and cuDNN's
    initialisation: hundreds of milliseconds) that no level should carry."""
    asyncio.run(load_level(port, model_id, ["ROMEO:"], 8))
    engine_rate(model, [ids], 8, threads)
    for peer in peer_threads():
        sample_round(model, ids, 8, peer)


def merged_rounds(rounds: list[dict]) -> dict:
    """The median of each figure over the rounds of a level, the errors summed."""
    merged = {key: statistics.median(r[key] for r in rounds) for key in FIGURES}
    merged["errors"] = sum(r["errors"] for r in rounds)
    merged["first_error"] = next((r["first_error"] for r in rounds if r["first_error"]), "")
    return merged


FIGURES = (
    "tokens_per_s",
    "ttft_p50",
    "ttft_p99",
    "itl_p50",
    "itl_p99",
    "per_chunk",
    "cpu_ms",
    "server_cores",
    "client_cores",
)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` inside the block, restored after."""
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(default_threads)


def sample_round(model: Any, ids: list[int], tokens: int, threads: int) -> tuple[float, float]:
    """One run of ``lmforge sample``'s loop (generate_ids, temperature 0.8) in this process's
    main thread with ``threads`` torch threads: tokens/s and CPU milliseconds per token. Each
    token is read back to the host, as ``lmforge sample`` does to print it (on a GPU this
    waits for the step)."""
    config = SampleConfig(max_new_tokens=tokens, temperature=0.8, seed=0)
    with torch_threads(threads):
        started, cpu = time.perf_counter(), time.process_time()
        for next_ids in generate_ids(model, ids, config):
            next_ids.tolist()
        return tokens / (time.perf_counter() - started), 1000 * (time.process_time() - cpu) / tokens


def engine_rate(
    model: Any, prompts: list[list[int]], tokens: int, threads: tuple[int, int | None]
) -> EngineRound:
    """Generated tokens/s of the serving engine alone, in this process (no HTTP): every prompt
    submitted at once, as the clients of a level are, on ``threads`` (for batched steps, and
    for steps with one sequence: None, the same); with the engine's time by phase and the
    tokens it read (prompts and slid windows)."""

    async def one(engine: Engine, i: int, prompt: list[int]) -> int:
        config = SampleConfig(max_new_tokens=tokens, temperature=0.8, seed=i)
        seq = engine.submit(Request(prompt, config, logprobs=False))
        return sum([len(batch) async for batch in _batches(seq)])

    async def level() -> EngineRound:
        engine = Engine(
            model, max_batch=len(prompts), max_queue=len(prompts), threads_alone=threads[1]
        )
        engine.start()
        try:
            started = time.perf_counter()
            counts = await asyncio.gather(*(one(engine, i, p) for i, p in enumerate(prompts)))
            rate = sum(counts) / (time.perf_counter() - started)
        finally:
            await asyncio.to_thread(engine.stop)
        return EngineRound(rate, sum(counts), engine.seconds, engine.read_tokens)

    with torch_threads(threads[0]):
        return asyncio.run(level())


def serve_threads(model: Any, server_threads: int | None) -> tuple[int, int | None]:
    """The torch threads ``lmforge serve`` gives an engine of ``model``: for batched steps,
    and for steps with one sequence (None: the same), learnt as serve learns it (a
    ``ThreadTrial`` over the first one-sequence steps of an engine here)."""
    batched = server_threads or engine_threads()
    if server_threads is not None:
        return batched, None

    async def trial() -> tuple[int, int] | None:
        engine = Engine(model, threads_alone="auto")
        engine.start()
        try:
            seq = engine.submit(Request([0], SampleConfig(max_new_tokens=96), logprobs=False))
            async for _ in _batches(seq):
                pass
            return engine.threads
        finally:
            await asyncio.to_thread(engine.stop)

    with torch_threads(batched):
        learnt = asyncio.run(trial())
    return batched, None if learnt is None else learnt[1]


@dataclasses.dataclass(frozen=True)
class EngineRound:
    """One round of the engine alone: tokens/s, tokens generated, engine seconds by phase
    (``Engine.seconds``) and tokens read by prompt and window reads."""

    rate: float
    generated: int
    seconds: dict[str, float]
    read_tokens: int

    def phases_row(
        self, name: str, sequences: int, alone_rate: float, threads: tuple[int, int | None]
    ) -> str:
        """A row of the phase table: where the engine's time went, and the rate the level
        could not pass even if decoding and sampling cost nothing (its reads alone)."""
        read, decode, sample = (self.seconds[p] for p in ("read", "decode", "sample"))
        bound = self.generated / read if read > 0 else math.inf
        return (
            f"| {name} | {sequences} | {self.rate:.0f} | {read:.2f} ({self.read_tokens:,}) "
            f"| {decode:.2f} | {sample:.2f} | {bound:,.0f} ({bound / alone_rate:.1f}×) "
            f"| {threads[0]} / {threads[1] or threads[0]} |"
        )


def median_round(rounds: list[EngineRound]) -> EngineRound:
    """The round with the median rate (the lower middle one of an even count)."""
    return sorted(rounds, key=lambda r: r.rate)[(len(rounds) - 1) // 2]


async def _batches(seq: Sequence) -> AsyncIterator[list[TokenInfo]]:
    """The tokens of ``seq`` as they come, a batch at a time."""
    while batch := await seq.next_tokens():
        yield batch


def device_name(device: str) -> str:
    """``device`` and, for a GPU, its model name."""
    resolved = torch.device(device)
    if resolved.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(resolved)})"
    return device


def peer_threads() -> list[int]:
    """The torch threads the ``sample`` peer runs with: the default (as ``lmforge sample``
    runs) and one."""
    return sorted({torch.get_num_threads(), 1}, reverse=True)


def single_level(
    server: subprocess.Popen,
    port: int,
    model_id: str,
    model: Any,
    prompts: list[str],
    tokens: int,
    repeats: int,
    serving: tuple[int, int | None],
    tokenizer: Any,
) -> tuple[dict, dict[str, Any]]:
    """The fewest-clients level and its peers, a round of each in turn (so that a machine
    whose speed drifts affects them alike): the level's figures as :func:`measured_level`
    gives them; the engine alone's tokens/s, and each ``sample`` loop's (tokens/s, CPU ms per
    token) on the first prompt; medians over ``repeats`` rounds."""
    ids = [prompt_ids(tokenizer, p) for p in prompts]
    rounds: list[dict] = []
    engine: list[EngineRound] = []
    samples: dict[int, list[tuple[float, float]]] = {t: [] for t in peer_threads()}
    for _ in range(repeats):
        rounds.append(measured_level(server, port, model_id, prompts, tokens, 1))
        engine.append(engine_rate(model, ids, tokens, serving))
        for threads, values in samples.items():
            values.append(sample_round(model, ids[0], tokens, threads))
    peers: dict[str, Any] = {"engine": median_round(engine)}
    for threads, values in samples.items():
        peers[f"sample {threads}"] = tuple(statistics.median(v[i] for v in values) for i in (0, 1))
    return merged_rounds(rounds), peers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, help="runs to serve (default: train)")
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32, 64])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of each level and of the sample peer"
    )
    parser.add_argument(
        "--server-threads", type=int, help="lmforge serve --threads (default: torch's)"
    )
    parser.add_argument(
        "--device", default="cpu", help="where the runs train, the server and the peers run"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or train_runs(Path(tmp), args.train_steps, args.device)
        text = resolve_corpus("tinyshakespeare").read()
        port = free_port()
        server = start_server(runs, port, max(args.clients), args.server_threads, args.device)
        try:
            told = args.server_threads or (
                "serve's default (cores - 1, at least 1; with one sequence, its trial's choice)"
            )
            print(
                f"machine: {os.cpu_count()} CPUs; device {device_name(args.device)}; "
                f"{args.tokens} new tokens per client; server threads: {told}\n"
            )
            print(
                "| model | clients | tok/s | vs 1 | TTFT p50/p99 ms | chunk gap p50/p99 ms "
                "| tokens/chunk "
                "| CPU ms/token | cores: server / clients | errors |"
            )
            print("|---|---|---|---|---|---|---|---|---|---|")
            phases: list[str] = []
            for run in runs:
                name = run.resolve().name
                loaded = load_run(run, device=args.device)
                threads = serve_threads(loaded.model, args.server_threads)
                warm_up(port, name, loaded.model, prompt_ids(loaded.tokenizer, "ROMEO:"), threads)
                single = None
                for clients in args.clients:
                    prompts = mixed_prompts(text, clients, seed=clients)
                    if single is None:  # the peers measured round by round with this level
                        level, peers = single_level(
                            server,
                            port,
                            name,
                            loaded.model,
                            prompts,
                            args.tokens,
                            args.repeats,
                            threads,
                            loaded.tokenizer,
                        )
                        single = level
                    else:
                        level = measured_level(
                            server, port, name, prompts, args.tokens, args.repeats
                        )
                    print(
                        f"| {name} | {clients} | {level['tokens_per_s']:.0f} "
                        f"| {level['tokens_per_s'] / single['tokens_per_s']:.1f}× "
                        f"| {1000 * level['ttft_p50']:.0f} / {1000 * level['ttft_p99']:.0f} "
                        f"| {1000 * level['itl_p50']:.1f} / {1000 * level['itl_p99']:.1f} "
                        f"| {level['per_chunk']:.1f} "
                        f"| {level['cpu_ms']:.2f} "
                        f"| {level['server_cores']:.2f} / {level['client_cores']:.2f} "
                        f"| {level['errors']} {level['first_error']} |",
                        flush=True,
                    )
                most = mixed_prompts(text, max(args.clients), seed=max(args.clients))
                most_ids = [prompt_ids(loaded.tokenizer, p) for p in most]
                rounds = [
                    engine_rate(loaded.model, most_ids, args.tokens, threads)
                    for _ in range(args.repeats)
                ]
                alone = {min(args.clients): peers["engine"]}
                alone[max(args.clients)] = median_round(rounds)
                one_rate = alone[min(alone)].rate
                for clients, engine_round in alone.items():
                    print(
                        f"| {name} | engine alone (no HTTP), {clients} | {engine_round.rate:.0f} "
                        f"| {engine_round.rate / one_rate:.1f}× | | | | | | |",
                        flush=True,
                    )
                    phases.append(engine_round.phases_row(name, clients, one_rate, threads))
                for threads in peer_threads():
                    rate, cpu_ms = peers[f"sample {threads}"]
                    print(
                        f"| {name} | `sample` loop, {threads} thread(s) | {rate:.0f} "
                        f"| 1 client / sample: {single['tokens_per_s'] / rate:.2f}× | | | "
                        f"| {cpu_ms:.2f} (1 client / sample: {single['cpu_ms'] / cpu_ms:.2f}×) "
                        "| | |",
                        flush=True,
                    )
            print(
                "\nThe engine alone (median round), its seconds by phase; reads-only bound: "
                "generated tokens / read seconds (× the engine alone's 1-sequence rate)\n\n"
                "| model | sequences | tok/s | read s (tokens read) | decode s | sample s "
                "| reads-only bound tok/s | threads: batched / one sequence |\n"
                "|---|---|---|---|---|---|---|---|"
            )
            print("\n".join(phases), flush=True)
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
