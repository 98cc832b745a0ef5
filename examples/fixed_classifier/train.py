"""One training run: a model with one head, one seed; its curves, alpha and test accuracy."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import Split
from .models import count_parameters, make_model


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run. ``alpha=None``: alpha is learned (fixed heads only)."""

    model: str = "cnn"
    head: str = "hadamard"
    seed: int = 0
    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    features: int = 128
    classes: int = 10
    alpha: float | None = None
    relu_features: bool = True  # ReLU between the feature layer and the head
    log_every: int = 50

    @property
    def name(self) -> str:
        alpha = "" if self.alpha is None else f" alpha={self.alpha:g}"
        relu = "" if self.relu_features else " no-ReLU"
        return f"{self.model}/{self.head}{alpha} N={self.features}{relu} seed={self.seed}"


@dataclass
class RunResult:
    config: dict
    test_acc: float
    test_loss: float
    per_class_acc: list[float]
    params_total: int
    params_head: int
    wall_s: float
    # Every `log_every` steps: the step, the epoch (fractional) and the mean training
    # loss/accuracy over those steps; alpha at that step (fixed heads only).
    curve: dict[str, list[float]] = field(default_factory=dict)
    epoch_test_acc: list[float] = field(default_factory=list)

    @property
    def head_share(self) -> float:
        return self.params_head / self.params_total


def pick_device(name: str = "auto") -> torch.device:
    """"auto": CUDA when a GPU is visible, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(model: nn.Module, cfg: RunConfig, total_steps: int):
    """SGD with Nesterov momentum and a cosine decay to zero; no weight decay, and the same
    rule for every parameter (alpha and the bias included, as in the paper's code)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    return opt, sched


def batch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """The index batches of one epoch: a permutation drawn from (seed, epoch), so a run and
    its data-parallel twin see the same global batches."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return list(torch.randperm(n, generator=gen).split(batch_size))


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, classes: int, device: torch.device, chunk: int = 1000):
    """(accuracy, mean cross-entropy, per-class accuracy) over the whole split."""
    was_training = model.training
    model.eval()
    correct = torch.zeros(classes, dtype=torch.long)
    count = torch.zeros(classes, dtype=torch.long)
    loss = 0.0
    for start in range(0, len(split), chunk):
        x = split.images[start : start + chunk].to(device)
        y = split.labels[start : start + chunk].to(device)
        out = model(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        hit = (out.argmax(-1) == y).cpu()
        y = y.cpu()
        count += torch.bincount(y, minlength=classes)
        correct += torch.bincount(y[hit], minlength=classes)
    model.train(was_training)
    per_class = (correct.double() / count.clamp(min=1)).tolist()
    return correct.sum().item() / max(len(split), 1), loss / max(len(split), 1), per_class


def head_alpha(model: nn.Module) -> float | None:
    scale = getattr(model.head, "scale", None)
    return None if scale is None else float(scale.detach().reshape(()).cpu())


class CurveLogger:
    """Averages loss/accuracy over windows of ``every`` steps and samples alpha."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.curve: dict[str, list[float]] = {"step": [], "epoch": [], "train_loss": [], "train_acc": [], "alpha": []}
        self._loss = self._hits = self._seen = self._steps = 0

    def update(self, step: int, epoch: float, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor, model) -> None:
        # Accumulate on the device; one synchronising .item() per window, not per step.
        self._loss = self._loss + loss.detach()
        self._hits = self._hits + (out.detach().argmax(-1) == y).sum()
        self._seen += len(y)
        self._steps += 1
        if self._steps == self.every:
            self.flush(step, epoch, model)

    def flush(self, step: int, epoch: float, model: nn.Module) -> None:
        if self._steps == 0:
            return
        for key, value in (("step", step), ("epoch", epoch), ("train_loss", float(self._loss) / self._steps),
                           ("train_acc", float(self._hits) / self._seen), ("alpha", head_alpha(model))):
            self.curve[key].append(value)
        self._loss = self._hits = self._seen = self._steps = 0


def train_run(
    cfg: RunConfig, train: Split, test: Split, device: torch.device, progress: bool = True
) -> RunResult:
    """Build ``cfg.model`` with ``cfg.head`` from seed ``cfg.seed`` and train it."""
    return train_model(build_model(cfg, device), cfg, train, test, device, progress)


def build_model(cfg: RunConfig, device: torch.device) -> nn.Module:
    torch.manual_seed(cfg.seed)
    return make_model(
        cfg.model, cfg.head, cfg.features, cfg.classes, cfg.alpha, seed=cfg.seed, relu_features=cfg.relu_features
    ).to(device)


def train_model(
    model: nn.Module, cfg: RunConfig, train: Split, test: Split, device: torch.device, progress: bool = True
) -> RunResult:
    """Train ``model`` in place for ``cfg.epochs``, evaluating on ``test`` after every epoch.
    Wall time covers training and the per-epoch evaluations."""
    if cfg.epochs < 1:
        raise ValueError(f"train_model: epochs must be >= 1, got {cfg.epochs}")
    params_total, params_head = count_parameters(model)
    steps_per_epoch = -(-len(train) // cfg.batch_size)
    opt, sched = make_optimizer(model, cfg, cfg.epochs * steps_per_epoch)
    log = CurveLogger(cfg.log_every)
    images, labels = train.images.to(device), train.labels.to(device)
    epoch_acc = []
    step = 0
    start = time.perf_counter()
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc=cfg.name, disable=not progress, leave=False)
    model.train()
    for epoch in range(cfg.epochs):
        for idx in batch_order(len(train), cfg.batch_size, cfg.seed, epoch):
            idx = idx.to(device)
            x, y = images[idx], labels[idx]
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            log.update(step, step / steps_per_epoch, loss, out, y, model)
            bar.update()
            if step % cfg.log_every == 0:
                bar.set_postfix(loss=f"{log.curve['train_loss'][-1]:.3f}", acc=f"{log.curve['train_acc'][-1]:.3f}")
        log.flush(step, step / steps_per_epoch, model)
        acc, loss, per_class = evaluate(model, test, cfg.classes, device)
        epoch_acc.append(acc)
    wall = time.perf_counter() - start
    bar.close()
    return RunResult(
        config=asdict(cfg), test_acc=acc, test_loss=loss, per_class_acc=per_class,
        params_total=params_total, params_head=params_head, wall_s=wall,
        curve=log.curve, epoch_test_acc=epoch_acc,
    )
