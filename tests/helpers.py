"""Shared helpers of the tests: gate settings, parity checks and a hypothesis strategy of
random architectures (test_prune.py, test_onnx.py); a small trained LUT network
(test_difflut.py, test_hw_sim.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

import hwnas

try:  # tests/ as a plain directory on sys.path (pytest rootdir "prepend" import mode)
    from zoo import build
except ImportError:  # tests/ imported as a package
    from tests.zoo import build



def randomize_norms_(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine terms, so that BN shifts matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.randn(n, generator=g) * 0.5 + 1.0)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.5)
    return model


def set_gates_(
    search: hwnas.SearchModel, fraction: float, seed: int, low: float = 0.3
) -> dict[int, torch.Tensor]:
    """Close ``round(fraction * n)`` random gates of every free group; the others get
    values in ``[low, 1]`` (values below 1 exercise folding). Returns the values set."""
    g = torch.Generator().manual_seed(seed)
    values = {}
    for group in search.free_groups:
        gate = search.gate(group)
        v = low + (1.0 - low) * torch.rand(gate.n, generator=g)
        v[torch.randperm(gate.n, generator=g)[: int(round(fraction * gate.n))]] = 0.0
        gate.set_deterministic_(v)
        values[group] = v
    return values


def batch_of(x: torch.Tensor, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([x, torch.randn((n - 1, *x.shape[1:]), generator=g)], 0)


def max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return max(float((a(xb) - b(xb)).abs().max()) for xb in (x, batch_of(x, 3)))


def check_costs(pruned: nn.Module, search: hwnas.SearchModel, x: torch.Tensor) -> None:
    total = hwnas.profile(pruned, x).iloc[-1]
    costs = search.costs()
    assert float(total["params"]) == costs["params"]
    assert float(total["ops"]) == costs["ops"]


def search_of(name: str, seed: int = 0) -> tuple[hwnas.SearchModel, torch.Tensor]:
    model, x = build(name, seed)
    randomize_norms_(model, seed + 100)
    return hwnas.wrap(model.eval(), x), x


# ------------------------------------------------------------ random architectures

ACTS = ("relu", "relu6", "silu", "sigmoid", "none")


def _act(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "silu": nn.SiLU(), "sigmoid": nn.Sigmoid(),
            "none": nn.Identity()}[name]


class ConvBNAct(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, bn: bool, act: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=not bn)
        self.bn = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Residual(nn.Module):
    def __init__(self, c: int, mid: int, act: str) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvBNAct(c, mid, 3, True, act), ConvBNAct(mid, c, 1, True,
                                                                             "none"))
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class Concat(nn.Module):
    def __init__(self, cin: int, c1: int, c2: int, act: str) -> None:
        super().__init__()
        self.a = ConvBNAct(cin, c1, 1, True, act)
        self.b = ConvBNAct(cin, c2, 3, False, "relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], 1)


class Depthwise(nn.Module):
    def __init__(self, c: int, bn: bool, act: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=not bn)
        self.bn = nn.BatchNorm2d(c) if bn else nn.Identity()
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ChunkCat(nn.Module):
    """ShuffleNet-style: split the channels in two, transform one half, concatenate."""

    def __init__(self, c: int, act: str, first: bool) -> None:
        super().__init__()
        self.first = first
        c1 = (c + 1) // 2  # torch.chunk puts the larger piece first
        self.conv = ConvBNAct(c1 if first else c - c1, c1 if first else c - c1, 1, True, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        if self.first:
            return torch.cat([self.conv(a), b], 1)
        return torch.cat([a, self.conv(b)], 1)


class ChunkAdd(nn.Module):
    """Split in two halves and add them (couples the halves' channels): GLU-like."""

    def __init__(self, c: int, act: str) -> None:
        super().__init__()
        self.conv = ConvBNAct(c // 2, c // 2, 1, True, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return self.conv(a) + torch.sigmoid(b)


class SE(nn.Module):
    """Squeeze-excitation multiply; conv style (keepdim mean) or linear style (view)."""

    def __init__(self, c: int, hidden: int, linear: bool) -> None:
        super().__init__()
        self.c, self.linear = c, linear
        if linear:
            self.fc1: nn.Module = nn.Linear(c, hidden)
            self.fc2: nn.Module = nn.Linear(hidden, c)
        else:
            self.fc1 = nn.Conv2d(c, hidden, 1)
            self.fc2 = nn.Conv2d(hidden, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.linear:
            s = x.mean((2, 3))
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(s)))).view(x.size(0), self.c, 1, 1)
        else:
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * s


