"""A corpus of small, real architectures, each with its loss and two batches.

Written apart from genlr's own code, to test it: ``build(name, dtype, seed)`` returns a
:class:`Case` whose model is in train mode, in ``dtype``, on the CPU; its ``loss_fn(model,
batch)`` is a scalar mean loss that uses only the model it is given. Everything is small, so
that a float64 double backward of any case takes well under a second on two CPU cores
(once PyTorch's kernels are warm).

A float64 case is its float32 case upcast: models and floating inputs are drawn in float32
and then cast, so the two dtypes describe the same point of the same problem.

Plain double backward (``autograd.grad(create_graph=True)`` then the grad of ``<g, d>``) does
not run on four cases on the CPU (torch 2.14): ``gpt`` and ``transformer_encoder``, where SDPA
without dropout picks the CPU flash kernel, whose backward has no derivative (it runs under
``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``); ``embedding_bag``, whose backward has no
derivative and no forward-mode rule; and ``compiled_mlp``, as aot_autograd has no double
backward (``model._orig_mod`` is the module uncompiled).

The architectures follow their standard descriptions: GPT-2 (Radford et al., 2019) in the
pre-LayerNorm form, the Transformer (Vaswani et al., 2017), the vision transformer
(Dosovitskiy et al., ICLR 2021), ResNet (He et al., CVPR 2016; torchvision's class as is),
GroupNorm (Wu & He, ECCV 2018), RMSNorm (Zhang & Sennrich, NeurIPS 2019), LSTM and GRU
(Hochreiter & Schmidhuber, 1997; Cho et al., 2014), label smoothing (Szegedy et al., CVPR
2016), knowledge distillation (Hinton et al., 2015), weight normalization (Salimans &
Kingma, NeurIPS 2016), a softly gated mixture of experts (Jacobs et al., 1991) and a sparsely
routed one (Shazeer et al., ICLR 2017; Mixtral, Jiang et al., 2024; the load-balancing loss
of Fedus et al., JMLR 2022), stochastic depth (Huang et al., ECCV 2016) as timm's DropPath
and as ``torchvision.ops.stochastic_depth`` (a Bernoulli mask per sample scaled by 1/keep).
Two cases read tensor values in Python (``routed_experts``, ``trimmed_by_item``): no fixed
trace of them exists.

``NAMES`` is the corpus the Taylor pass must handle. ``WITHOUT_TAYLOR_RULE`` are cases built
the same way around an op the Taylor pass has no rule for and refuses: ``grouped_mm_custom_op``,
hash-routed experts (Roller et al., NeurIPS 2021) run by a ``torch.library.custom_op``
grouped matmul shaped as transformers' fallback, with no forward-mode derivative.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

LR = 1e-3  # the learning rate of a case's single parameter group


@dataclass
class Case:
    name: str
    model: nn.Module
    loss_fn: Callable[[nn.Module, Any], torch.Tensor]
    batch: Any
    probe_batch: Any
    param_groups: list[dict]
    covers: str


@dataclass(frozen=True)
class _Spec:
    covers: str
    make_model: Callable[[], nn.Module]
    loss_fn: Callable[[nn.Module, Any], torch.Tensor]
    make_batch: Callable[[torch.Generator], Any]  # float tensors in float32; build casts them
    param_groups: Callable[[nn.Module], list[dict]] | None = None  # None: one group of all trainable


_SPECS: dict[str, _Spec] = {}


def _case(name: str, covers: str, model, loss_fn, batch, param_groups=None) -> None:
    _SPECS[name] = _Spec(covers, model, loss_fn, batch, param_groups)


def build(name: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> Case:
    """The case ``name``, its parameters and batches drawn from ``seed`` alone."""
    if name not in _SPECS:
        raise KeyError(f"model_zoo: unknown case {name!r}; known: {', '.join(_SPECS)}")
    spec = _SPECS[name]
    with torch.random.fork_rng(devices=[]):  # seed module initialisers without touching the caller's RNG
        torch.manual_seed(seed)
        model = spec.make_model().to(dtype).train()
    g = torch.Generator().manual_seed(seed)
    batch, probe_batch = (_cast(spec.make_batch(g), dtype) for _ in range(2))
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = spec.param_groups(model) if spec.param_groups else [{"params": trainable, "lr": LR}]
    return Case(name, model, spec.loss_fn, batch, probe_batch, groups, spec.covers)


def _cast(batch, dtype: torch.dtype):
    """Floating tensors to ``dtype``; integer and boolean ones as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(dtype) if batch.is_floating_point() else batch
    if isinstance(batch, dict):
        return {k: _cast(v, dtype) for k, v in batch.items()}
    return tuple(_cast(v, dtype) for v in batch)


# ---------------------------------------------------------------------------------------------
# Shared losses and batches


