"""Per-step cost of the GeN and Newt methods relative to plain AdamW, in one process.

Workloads (``--model``), on the CPU (``--device cuda``: on the GPU), at ``--size cpu``:

* ``cnn`` (default): the registry's Fashion-MNIST CNN (2 conv + 2 fc, with dropout), batch
  128; real Fashion-MNIST images where /usr/share/datasets/fashion-mnist is (timing does not
  depend on the values; random tensors of the same shape otherwise). ``small``: a lighter
  CNN without dropout.
* ``gpt``: the registry's GPT (``task=charlm model=gpt`` at their defaults, dropout 0: SDPA,
  tied embeddings; width 128, 4 blocks of 4 heads), batch 32 of 64 characters of the
  standard-library sources.
* ``resnet18``: the registry's ResNet-18 (BatchNorm) on random 3x32x32 images, batch 32.

``--size gpu``: the sizes at which a GPU is busy (launch overhead no longer decides): the GPT
at 6 blocks of width 384 with 6 heads, context 256, batch 64; ResNet-18 at batch 256; the CNN
at batch 512. ``--amp bf16``: the training forward and every method's passes under bfloat16
autocast, as ``gen-train trainer.amp=bf16`` runs them.

    python benchmarks/bench_methods.py              # time ratios (and memory with --memory)
    python benchmarks/bench_methods.py --model gpt --only "gen_exact|gen_parabola (defaults)"
    python benchmarks/bench_methods.py --device cuda --size gpu --model gpt --amp bf16 --memory

Time: a step is zero_grad, forward, backward and method.step. After warm-up, each
configuration runs ``--rounds`` blocks of ``--block`` steps, each right after a block of
plain AdamW; the printed ratio is the median over blocks of method / AdamW (mean step time
per block), with its quartiles. Memory (``--memory``): on a GPU,
``torch.cuda.max_memory_allocated`` over a few training steps after the warm-up, divided by
the same for plain AdamW. On the CPU the peak of the bytes held by live tensors during
training steps (parameters, gradients, optimizer state, activations, the method's own
tensors), counted per storage by a ``TorchDispatchMode`` (``PeakTensorMemory``; process RSS,
tried first, hides a step's tensors at this model size). Under that mode ``torch.compile``
does not run, so the CPU figure of the Taylor pass is that of its eager jet: an upper bound
of the compiled pass's, which fuses away most intermediates.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from genlr import ExactGeN, Newt, ParabolaGeN  # noqa: E402
from genlr.curvature import probe_mode  # noqa: E402
from genlr.curvature.taylor import eager_math_kernels  # noqa: E402
from genlr.methods.gen_base import GeNBase  # noqa: E402
from genlr.models import build_model  # noqa: E402
from genlr.tasks import build_task  # noqa: E402

DATA = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
LABELS = Path("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz")
MODELS = ("cnn", "small", "gpt", "resnet18")
#: per ``--size``: the GPT's task and model options and batch size; the image models' batch
SIZES = {
    "cpu": {"gpt": ({"block_size": 64}, {}, 32), "resnet18": 32, "cnn": 128, "small": 128},
    "gpu": {"gpt": ({"block_size": 256, "max_chars": 1_000_000},
                    {"width": 384, "depth": 6, "heads": 6}, 64),
            "resnet18": 256, "cnn": 512, "small": 512},
}


def classification_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def workload(kind: str, count: int = 16, size: str = "cpu") -> tuple[Callable[[], nn.Module], Callable, list]:
    """``(make_model, loss_fn, batches)`` of a ``--model`` choice at a ``--size``; every
    ``make_model()`` call gives the same initial weights. ``count`` distinct batches (the
    images at most one epoch's): GeN's band probes at a pace that depends on how training
    goes, and a few batches gone round many times are memorised, a run no user makes."""
    if kind == "gpt":
        task_options, model_options, batch_size = SIZES[size]["gpt"]
        task = build_task("charlm", **task_options)
        task.setup("cpu")
        batches = [b for _, b in zip(range(count), task.train_batches(batch_size, epoch=0, seed=0))]
        return seeded(lambda: build_model("gpt", task, **model_options)), task.loss, batches
    batch_size = SIZES[size][kind]
    if kind == "resnet18":
        task = SimpleNamespace(name="cifar10", input_shape=(3, 32, 32), num_outputs=10,
                               tokens=False)
        g = torch.Generator().manual_seed(0)
        batches = [(torch.randn(batch_size, 3, 32, 32, generator=g),
                    torch.randint(0, 10, (batch_size,), generator=g)) for _ in range(count)]
        return seeded(lambda: build_model("resnet18", task)), classification_loss, batches
    return seeded(lambda: image_model(kind)), classification_loss, fashion_batches(count, batch_size)


def on_device(work, device: torch.device):
    """The workload with its model and batches on ``device``."""
    make_model, loss_fn, batches = work
    return (lambda: make_model().to(device)), loss_fn, [tuple(t.to(device) for t in b) for b in batches]


def synchronised(clock: Callable[[], float]) -> Callable[[], float]:
    """A clock that waits for the GPU's queued work first, so that a step's time is its own."""
    def read() -> float:
        torch.cuda.synchronize()
        return clock()
    return read


def seeded(make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def made() -> nn.Module:
        torch.manual_seed(0)
        return make()
    return made


def image_model(kind: str) -> nn.Module:
    """``cnn``: the registry's CNN (``model=cnn``, the PyTorch MNIST example: two 3x3 convs,
    max pooling, dropout, two fc); ``small``: a lighter conv-pool-conv-pool CNN without
    dropout (the tables of earlier sessions)."""
    if kind == "cnn":
        task = SimpleNamespace(name="fashion_mnist", input_shape=(1, 28, 28), num_outputs=10,
                               tokens=False)
        return build_model("cnn", task)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def fashion_batches(count: int, batch_size: int = 128) -> list:
    """``count`` batches of Fashion-MNIST's training images in file order, at most one
    epoch's worth (``run_steps`` goes round them)."""
    n = min(count, 60_000 // batch_size) * batch_size
    if DATA.exists() and LABELS.exists():
        with gzip.open(DATA) as f:
            images = torch.frombuffer(bytearray(f.read(16 + n * 784)[16:]), dtype=torch.uint8)
        with gzip.open(LABELS) as f:
            labels = torch.frombuffer(bytearray(f.read(8 + n)[8:]), dtype=torch.uint8)
        x = (images.float() / 255.0 - 0.286) / 0.353
        x, y = x.view(n, 1, 28, 28), labels.long()
    else:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]


