"""The two small networks of the example and the four heads they are trained with.

Every network ends in a feature layer of ``features`` units followed by a head, the layer
the paper fixes: ``nn.Linear(features, classes)`` (learned, C x N + C parameters) or one of
the fixed heads of :mod:`hadamard_kernels.nn` (C + 1 parameters: the bias and alpha).
"""

from __future__ import annotations

from torch import nn

from hadamard_kernels.nn import HadamardClassifier, OrthogonalClassifier, SimplexETFClassifier

HEADS = ("linear", "orthogonal", "hadamard", "etf")
MODELS = ("cnn", "mlp", "probe")


def make_head(kind: str, features: int, classes: int, alpha: float | None = None, seed: int = 0) -> nn.Module:
    """The classifier layer: ``alpha=None`` learns alpha from the head's default initial value
    (the paper's -1/sqrt(C) for Hadamard and 10 for orthogonal; -10 for the simplex ETF); a
    number fixes alpha (the Fig. 3 sweep).
    ``seed`` draws the orthogonal head's fixed matrix."""
    if kind == "linear":
        if alpha is not None:
            raise ValueError("make_head: the learned linear head has no alpha to fix")
        return nn.Linear(features, classes)
    cls = {"orthogonal": OrthogonalClassifier, "hadamard": HadamardClassifier, "etf": SimplexETFClassifier}.get(kind)
    if cls is None:
        raise ValueError(f"make_head: head must be one of {HEADS}, got {kind!r}")
    kwargs = {"seed": seed} if kind == "orthogonal" else {}
    if alpha is None:
        return cls(features, classes, **kwargs)
    return cls(features, classes, init_scale=alpha, learn_scale=False, **kwargs)


class SmallCNN(nn.Module):
    """conv3x3(16) - pool - conv3x3(32) - pool - fc(features) - ReLU - head.

    ``relu_features=False`` drops the last ReLU: the head then sees features of any sign
    instead of non-negative ones (which matters to fixed heads; see examples/README.md)."""

    def __init__(self, head: nn.Module, features: int, relu_features: bool = True, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, features), *([nn.ReLU()] if relu_features else []),
        )
        self.head = head

    def forward(self, x):
        return self.head(self.body(x))


class MLP(nn.Module):
    """784 - 256 - ReLU - features - ReLU - head (last ReLU optional, as in SmallCNN)."""

    def __init__(self, head: nn.Module, features: int, relu_features: bool = True, hidden: int = 256) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(28 * 28, hidden), nn.ReLU(),
            nn.Linear(hidden, features), *([nn.ReLU()] if relu_features else []),
        )
        self.head = head

    def forward(self, x):
        return self.head(self.body(x))


class Probe(nn.Module):
    """A minimal body for measuring communication at scale: ``inputs`` - features - ReLU - head
    (random inputs; only the sizes matter)."""

    def __init__(self, head: nn.Module, features: int, relu_features: bool = True, inputs: int = 256) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(inputs, features), *([nn.ReLU()] if relu_features else []))
        self.head = head

    def forward(self, x):
        return self.head(self.body(x))


def make_model(
    model: str, head: str, features: int = 128, classes: int = 10, alpha: float | None = None, seed: int = 0,
    relu_features: bool = True,
) -> nn.Module:
    net = {"cnn": SmallCNN, "mlp": MLP, "probe": Probe}.get(model)
    if net is None:
        raise ValueError(f"make_model: model must be one of {MODELS}, got {model!r}")
    return net(make_head(head, features, classes, alpha, seed), features, relu_features)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters of the whole model, those of its head)."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = sum(p.numel() for p in model.head.parameters() if p.requires_grad)
    return total, head
