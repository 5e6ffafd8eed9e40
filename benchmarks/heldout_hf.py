"""Held-out workload (docs/heldout.md): a Hugging Face GPT-2 trained by genlr in a user's
own loop.

``transformers``' ``GPT2LMHeadModel`` (2 layers, width 64, 4 heads, context 64), built
from its config (no download), learns the Python reference manual's prose character by
character (``CharLM(corpus="python_docs")``) with AdamW, batch 32, ``--steps`` steps. Rows:
a constant and a cosine lr from the optimizer's default 1e-3 and the best of each over
x0.1, x0.3, x1, x3, x10 (the tuned baselines), and each GeN variant at its library
defaults plus the horizon scale (``scale="cosine"``, as gen-train runs it) from x0.1, x1
and x10. Each run's final eval loss (nats/char) goes into ``OUT/<row>.json``; a rerun skips
finished rows. ``--model llama``: the same loop with ``LlamaForCausalLM`` (grouped-query
attention 4/2 heads, RMSNorm, rotary positions, SwiGLU) at the same width and depth. ::

    python benchmarks/heldout_hf.py [OUT] [--steps 600] [--rows gen_exact@1,...] [--model llama]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from genlr import ExactGeN, ParabolaGeN
from genlr.methods.schedules import Constant, Cosine
from genlr.tasks.text import CharLM

DEFAULT_LR = 1e-3
BASELINE_MULTIPLIERS = (0.1, 0.3, 1.0, 3.0, 10.0)
GEN_MULTIPLIERS = (0.1, 1.0, 10.0)
METHODS = {"constant": Constant, "cosine": Cosine, "gen_exact": ExactGeN,
           "gen_parabola": ParabolaGeN}


def rows() -> list[tuple[str, float]]:
    return ([(b, m) for b in ("constant", "cosine") for m in BASELINE_MULTIPLIERS]
            + [(g, m) for g in ("gen_exact", "gen_parabola") for m in GEN_MULTIPLIERS])


def loss_fn(model, batch) -> torch.Tensor:
    x, y = batch
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def evaluate(model, task: CharLM) -> float:
    """The mean loss per character over the whole held-out text."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in task.eval_batches(64):
            total += float(loss_fn(model, (x, y))) * y.numel()
            count += y.numel()
    model.train()
    return total / count


def batches(task: CharLM, batch_size: int, seed: int):
    epoch = 0
    while True:
        yield from task.train_batches(batch_size, epoch, seed)
        epoch += 1


def build_model(kind: str, vocab_size: int) -> torch.nn.Module:
    """A 2-layer, width-64 Hugging Face causal LM from its config, without dropout."""
    import transformers

    if kind == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            bos_token_id=None, eos_token_id=None))
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=64, n_embd=64, n_layer=2, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None,
        eos_token_id=None))


def train(method: str, multiplier: float, steps: int, seed: int = 0,
          kind: str = "gpt2") -> dict:
    task = CharLM(corpus="python_docs", block_size=64)
    task.setup("cpu")
    torch.manual_seed(seed)
    model = build_model(kind, len(task.chars))
    lr = DEFAULT_LR * multiplier
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    options = {"scale": "cosine"} if method.startswith("gen") else {}
    runner = METHODS[method](optimizer, model, loss_fn, total_steps=steps, **options)
    stream = batches(task, 32, seed)
    upcoming, lrs, started = next(stream), [], time.perf_counter()
    for step in range(steps):
        batch, upcoming = upcoming, next(stream)
        optimizer.zero_grad()
        loss = loss_fn(model, batch)
        if not math.isfinite(float(loss.detach())):
            return {"status": "diverged", "step": step, "lrs": lrs}
        loss.backward()
        lrs.append(runner.step(batch, loss=loss, probe_batch=upcoming))
    return {"status": "completed", "eval_loss": evaluate(model, task), "lrs": lrs[::10],
            "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="outputs/heldout_hf")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rows", help="only these rows, e.g. gen_exact@1,constant@0.3")
    parser.add_argument("--model", choices=("gpt2", "llama"), default="gpt2")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [(r.split("@")[0], float(r.split("@")[1])) for r in args.rows.split(",")] \
        if args.rows else rows()
    for method, multiplier in chosen:
        file = out / f"{method}@{multiplier:g}.json"
        if not file.exists():
            file.write_text(json.dumps(train(method, multiplier, args.steps, kind=args.model)))
        result = json.loads(file.read_text())
        print(f"{method:13s} x{multiplier:<4g} {result['status']:9s} "
              f"eval loss {result.get('eval_loss', math.inf):.4f}, "
              f"{result.get('seconds', math.nan):.1f} s", flush=True)


if __name__ == "__main__":
    main()