def nested_forward(derivatives, params, d, batch) -> tuple[float, float]:
    """``(phi'(0), phi''(0))`` by nested ``torch.func.jvp`` (no Hessian-vector product) on
    a ``DirectionalDerivatives``' loss. Not a path of genlr's: torch's second-order
    forward-mode formula of batch norm in training mode is wrong (it disagrees with central
    differences, where the paths agree), so only this benchmark measures it."""
    names = derivatives._names(params)
    primals, tangents = tuple(p.detach() for p in params), tuple(d)

    def loss_of(*ps):
        return torch.func.functional_call(derivatives._bound, dict(zip(names, ps)), (batch,),
                                          strict=False)

    def slope_of(*ps):
        return torch.func.jvp(loss_of, ps, tangents)[1]

    with torch.no_grad(), probe_mode(derivatives.model), derivatives.autocast(), eager_math_kernels():
        slope, second = torch.func.jvp(slope_of, primals, tangents)
    return float(slope), float(second)


def nested_forward_gen(*args: Any, **kwargs: Any) -> ExactGeN:
    """ExactGeN with ``d^T H d`` by nested forward mode (``nested_forward``): measured here
    only."""
    method = ExactGeN(*args, curvature="taylor", **kwargs)
    method.derivatives._taylor = lambda params, d, batch, compile=True: nested_forward(
        method.derivatives, params, d, batch)
    return method