def classify(model: nn.Module, batch) -> torch.Tensor:
    """``batch = (inputs, labels)``: cross entropy of the model's logits."""
    x, y = batch
    return F.cross_entropy(model(x), y)


def next_token(model: nn.Module, batch) -> torch.Tensor:
    """``batch = (tokens,)`` of shape (B, T+1): predict each token from those before it."""
    (seq,) = batch
    logits = model(seq[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), seq[:, 1:].flatten())


def own_output(model: nn.Module, batch) -> torch.Tensor:
    """``batch = (x,)``: the model's forward is its loss."""
    (x,) = batch
    return model(x)


def labelled(shape, classes: int):
    """Batches ``(x, y)`` of standard normal inputs of ``shape`` and labels below ``classes``."""
    return lambda g: (torch.randn(shape, generator=g), torch.randint(classes, shape[:1], generator=g))


def tokens(batch: int, length: int, vocab: int):
    """Batches ``(tokens,)`` of ``batch`` rows of ``length + 1`` ids below ``vocab``."""
    return lambda g: (torch.randint(vocab, (batch, length + 1), generator=g),)


def mlp(*widths: int, act: Callable[[], nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Linear(a, b)] + ([act()] if i < len(widths) - 2 else [])
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------
# 1. GPT: a nanoGPT / GPT-2 shaped causal language model


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.resid_dropout = nn.Dropout(dropout)
        self.heads, self.dropout = heads, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in self.qkv(x).split(C, 2))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.resid_dropout(self.proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class GPTBlock(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab=32, block=16, layers=2, heads=2, width=32, dropout=0.0) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(block, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(GPTBlock(width, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as in GPT-2
        self.apply(self._init)
        for block in self.blocks:  # GPT-2: residual projections scaled by 1/sqrt(number of residual layers)
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def decay_groups(model: nn.Module) -> list[dict]:
    """nanoGPT's two groups: weight decay on matrices (and the tied embedding), none on the rest."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "lr": LR, "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "lr": LR, "weight_decay": 0.0},
    ]


_GPT_COVERS = (
    "GPT-2-shaped causal LM: token+position embeddings, pre-LN blocks, F.scaled_dot_product_attention"
    "(is_causal=True), GELU MLP, lm_head tied to the embedding, next-token CE over (B, T); "
    "nanoGPT decay/no-decay groups"
)
_case("gpt", _GPT_COVERS + "; dropout 0", GPT, next_token, tokens(2, 16, 32), decay_groups)
_case("gpt_dropout", _GPT_COVERS + "; dropout 0.1 (embedding, residual nn.Dropout and SDPA dropout_p)",
      lambda: GPT(dropout=0.1), next_token, tokens(2, 16, 32), decay_groups)


# ---------------------------------------------------------------------------------------------
# 2. Recurrent language models


class RecurrentLM(nn.Module):
    def __init__(self, cell: type[nn.RNNBase], vocab=24, width=16, hidden=24) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.rnn = cell(width, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(idx))
        return self.head(out)


_case("lstm_lm", "Embedding -> 2-layer batch_first nn.LSTM -> Linear, next-token CE",
      lambda: RecurrentLM(nn.LSTM), next_token, tokens(3, 10, 24))
_case("gru_lm", "Embedding -> 2-layer batch_first nn.GRU -> Linear, next-token CE",
      lambda: RecurrentLM(nn.GRU), next_token, tokens(3, 10, 24))


# ---------------------------------------------------------------------------------------------
# 3. nn.TransformerEncoder


class EncoderClassifier(nn.Module):
    """Two nn.TransformerEncoderLayer over feature sequences, mean-pooled over the real positions."""

    def __init__(self, dropout: float, norm_first: bool, width=16, classes=5) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            width, nhead=2, dim_feedforward=32, dropout=dropout, batch_first=True, norm_first=norm_first
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        h = self.encoder(x, src_key_padding_mask=pad)
        if pad is None:
            return self.head(h.mean(1))
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1))


def padded_classify(model: nn.Module, batch: dict) -> torch.Tensor:
    """``batch = {"x", "pad", "y"}``: ``pad`` is True at padding positions."""
    return F.cross_entropy(model(batch["x"], batch["pad"]), batch["y"])


def right_padding(g: torch.Generator, batch: int, length: int) -> torch.Tensor:
    """(batch, length) bool, True after each row's random length (at least 2 real positions)."""
    lengths = torch.randint(2, length + 1, (batch, 1), generator=g)
    return torch.arange(length) >= lengths


def padded_sequences(g: torch.Generator) -> dict:
    x = torch.randn(4, 8, 16, generator=g)
    return {"x": x, "pad": right_padding(g, 4, 8), "y": torch.randint(5, (4,), generator=g)}


_case("transformer_encoder",
      "nn.TransformerEncoder of 2 post-LN nn.TransformerEncoderLayer (dropout 0, batch_first), mean-pool, CE",
      lambda: EncoderClassifier(0.0, norm_first=False), classify, labelled((3, 8, 16), 5))
_case("transformer_encoder_dropout",
      "nn.TransformerEncoderLayer with dropout 0.1, norm_first=True and a src_key_padding_mask; "
      "masked mean-pool; dict batch",
      lambda: EncoderClassifier(0.1, norm_first=True), padded_classify, padded_sequences)


# ---------------------------------------------------------------------------------------------
# 4. Vision transformer


class ViTBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y)[0]  # need_weights=True (the default): the explicit softmax path
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    def __init__(self, image=16, patch=4, width=16, heads=2, layers=2, classes=10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, width, patch, stride=patch)
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.pos = nn.Parameter(0.02 * torch.randn(1, (image // patch) ** 2 + 1, width))
        self.blocks = nn.Sequential(*(ViTBlock(width, heads) for _ in range(layers)))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        patches = self.patch(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(img), -1, -1), patches], 1) + self.pos
        return self.head(self.ln(self.blocks(x))[:, 0])


_case("vit", "ViT: patch Conv2d, class token, position embedding, pre-LN nn.MultiheadAttention blocks",
      ViT, classify, labelled((3, 3, 16, 16), 10))


# ---------------------------------------------------------------------------------------------
# 5-8. Convolutional networks and normalisation layers

_case("resnet18", "torchvision resnet18(num_classes=10) on 3x32x32, BatchNorm2d in train mode",
      lambda: torchvision.models.resnet18(num_classes=10), classify, labelled((4, 3, 32, 32), 10))

_case("groupnorm_cnn", "Conv2d + nn.GroupNorm + SiLU, strided conv, AdaptiveAvgPool2d, Linear head",
      lambda: nn.Sequential(
          nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(),
          nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GroupNorm(4, 16), nn.SiLU(),
          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)),
      classify, labelled((3, 3, 12, 12), 5))

_case("rmsnorm_mlp", "MLP with nn.RMSNorm (learned scale) and SiLU",
      lambda: nn.Sequential(
          nn.Linear(10, 32), nn.RMSNorm(32), nn.SiLU(),
          nn.Linear(32, 32), nn.RMSNorm(32), nn.SiLU(), nn.Linear(32, 4)),
      classify, labelled((6, 10), 4))


class FrozenBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ).requires_grad_(False)
        self.head = mlp(16, 16, 5, act=nn.Tanh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def weight_and_bias_groups(model: nn.Module) -> list[dict]:
    """Two groups of the trainable parameters: weights at 1e-2, biases at 1e-3."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if not n.endswith("bias")], "lr": 1e-2},
        {"params": [p for n, p in named if n.endswith("bias")], "lr": 1e-3},
    ]


_case("frozen_backbone_head",
      "frozen conv/BatchNorm2d backbone (requires_grad_(False), BN still in train mode), trainable MLP head "
      "in two groups (weights lr 1e-2, biases lr 1e-3)",
      FrozenBackbone, classify, labelled((4, 3, 8, 8), 5), weight_and_bias_groups)


# ---------------------------------------------------------------------------------------------
# 9. A trainable parameter broadcast against a frozen or constant operand (a known bug's shape)


class FrozenOutputBroadcastBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(8, 8).requires_grad_(False)
        self.b, self.w = nn.Parameter(torch.randn(8)), nn.Parameter(torch.randn(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.frozen(x) + self.b).mean(0) * self.w).pow(2).sum()


class FrozenFeatureMapChannelBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Conv2d(3, 6, 3).requires_grad_(False)
        self.b, self.w = nn.Parameter(torch.randn(6, 1, 1)), nn.Parameter(torch.randn(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(self.frozen(x) + self.b).mean((0, 2, 3)) * self.w).pow(2).sum()


class ConstantMinusBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b, self.w = nn.Parameter(torch.randn(8)), nn.Parameter(torch.randn(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.b).mean(0) * self.w).pow(2).sum()


_case("frozen_output_broadcast_bias",
      "trainable (8,) bias added to a frozen Linear's (B, 8) output, reduced over the broadcast batch dim",
      FrozenOutputBroadcastBias, own_output, lambda g: (torch.randn(4, 8, generator=g),))
_case("frozen_feature_map_channel_bias",
      "trainable (C, 1, 1) bias added to a frozen Conv2d's (N, C, H, W) map, tanh, mean over N, H, W",
      FrozenFeatureMapChannelBias, own_output, lambda g: (torch.randn(2, 3, 6, 6, generator=g),))
_case("constant_minus_broadcast_bias",
      "sub with the constant first: (B, 8) input minus a trainable (8,) bias, reduced over the batch dim",
      ConstantMinusBias, own_output, lambda g: (torch.randn(4, 8, generator=g),))


# ---------------------------------------------------------------------------------------------
# 10. Hand-written masked attention


class MaskedFillAttention(nn.Module):
    def __init__(self, vocab=20, width=16, heads=2, classes=3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.head = nn.Linear(width, classes)
        self.heads = heads

    def forward(self, idx: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        x = self.embed(idx)
        q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).triu(1)
        scores = scores.masked_fill(causal, float("-inf")).masked_fill(pad[:, None, None, :], float("-inf"))
        h = self.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1))
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1))


def padded_tokens(g: torch.Generator) -> dict:
    """Right-padded token rows, so every causal row keeps its first key."""
    return {"x": torch.randint(20, (3, 8), generator=g), "pad": right_padding(g, 3, 8),
            "y": torch.randint(3, (3,), generator=g)}


_case("masked_fill_attention",
      "hand-written attention: causal and key-padding masks via masked_fill(-inf), softmax, masked mean-pool",
      MaskedFillAttention, padded_classify, padded_tokens)


# ---------------------------------------------------------------------------------------------
# 11-13. Losses


def mse(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.mse_loss(model(x), y)


_case("mse_regression", "MLP (Tanh, ReLU) regression onto 3 targets with F.mse_loss",
      lambda: mlp(6, 32, 32, 3, act=nn.Tanh), mse,
      lambda g: (torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)))


class BagClassifier(nn.Module):
    def __init__(self, vocab=50, width=16, classes=4) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, width, mode="mean")
        self.head = nn.Linear(width, classes)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.head(self.bag(ids, offsets))


def bag_classify(model: nn.Module, batch) -> torch.Tensor:
    ids, offsets, y = batch
    return F.cross_entropy(model(ids, offsets), y)


def bags(g: torch.Generator, count=4, total=20):
    """Flat ids with ``count`` non-empty bags of random lengths (``offsets`` starts at 0)."""
    cuts = torch.randperm(total - 1, generator=g)[: count - 1].sort().values + 1
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), cuts])
    return torch.randint(50, (total,), generator=g), offsets, torch.randint(4, (count,), generator=g)


_case("embedding_bag", "nn.EmbeddingBag(mode='mean') over flat ids with offsets -> Linear, CE",
      BagClassifier, bag_classify, bags)


def smoothed(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y, label_smoothing=0.1)


class WeightedClassifier(nn.Module):
    """An MLP that owns its criterion: class weights are a buffer, cast with the model."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(10, 24, 5)
        self.criterion = nn.CrossEntropyLoss(weight=torch.linspace(0.5, 2.0, 5), label_smoothing=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def own_criterion(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return model.criterion(model(x), y)


_case("label_smoothing", "MLP classifier, F.cross_entropy with label_smoothing=0.1",
      lambda: mlp(10, 24, 5), smoothed, labelled((6, 10), 5))
_case("label_smoothing_class_weights",
      "nn.CrossEntropyLoss(weight=..., label_smoothing=0.1) held by the model (weights a floating buffer)",
      WeightedClassifier, own_criterion, labelled((6, 10), 5))


# ---------------------------------------------------------------------------------------------
# 14. Assorted operations


class AssortedOps(nn.Module):
    """Many elementwise and indexing operations in one forward; logits divided by a moving value."""

    def __init__(self, inputs=6, width=12, picks=3, classes=4) -> None:
        super().__init__()
        self.inp, self.mix = nn.Linear(inputs, width), nn.Linear(width, width)
        self.register_buffer("pick", torch.randint(width, (1, 7, picks)))  # integer buffer: gather index
        self.out = nn.Linear(2 * width + 7 * picks + 7, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        acts = torch.stack([
            F.gelu(h, approximate="tanh"), F.leaky_relu(h, 0.1), F.elu(h), F.softplus(h),
            F.hardtanh(h, -1.0, 1.0), h.abs(), h.clamp(-0.5, 2.0),
        ], dim=1)                                                      # (B, 7, width)
        mixed = self.mix(acts)
        peak = mixed.max(dim=1).values                                 # no ties: a linear mix
        picked = mixed.gather(2, self.pick.expand(len(x), -1, -1))
        running = mixed.cumsum(2).mean(2)
        gated = torch.where(peak > 0, peak, torch.tanh(peak))
        feats = torch.cat([F.normalize(peak, dim=1), gated, picked.flatten(1), running], 1)
        return self.out(feats) / (h.pow(2).mean(1, keepdim=True) + 1.0)


def logsumexp_ce(model: nn.Module, batch) -> torch.Tensor:
    """Cross entropy written out: logsumexp of the logits minus the gathered true logit."""
    x, y = batch
    logits = model(x)
    return (logits.logsumexp(1) - logits.gather(1, y[:, None]).squeeze(1)).mean()


_case("assorted_ops",
      "stack, gather, cumsum, max over a dim, where, F.normalize, tanh-GELU, leaky_relu, elu, softplus, "
      "hardtanh, abs, clamp, division by a moving value, logsumexp cross entropy, integer buffer",
      AssortedOps, logsumexp_ce, labelled((5, 6), 4))


# ---------------------------------------------------------------------------------------------
# 15-16. More convolutions


def per_pixel(model: nn.Module, batch) -> torch.Tensor:
    """``batch = (images, masks)``; pixels labelled -100 are ignored."""
    x, y = batch
    return F.cross_entropy(model(x), y, ignore_index=-100)


def segmentation_batch(g: torch.Generator):
    y = torch.randint(4, (2, 8, 8), generator=g)
    y[:, :2, :2] = -100  # an unlabelled corner
    return torch.randn(2, 3, 8, 8, generator=g), y


_case("segmentation_nll2d",
      "conv net with (N, C, H, W) logits, per-pixel F.cross_entropy (nll_loss2d) with ignored pixels",
      lambda: nn.Sequential(
          nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
          nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv2d(8, 4, 1)),
      per_pixel, segmentation_batch)


class ConvVariants(nn.Module):
    def __init__(self, classes=5) -> None:
        super().__init__()
        self.image = nn.Sequential(
            nn.Conv2d(4, 8, 3, padding=1), nn.Tanh(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Tanh(),   # depthwise
            nn.Conv2d(8, 8, 1, groups=2), nn.Tanh(),               # grouped
            nn.MaxPool2d(2), nn.AvgPool2d(2),                      # 12 -> 6 -> 3
            nn.ConvTranspose2d(8, 8, 2, stride=2), nn.Tanh(),      # 3 -> 6
            nn.Upsample(scale_factor=2, mode="nearest"),           # 6 -> 12
            nn.Conv2d(8, 4, 3, stride=2, padding=1),               # 12 -> 6
        )
        self.signal = nn.Sequential(nn.Conv1d(4, 8, 5, stride=2), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.image(x).flatten(2)                              # (B, 4, 36) as a 1-d signal
        return self.head(self.signal(seq).mean(2))


_case("conv_variants",
      "Conv1d, depthwise and grouped Conv2d, ConvTranspose2d, Upsample(nearest), MaxPool2d, AvgPool2d, "
      "BatchNorm1d over (N, C, L)",
      ConvVariants, classify, labelled((3, 4, 12, 12), 5))


# ---------------------------------------------------------------------------------------------
# 17-19. Compilation and dropout

_case("compiled_mlp", "MLP wrapped in torch.compile(backend='aot_eager'); the case's model is the compiled module",
      lambda: torch.compile(mlp(10, 32, 32, 4, act=nn.GELU), backend="aot_eager"),
      classify, labelled((6, 10), 4))


class ExplicitDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(10, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.dropout(torch.relu(self.fc1(x)), p=0.2, training=True))  # ignores .eval()


_case("explicit_dropout", "F.dropout(p=0.2, training=True): dropout that .train()/.eval() cannot switch off",
      ExplicitDropout, classify, labelled((6, 10), 4))

_case("batchnorm_mlp_dropout", "MLP with BatchNorm1d and nn.Dropout(0.3) after each hidden layer",
      lambda: nn.Sequential(
          nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3),
          nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4)),
      classify, labelled((8, 10), 4))


# ---------------------------------------------------------------------------------------------
# 20-21. Stochastic depth: residual branches dropped per sample


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """timm's ``drop_path``: in training, each sample's branch is kept with probability
    ``1 - drop_prob`` (one Bernoulli draw per sample, ``Tensor.bernoulli_``) and scaled by
    1/keep, so that its expectation is the branch itself (evaluation's identity)."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)


class DropPathViTBlock(ViTBlock):
    """timm's ViT block: each pre-LN residual branch goes through its own DropPath."""

    def __init__(self, width: int, heads: int, drop_prob: float) -> None:
        super().__init__(width, heads)
        self.drop_path_1, self.drop_path_2 = DropPath(drop_prob), DropPath(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.drop_path_1(self.attn(y, y, y)[0])
        return x + self.drop_path_2(self.mlp(self.ln_2(x)))


class DropPathViT(ViT):
    """The ViT above at 8x8 with DeiT's stochastic depth: block ``l`` of ``L`` drops its
    branches with probability ``l / L * rate`` (Huang et al.'s linear decay rule)."""

    def __init__(self, rate=0.2, layers=2, width=16, heads=2) -> None:
        super().__init__(image=8, patch=4, width=width, heads=heads, layers=layers)
        self.blocks = nn.Sequential(*(DropPathViTBlock(width, heads, rate * (i + 1) / layers)
                                      for i in range(layers)))


_case("vit_drop_path",
      "ViT with timm-style DropPath on each residual branch (drop_prob 0.1, 0.2: a Tensor.bernoulli_ "
      "mask per sample, scaled by 1/keep)",
      DropPathViT, classify, labelled((8, 3, 8, 8), 10))


class StochasticDepthBlock(nn.Module):
    """A pre-activation residual block (GroupNorm, SiLU, two 3x3 convolutions) whose branch
    is dropped per sample by ``torchvision.ops.stochastic_depth(mode="row")``, as
    torchvision's ConvNeXt and EfficientNet blocks drop theirs."""

    def __init__(self, width: int, drop_prob: float) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.GroupNorm(2, width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1),
            nn.GroupNorm(2, width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1))
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torchvision.ops.stochastic_depth(self.branch(x), self.drop_prob, "row", self.training)


_case("resnet_stochastic_depth",
      "conv stem, two pre-activation GroupNorm residual blocks with torchvision.ops.stochastic_depth"
      "(p=0.2, mode='row'), mean-pool, Linear head",
      lambda: nn.Sequential(
          nn.Conv2d(3, 8, 3, padding=1), StochasticDepthBlock(8, 0.2), StochasticDepthBlock(8, 0.2),
          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)),
      classify, labelled((8, 3, 8, 8), 5))


# ---------------------------------------------------------------------------------------------
# More of what users bring


class TiedAutoencoder(nn.Module):
    """Decoder weight is the encoder's transpose; reconstruction by binary cross entropy on logits."""

    def __init__(self, inputs=16, code=6) -> None:
        super().__init__()
        self.encoder = nn.Linear(inputs, code)
        self.decoder_bias = nn.Parameter(torch.zeros(inputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.sigmoid(self.encoder(x)), self.encoder.weight.t(), self.decoder_bias)


def reconstruct(model: nn.Module, batch) -> torch.Tensor:
    (x,) = batch
    return F.binary_cross_entropy_with_logits(model(x), x)


_case("tied_autoencoder", "autoencoder whose decoder reuses the encoder weight transposed; BCE-with-logits",
      TiedAutoencoder, reconstruct, lambda g: (torch.rand(5, 16, generator=g),))


class EinsumMixture(nn.Module):
    """Softly gated experts (Jacobs et al., 1991) with torch.einsum; inputs centred by a buffer."""

    def __init__(self, inputs=8, experts=3, outputs=4) -> None:
        super().__init__()
        self.register_buffer("center", torch.randn(inputs))  # a floating buffer, not a parameter
        self.gate = nn.Linear(inputs, experts)
        self.weight = nn.Parameter(torch.randn(experts, inputs, outputs) / math.sqrt(inputs))
        self.bias = nn.Parameter(torch.zeros(experts, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - self.center
        experts = torch.einsum("bi,eio->beo", x, self.weight) + self.bias
        return torch.einsum("be,beo->bo", self.gate(x).softmax(-1), torch.tanh(experts))


_case("einsum_mixture", "mixture of experts: softmax gate, two torch.einsum contractions, a floating buffer",
      EinsumMixture, classify, labelled((6, 8), 4))


class Distillation(nn.Module):
    """A student and a frozen teacher; the loss mixes CE with the tempered KL to the teacher."""

    def __init__(self) -> None:
        super().__init__()
        self.student = mlp(10, 16, 4)
        self.teacher = mlp(10, 32, 4).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


def distill(model: nn.Module, batch, temperature: float = 2.0) -> torch.Tensor:
    """Hinton et al. (2015): CE plus T^2 KL(teacher || student) at temperature T."""
    x, y = batch
    logits, target = model(x), model.teacher(x)
    kl = F.kl_div(F.log_softmax(logits / temperature, -1), F.log_softmax(target / temperature, -1),
                  reduction="batchmean", log_target=True)
    return 0.5 * F.cross_entropy(logits, y) + 0.5 * temperature**2 * kl


_case("distillation_kl", "student MLP against a frozen teacher submodule: CE + tempered F.kl_div",
      Distillation, distill, labelled((6, 10), 4))

_case("weight_norm_mlp",
      "MLP whose Linear weights are parametrized by nn.utils.parametrizations.weight_norm (g and v trained)",
      lambda: nn.Sequential(
          nn.utils.parametrizations.weight_norm(nn.Linear(10, 24)), nn.Softplus(),
          nn.utils.parametrizations.weight_norm(nn.Linear(24, 4))),
      classify, labelled((6, 10), 4))


# ---------------------------------------------------------------------------------------------
# Models whose graph depends on the data: no fixed trace of them exists


class RoutedExperts(nn.Module):
    """A sparse mixture-of-experts language model in the Mixtral form (Jiang et al., 2024;
    top-k routing of Shazeer et al., ICLR 2017): each token goes to its ``top_k`` experts
    (SwiGLU MLPs) by a softmax router, their outputs are mixed by the renormalised router
    weights; the experts that received tokens are found with ``nonzero`` and each runs on its
    own tokens, gathered with ``torch.where`` and scattered back with ``index_add_``. Returns
    the logits and the switch-transformer load-balancing loss (Fedus et al., JMLR 2022)."""

    def __init__(self, vocab=24, width=16, hidden=24, experts=4, top_k=2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.norm = nn.RMSNorm(width)
        self.router = nn.Linear(width, experts, bias=False)
        self.gate_up = nn.Parameter(torch.randn(experts, width, 2 * hidden) / math.sqrt(width))
        self.down = nn.Parameter(torch.randn(experts, hidden, width) / math.sqrt(hidden))
        self.head = nn.Linear(width, vocab)
        self.experts, self.top_k = experts, top_k

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(idx)
        B, T, C = x.shape
        h = self.norm(x).reshape(B * T, C)
        probs = self.router(h).softmax(-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        mask = F.one_hot(chosen, self.experts).permute(2, 1, 0)  # (experts, top_k, tokens)
        out = torch.zeros_like(h)
        for e in (mask.sum((1, 2)) > 0).nonzero().flatten().tolist():
            slot, token = torch.where(mask[e])
            up, gate = (h[token] @ self.gate_up[e]).chunk(2, -1)
            y = (F.silu(gate) * up) @ self.down[e]
            out.index_add_(0, token, y * weights[token, slot, None])
        x = x + out.view(B, T, C)
        share = mask.sum(1).float().mean(-1).to(probs.dtype)  # tokens per expert / tokens
        balance = self.experts * (share * probs.mean(0)).sum()
        return self.head(x), balance


def next_token_balanced(model: nn.Module, batch) -> torch.Tensor:
    """Next-token CE plus 0.01 times the router's load-balancing loss."""
    (seq,) = batch
    logits, balance = model(seq[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), seq[:, 1:].flatten()) + 0.01 * balance


_case("routed_experts",
      "Mixtral-style sparse MoE LM: RMSNorm, softmax router, top-2 of 4 SwiGLU experts, experts found "
      "with nonzero and run on their own tokens (torch.where, index_add_), load-balancing loss",
      RoutedExperts, next_token_balanced, tokens(3, 8, 24))


class TrimmedEncoder(nn.Module):
    """A padded-sequence classifier that trims the batch to its longest real sequence, reading
    that length off the padding mask with ``.item()`` (as data collators and encoders do to
    skip all-padding columns), then attends with a key-padding mask and mean-pools."""

    def __init__(self, vocab=20, width=16, heads=2, classes=3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, idx: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        length = int((~pad).sum(1).max().item())
        idx, pad = idx[:, :length], pad[:, :length]
        x = self.embed(idx)
        x = self.norm(x + self.attn(x, x, x, key_padding_mask=pad, need_weights=False)[0])
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        return self.head((x * keep).sum(1) / keep.sum(1))


def padded_columns(g: torch.Generator) -> dict:
    """Rows right-padded to 10 positions, each row at most 7 long: the last columns are padding."""
    lengths = torch.randint(2, 8, (4,), generator=g)
    pad = torch.arange(10)[None, :] >= lengths[:, None]
    return {"x": torch.randint(20, (4, 10), generator=g), "pad": pad,
            "y": torch.randint(3, (4,), generator=g)}


_case("trimmed_by_item",
      "padded-sequence classifier that trims the batch to its longest row with mask.sum().max().item(), "
      "then nn.MultiheadAttention with a key-padding mask, LayerNorm, masked mean-pool",
      TrimmedEncoder, padded_classify, padded_columns)


# ---------------------------------------------------------------------------------------------
# Hugging Face's GPT-2 as its modelling code computes it (no transformers needed)

_LOG = logging.getLogger("model_zoo")


class Conv1D(nn.Module):
    """GPT-2's projection: a weight stored (in, out), applied by ``addmm``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(0.02 * torch.randn(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.view(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


class EagerGPT2Block(nn.Module):
    """Eager attention as GPT-2's: heads split by view and permute, scores as
    ``q @ k.transpose(-1, -2)``, the causal mask by ``torch.where`` at the dtype's minimum."""

    def __init__(self, width: int, heads: int, block: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.c_attn, self.c_proj = Conv1D(width, 3 * width), Conv1D(width, width)
        self.c_fc, self.mlp_proj = Conv1D(width, 4 * width), Conv1D(4 * width, width)
        self.register_buffer("causal", torch.tril(torch.ones(block, block, dtype=torch.bool)))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, -1).permute(0, 2, 1, 3)
                   for t in self.c_attn(x).split(C, dim=2))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(v.shape[-1])
        floor = torch.full([], torch.finfo(scores.dtype).min, dtype=scores.dtype)
        scores = torch.where(self.causal[:T, :T], scores, floor)
        out = torch.matmul(scores.softmax(-1), v).permute(0, 2, 1, 3).contiguous()
        return self.c_proj(out.view(B, T, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attend(self.ln_1(x))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class EagerGPT2(nn.Module):
    def __init__(self, vocab=32, width=16, heads=2, layers=2, block=16) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(block, width)
        self.h = nn.ModuleList(EagerGPT2Block(width, heads, block) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.h:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # the tied head


def logged_next_token(model: nn.Module, batch) -> torch.Tensor:
    """``next_token`` that logs on every call, as a Hugging Face model's loss function does
    (``logger.warning_once``): a logging call inside the loss."""
    _LOG.debug("next-token loss over %d rows", batch[0].shape[0])
    return next_token(model, batch)


_case("gpt2_eager_logging",
      "Hugging Face GPT-2's modelling code: Conv1D (addmm) projections, eager attention over a "
      "transposed key, torch.where causal mask, tanh GELU, tied head; a loss that logs",
      EagerGPT2, logged_next_token, tokens(2, 16, 32))


# ---------------------------------------------------------------------------------------------
# An op of the user's own: refused by the Taylor pass, not in NAMES


@torch.library.custom_op("model_zoo::grouped_mm", mutates_args=())
def grouped_mm(x: torch.Tensor, weight: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """Rows ``offs[i-1]:offs[i]`` of ``x`` (sorted by group) times ``weight[i]``: the grouped
    matmul of a mixture of experts, written as transformers' ``grouped_mm`` fallback is (a
    custom op looping over the groups, with a fake kernel and a backward, and no forward-mode
    derivative: ``torch.func.jvp`` gives it a zero tangent without a word)."""
    out = x.new_zeros(x.shape[0], weight.shape[2])
    start = 0
    for i, end in enumerate(offs.tolist()):
        out[start:end] = x[start:end] @ weight[i]
        start = end
    return out


@grouped_mm.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[2])


def _grouped_mm_context(ctx, inputs, output) -> None:
    x, weight, offs = inputs
    ctx.save_for_backward(x, weight, offs)


def _grouped_mm_backward(ctx, grad: torch.Tensor):
    """Made of differentiable ops (the op itself included), so double backward works."""
    x, weight, offs = ctx.saved_tensors
    bounds = [0] + offs.tolist()
    grad_weight = torch.stack([x[a:b].T @ grad[a:b] for a, b in zip(bounds, bounds[1:])])
    return grouped_mm(grad, weight.transpose(1, 2), offs), grad_weight, None


grouped_mm.register_autograd(_grouped_mm_backward, setup_context=_grouped_mm_context)


class HashRoutedExperts(nn.Module):
    """A hash layer (Roller et al., NeurIPS 2021): each token goes to the SwiGLU expert a
    fixed random hash of its id picks; the tokens are sorted by expert, and the experts run
    as two grouped matmuls (``grouped_mm`` above) over their contiguous rows."""

    def __init__(self, vocab=24, width=16, hidden=16, experts=3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.norm = nn.RMSNorm(width)
        self.register_buffer("expert_of", torch.randint(experts, (vocab,)))  # the hash
        self.gate_up = nn.Parameter(torch.randn(experts, width, 2 * hidden) / math.sqrt(width))
        self.down = nn.Parameter(torch.randn(experts, hidden, width) / math.sqrt(hidden))
        self.head = nn.Linear(width, vocab)
        self.experts = experts

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        B, T, C = x.shape
        expert = self.expert_of[idx].flatten()
        order = expert.argsort(stable=True)
        offs = F.one_hot(expert, self.experts).sum(0).cumsum(0)
        up, gate = grouped_mm(self.norm(x).reshape(B * T, C)[order], self.gate_up, offs).chunk(2, -1)
        y = grouped_mm(F.silu(gate) * up, self.down, offs)
        out = torch.empty_like(y).index_copy(0, order, y)
        return self.head(x + out.view(B, T, C))


_case("grouped_mm_custom_op",
      "hash-routed SwiGLU experts run by a torch.library.custom_op grouped matmul (fake kernel and "
      "backward registered, no forward-mode derivative), next-token CE",
      HashRoutedExperts, next_token, tokens(3, 8, 24))

#: Cases with an op the Taylor pass has no rule for and refuses (``curvature="auto"`` takes
#: double backward): outside ``NAMES``, the corpus the Taylor pass must handle.
WITHOUT_TAYLOR_RULE: tuple[str, ...] = ("grouped_mm_custom_op",)

NAMES: tuple[str, ...] = tuple(name for name in _SPECS if name not in WITHOUT_TAYLOR_RULE)
