"""``--strategy fsdp`` on two CPU processes (gloo): the losses and weights of DDP, the same
checkpoint layout, exact resumption; a fine-tune (``--init-from``) under torchrun."""

import pytest
import torch
from safetensors.torch import load_file

from lmforge.cli import main
from lmforge.training.checkpoint import read_metrics
from tests.conftest import markov_text
from tests.training.test_distributed import GLOO_AVAILABLE, run_two_ranks

pytestmark = pytest.mark.skipif(not GLOO_AVAILABLE, reason="no gloo backend")

MODEL = ["--model", "transformer", "--n-layer", "2", "--n-head", "2", "--n-embd", "16"]
TRAINING = ["--batch-size", "8", "--block-size", "16", "--grad-accum", "2", "--dropout", "0.1"]
TRAINING += ["--max-steps", "6", "--eval-interval", "3", "--log-interval", "1"]
TRAINING += ["--warmup-steps", "2", "--eval-iters", "3", "--device", "cpu", "--quiet"]


def losses(run):
    return [(r["step"], r["train_loss"], r.get("val_loss")) for r in read_metrics(run)]


def test_a_sharded_fine_tune_stopped_and_resumed_logs_what_ddp_logs(tmp_path, monkeypatch):
    corpus, other = tmp_path / "a.txt", tmp_path / "b.txt"
    corpus.write_text(markov_text(4000, seed=0), encoding="utf-8")
    other.write_text(markov_text(4000, seed=5), encoding="utf-8")
    source = tmp_path / "source"
    args = ["train", "--corpus", str(corpus), "--out", str(source), *MODEL, "--max-steps", "3"]
    assert main([*args, "--eval-iters", "1", "--device", "cpu", "--quiet"]) == 0
    script = tmp_path / "lmforge_rank.py"
    script.write_text("import sys\nfrom lmforge.cli import main\nsys.exit(main())\n")

    def torchrun(out, *flags):
        train = ["train", "--init-from", str(source), "--corpus", str(other), "--out", str(out)]
        for code, error in run_two_ranks(script, *train, *TRAINING, *flags):
            assert code == 0, error[-3000:]

    torchrun(tmp_path / "ddp")
    # a sharded run, stopped after step 3's checkpoint and resumed: what DDP logs, whole
    monkeypatch.setenv("LMFORGE_TEST_FAULT", "interrupt:step@4")
    torchrun(tmp_path / "fsdp", "--strategy", "fsdp")
    monkeypatch.delenv("LMFORGE_TEST_FAULT")
    assert [r[0] for r in losses(tmp_path / "fsdp" / "metrics.jsonl")][-1] < 6
    for code, error in run_two_ranks(script, "train", "--resume", str(tmp_path / "fsdp")):
        assert code == 0, error[-3000:]
    ddp, fsdp = (losses(tmp_path / run / "metrics.jsonl") for run in ("ddp", "fsdp"))
    assert [r[0] for r in fsdp] == list(range(7))
    for (step, train, val), (_, sharded_train, sharded_val) in zip(ddp, fsdp, strict=True):
        assert sharded_train == pytest.approx(train, rel=1e-5), step
        assert sharded_val == (val if val is None else pytest.approx(val, rel=1e-5)), step
    # the same checkpoint layout (tied weights once), the same weights
    replicated = load_file(tmp_path / "ddp" / "model.safetensors")
    gathered = load_file(tmp_path / "fsdp" / "model.safetensors")
    assert gathered.keys() == replicated.keys()
    for name, tensor in replicated.items():
        torch.testing.assert_close(gathered[name], tensor, rtol=1e-4, atol=1e-6)