def interpreted(method: ExactGeN) -> ExactGeN:
    """The Taylor pass's jet graph interpreted op by op instead of compiled."""
    method.derivatives._taylor_pass.compile = False
    return method


def without_jets(method: Newt) -> Newt:
    """Newt's lookahead slopes by a forward and backward pass (before issue 21), not jets."""
    method._jet = None
    return method


CONFIGS: dict[str, Callable[[Any, nn.Module, Callable, dict], Any] | None] = {
    "adamw": None,
    # A second plain AdamW: its ratio is the measurement's own floor and spread.
    "adamw again (control)": lambda o, m, f, a: None,
    "gen_exact every=1 taylor": lambda o, m, f, a: ExactGeN(o, m, f, **a, every=1, curvature="taylor"),
    "gen_exact every=1 taylor interpreted": lambda o, m, f, a: interpreted(
        ExactGeN(o, m, f, **a, every=1, curvature="taylor")),
    "gen_exact every=1 double_backward": lambda o, m, f, a: ExactGeN(o, m, f, **a, every=1,
                                                                  curvature="double_backward"),
    "gen_exact every=1 forward_over_reverse": lambda o, m, f, a: ExactGeN(
        o, m, f, **a, every=1, curvature="forward_over_reverse"),
    "gen_exact every=1 forward_forward": lambda o, m, f, a: nested_forward_gen(o, m, f, **a, every=1),
    "gen_exact every=1 taylor sub-batch 1/4": lambda o, m, f, a: ExactGeN(
        o, m, f, **a, every=1, curvature="taylor", curvature_batch=0.25),
    "gen_exact (defaults)": lambda o, m, f, a: ExactGeN(o, m, f, **a),
    "gen_parabola every=1": lambda o, m, f, a: ParabolaGeN(o, m, f, **a, every=1),
    "gen_parabola every=4": lambda o, m, f, a: ParabolaGeN(o, m, f, **a, every=4),
    "gen_parabola every=8": lambda o, m, f, a: ParabolaGeN(o, m, f, **a, every=8),
    "gen_parabola (defaults)": lambda o, m, f, a: ParabolaGeN(o, m, f, **a),
    "newt full-batch lookahead": lambda o, m, f, a: Newt(o, m, f, **a, lookahead_batch=None),
    "newt (defaults)": lambda o, m, f, a: Newt(o, m, f, **a),
    "newt lookahead on 1/8 of the batch": lambda o, m, f, a: Newt(o, m, f, **a,
                                                                  lookahead_batch=0.125),
    "newt (defaults) by forward and backward": lambda o, m, f, a: without_jets(Newt(o, m, f, **a)),
    "newt next_step (zero-pass)": lambda o, m, f, a: Newt(o, m, f, **a, lookahead="next_step"),
    "newt window (zero-pass)": lambda o, m, f, a: Newt(o, m, f, **a, lookahead="window"),
}


#: ``--amp``: the training autocast (a factory, as the methods take it), set by ``main``
AUTOCAST: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


def autocast_factory(amp: str, device: str) -> Callable[[], contextlib.AbstractContextManager]:
    if amp == "none":
        return contextlib.nullcontext
    return lambda: torch.autocast(device, dtype=torch.bfloat16)


def build(name: str, work):
    make_model, loss_fn, _ = work
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    factory = CONFIGS[name]
    method = factory(opt, model, loss_fn, {"autocast": AUTOCAST}) if factory is not None else None
    return model, opt, method, loss_fn


def run_steps(built, batches, steps: int, start: int = 0,
              clock: Callable[[], float] = time.perf_counter) -> list[float]:
    model, opt, method, loss_fn = built
    times = []
    for i in range(steps):
        batch = batches[(start + i) % len(batches)]
        t0 = clock()
        opt.zero_grad(set_to_none=True)
        with AUTOCAST():
            loss = loss_fn(model, batch)
        loss.backward()
        if method is None:
            opt.step()
        else:  # as gen-train: the batch the next step trains on
            method.step(batch, loss=loss, probe_batch=batches[(start + i + 1) % len(batches)])
        times.append(clock() - t0)
    return times