class RandomNet(nn.Module):
    """A fixed list of blocks, then GAP + Linear or (pool) flatten + Linear."""

    def __init__(self, blocks: list[nn.Module], head: str, c: int, classes: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        features = c if head == "gap" else c * (16 if head == "pool_flatten" else 64)
        self.fc = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.head == "gap":
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        elif self.head == "pool_flatten":
            x = torch.flatten(F.max_pool2d(x, 2), 1)
        else:
            x = x.reshape(x.size(0), -1)
        return self.fc(x)


WIDTH = st.integers(2, 12)
BLOCK = st.one_of(
    st.tuples(st.just("conv"), WIDTH, st.sampled_from((1, 3)), st.booleans(),
              st.sampled_from(ACTS)),
    st.tuples(st.just("res"), WIDTH, st.sampled_from(ACTS)),
    st.tuples(st.just("cat"), st.integers(1, 6), st.integers(1, 6), st.sampled_from(ACTS)),
    st.tuples(st.just("dw"), st.booleans(), st.sampled_from(ACTS)),
    st.tuples(st.just("chunk"), st.sampled_from(ACTS), st.booleans()),
    st.tuples(st.just("chunk_add"), st.sampled_from(ACTS)),
    st.tuples(st.just("se"), WIDTH, st.booleans()),
)
# The stem is a conv: blocks applied to the (frozen) model input would freeze their groups.
STEM = st.tuples(st.just("conv"), WIDTH, st.sampled_from((1, 3)), st.booleans(),
                 st.sampled_from(ACTS))
ARCH = st.fixed_dictionaries({
    "cin": st.integers(1, 4),
    "blocks": st.tuples(STEM, st.lists(BLOCK, min_size=1, max_size=5)).map(
        lambda t: [t[0], *t[1]]),
    "head": st.sampled_from(("gap", "flatten", "pool_flatten")),
    "classes": st.integers(2, 5),
    "seed": st.integers(0, 2**16),
})
GATES = st.tuples(st.floats(0.0, 0.95), st.floats(0.2, 1.0), st.integers(0, 2**16))


def build_random(arch: dict) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(arch["seed"])
    c = arch["cin"]
    blocks: list[nn.Module] = []
    for spec in arch["blocks"]:
        kind = spec[0]
        if kind == "conv":
            blocks.append(ConvBNAct(c, spec[1], spec[2], spec[3], spec[4]))
            c = spec[1]
        elif kind == "res":
            blocks.append(Residual(c, spec[1], spec[2]))
        elif kind == "cat":
            blocks.append(Concat(c, spec[1], spec[2], spec[3]))
            c = spec[1] + spec[2]
        elif kind == "dw":
            blocks.append(Depthwise(c, spec[1], spec[2]))
        elif kind == "chunk" and c >= 2:
            blocks.append(ChunkCat(c, spec[1], spec[2]))
        elif kind == "chunk_add" and c >= 2 and c % 2 == 0:
            blocks.append(ChunkAdd(c, spec[1]))
            c //= 2
        elif kind == "se":
            blocks.append(SE(c, spec[1], spec[2]))
    model = RandomNet(blocks, arch["head"], c, arch["classes"])
    randomize_norms_(model, arch["seed"])
    x = torch.randn((1, arch["cin"], 8, 8), generator=torch.Generator().manual_seed(arch["seed"]))
    return model.eval(), x


def random_gates_(search: hwnas.SearchModel, gates: tuple[float, float, int]) -> None:
    fraction, low, seed = gates
    set_gates_(search, fraction, seed, low=low)


def small_lut_network(constant_nodes: bool = False) -> tuple[nn.Module, torch.Tensor]:
    """Encoder -> random-connection LUT layer -> learnable-connection layer -> GroupSum,
    trained a few steps on 64 random 5-feature samples (so it is not all init); with
    ``constant_nodes`` five first-layer nodes are constant (for constant propagation)."""
    from hwnas.difflut import GroupSum, LUTLayer, ThermometerEncoder

    torch.manual_seed(8)
    data = torch.rand(64, 5) * 10
    model = nn.Sequential(
        ThermometerEncoder(4).fit(data),
        LUTLayer(20, 30, k=4, seed=1),
        LUTLayer(30, 20, k=3, connections="learnable", seed=2),
        GroupSum(4, tau=3.0),
    )
    if constant_nodes:
        with torch.no_grad():
            model[1].logits[:3].fill_(4.0)
            model[1].logits[3:5].fill_(-4.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    labels = (data[:, 0] > 5).long() + 2 * (data[:, 1] > 5).long()
    for _ in range(5):
        loss = F.cross_entropy(model.train()(data), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), data