def time_configs(names: list[str], block: int, rounds: int, work,
                 clock: Callable[[], float] = time.perf_counter, warmup: int = 32) -> dict:
    """Per configuration, the median over ``rounds`` of (mean step time of a block of
    ``block`` steps) / (the same for a block of plain AdamW run just before it, on the same
    batches), and the quartiles of those ratios. A block holds whole probe periods
    (``block`` a multiple of ``every``), so each one carries its share of probe steps;
    pairing adjacent blocks cancels slow drift of the machine's speed, and the median drops
    the blocks a background burst hit (on a shared 2-core machine single ratios swing by
    +-30%). ``warmup`` steps per configuration come first (first-call tracing; a lazy
    method's pace early in a run), then the timed blocks go on through the batches.
    ``result["probes"][name]``: a GeN configuration's probes per timed step (the pace
    measured)."""
    batches = work[2]
    built = {name: build(name, work) for name in ["adamw", *names]}
    for one in built.values():
        run_steps(one, batches, warmup)
    probed = {name: probes(built[name]) for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    base_ms = []
    for r in range(rounds):
        for name in names:
            pair = []
            for which in ("adamw", name):
                pair.append(statistics.fmean(run_steps(built[which], batches, block,
                                                       start=warmup + r * block, clock=clock)))
            base_ms.append(pair[0] * 1e3)
            ratios[name].append(pair[1] / pair[0])
    result = {"adamw_ms": statistics.median(base_ms),
              "probes": {name: (probes(built[name]) - probed[name]) / (rounds * block)
                         for name in names if isinstance(built[name][2], GeNBase)}}
    for name, values in ratios.items():
        result[name] = tuple(statistics.quantiles(values, n=4)) if len(values) > 1 else values * 3
    return result


def probes(built) -> int:
    """A GeN method's probe steps so far (0 for anything else)."""
    method = built[2]
    return method.account["probes"] if isinstance(method, GeNBase) else 0


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storages alive at once while the mode is active: the storages
    of ``existing`` tensors (given at entry) and of every op's outputs, each storage counted
    once however many views share it, and dropped when it is freed."""

    def __init__(self, existing: list[torch.Tensor]) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        for t in existing:
            self._track(t)
        self.peak = self._total()

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ref = StorageWeakRef(storage)
        self.live.setdefault(ref.cdata, (ref, storage.nbytes()))

    def _total(self) -> int:
        return sum(n for _, n in self.live.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Forget freed storages first, so that a reused address counts as a new storage.
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            del self.live[key]
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._track(t)
        self.peak = max(self.peak, self._total())
        return out


def peak_memory(name: str, steps: int, work) -> int:
    """Peak tensor bytes over ``steps`` training steps after a warm-up (which creates the
    optimizer state and compiles the Taylor pass outside the measurement): CUDA's peak
    allocation on a GPU, live tensor bytes (``PeakTensorMemory``) on the CPU."""
    built = build(name, work)
    model, opt = built[:2]
    run_steps(built, work[2], 8)
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        run_steps(built, work[2], steps, start=8)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        del built, model, opt
        torch.cuda.empty_cache()
        return peak
    state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    with PeakTensorMemory([*model.parameters(), *state]) as meter:
        run_steps(built, work[2], steps, start=8)
    return meter.peak


def newt_breakdown(work, steps: int, clock: Callable[[], float]) -> None:
    """Where Newt's step (its defaults) spends its time: each part of ``Newt.step`` timed,
    against a plain AdamW step, over ``steps`` steps after a warm-up."""
    model, opt, method, loss_fn = build("newt (defaults)", work)
    parts: dict[str, float] = {}

    def timed(name: str, fn: Callable) -> Callable:
        def run(*args, **kwargs):
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                parts[name] = parts.get(name, 0.0) + clock() - t0
        return run

    method._slopes_at = timed("lookahead slopes (2 per step)", method._slopes_at)
    method.capture_direction = timed("optimizer step and direction", method.capture_direction)
    method.shift = timed("parameter moves", method.shift)
    method._group_dots = timed("inner products", method._group_dots)
    base = build("adamw", work)
    run_steps(base, work[2], 4)
    run_steps((model, opt, method, loss_fn), work[2], 4)
    parts.clear()
    adamw = statistics.fmean(run_steps(base, work[2], steps, clock=clock))
    newt = statistics.fmean(run_steps((model, opt, method, loss_fn), work[2], steps, clock=clock))
    print(f"Newt (defaults) {newt / adamw:.2f} x AdamW ({adamw * 1e3:.1f} ms); of its step:")
    for name, total in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {name:32s} {total / steps / adamw:5.2f} of an AdamW step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", type=int, default=16,
                        help="steps per timed block (a multiple of the lazy methods' every)")
    parser.add_argument("--warmup", type=int, default=32,
                        help="steps before timing (GeN's band probes every fourth step until "
                             "a window of probes has held the lr, up to every 16th after: "
                             "a few hundred steps measure the settled pace)")
    parser.add_argument("--rounds", type=int, default=9,
                        help="timed blocks per configuration (0: no timing, memory alone)")
    parser.add_argument("--only", default="",
                        help="keep configurations whose name contains one of these "
                             "'|'-separated substrings")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory ratios")
    parser.add_argument("--model", choices=MODELS, default="cnn", help="the workload (see above)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or the process's CPU time (steadier when other "
                             "processes share the cores; run with one thread then)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where the model and batches live (cuda: wall clock, synchronised)")
    parser.add_argument("--size", choices=list(SIZES), default="cpu",
                        help="the workload's size (gpu: batches that keep a GPU busy, see above)")
    parser.add_argument("--amp", choices=["none", "bf16"], default="none",
                        help="bf16: every forward under bfloat16 autocast")
    parser.add_argument("--newt-breakdown", type=int, default=0, metavar="STEPS",
                        help="time the parts of Newt's step over STEPS steps, and nothing else")
    args = parser.parse_args()
    if args.device == "cuda" and (args.clock == "cpu" or not torch.cuda.is_available()):
        parser.error("--device cuda needs a CUDA device and the wall clock")
    global AUTOCAST
    AUTOCAST = autocast_factory(args.amp, args.device)
    names = [n for n in CONFIGS if n != "adamw" and any(s in n for s in args.only.split("|"))]
    count = args.warmup + max(args.rounds, 1) * args.block  # a batch for every timed step
    work = on_device(workload(args.model, count, args.size), torch.device(args.device))
    timed = args.rounds > 0
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    if args.device == "cuda":
        clock = synchronised(clock)
    if args.newt_breakdown:
        return newt_breakdown(work, args.newt_breakdown, clock)
    result = time_configs(names, args.block, args.rounds, work, clock, args.warmup) if timed else {}
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, model {args.model}, "
          f"size {args.size}, batch {len(work[2][0][1])}, amp {args.amp}"
          + (f", AdamW step {result['adamw_ms']:.1f} ms ({args.clock} clock)" if timed else ""))
    base_memory = peak_memory("adamw", 4, work) if args.memory else 0
    if args.memory:
        print(f"AdamW peak live tensor memory {base_memory / 2**20:.1f} MiB")
    print(f"{'configuration':42s}" + (f" {'time / AdamW':>12s} {'quartiles':>11s}" if timed else "")
          + (f" {'memory / AdamW':>15s}" if args.memory else ""))
    for name in names:
        line = f"{name:42s}"
        if timed:
            q1, median, q3 = result[name]
            line += f" {median:12.2f} {q1:5.2f}-{q3:<5.2f}"
            if name in result["probes"]:
                line += f"  probes/step {result['probes'][name]:.3f}"
        if args.memory:
            line += f" {peak_memory(name, 4, work) / base_memory:15.2f}"
        print(line, flush=True)

if __name__ == "__main__":
    main()
