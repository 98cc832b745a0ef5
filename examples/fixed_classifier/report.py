"""Summaries, the Markdown tables and the PNG plots of a run of the example."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HEAD_LABEL = {"linear": "learned nn.Linear", "orthogonal": "OrthogonalClassifier", "hadamard": "HadamardClassifier",
              "etf": "SimplexETFClassifier"}
HEAD_COLOR = {"linear": "tab:blue", "orthogonal": "tab:orange", "hadamard": "tab:green", "etf": "tab:purple"}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(
    runs: list[dict], key: tuple[str, ...] = ("model", "head", "alpha", "features", "relu_features")
) -> list[dict]:
    """One row per configuration (runs differing only by seed), in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(tuple(run["config"][k] for k in key), []).append(run)
    rows = []
    for group in groups.values():
        cfg = group[0]["config"]
        accs = [100 * r["test_acc"] for r in group]
        acc, std = mean_std(accs)
        alphas = [r["curve"]["alpha"][-1] for r in group if r["curve"]["alpha"] and r["curve"]["alpha"][-1] is not None]
        rows.append({
            **{k: cfg[k] for k in key},
            "seeds": [r["config"]["seed"] for r in group],
            "acc_mean": acc, "acc_std": std, "acc_min": min(accs), "acc_max": max(accs),
            "test_loss_mean": statistics.fmean(r["test_loss"] for r in group),
            "train_loss_final": statistics.fmean(r["curve"]["train_loss"][-1] for r in group),
            "params_total": group[0]["params_total"], "params_head": group[0]["params_head"],
            "head_share": group[0]["params_head"] / group[0]["params_total"],
            "alpha_final": alphas or None,  # per seed: learned alphas may differ in sign
            "wall_s_mean": statistics.fmean(r["wall_s"] for r in group),
            "per_class_acc": [statistics.fmean(v) for v in zip(*(r["per_class_acc"] for r in group))],
        })
    return rows


def _gap(row: dict, rows: list[dict]) -> float | None:
    """Mean accuracy minus the learned linear head's (same model and feature layer)."""
    for ref in rows:
        if ref["head"] == "linear" and all(ref[k] == row[k] for k in ("model", "features", "relu_features")):
            return row["acc_mean"] - ref["acc_mean"]
    return None


def _fmt_alpha(alpha: list[float] | None) -> str:
    return "—" if not alpha else ", ".join(f"{a:.3g}" for a in alpha)


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} B"


def main_table(rows: list[dict]) -> str:
    lines = [
        "| model | head | test acc. % (mean ± std) | min – max | Δ vs learned | trainable params | head params (share) | final α per seed | wall time / run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gap = _gap(r, rows)
        lines.append(
            f"| {r['model']} | {HEAD_LABEL[r['head']]} | {r['acc_mean']:.2f} ± {r['acc_std']:.2f} "
            f"| {r['acc_min']:.2f} – {r['acc_max']:.2f} | {'—' if r['head'] == 'linear' or gap is None else f'{gap:+.2f}'} "
            f"| {r['params_total']:,} | {r['params_head']:,} ({100 * r['head_share']:.2g} %) "
            f"| {_fmt_alpha(r['alpha_final'])} | {r['wall_s_mean']:.1f} s |"
        )
    return "\n".join(lines)


def alpha_table(rows: list[dict]) -> str:
    lines = [
        "| head | α | test acc. % (mean ± std) | final train loss | final α per seed |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        alpha = "learned" if r["alpha"] is None else f"fixed {r['alpha']:g}"
        lines.append(
            f"| {HEAD_LABEL[r['head']]} | {alpha} | {r['acc_mean']:.2f} ± {r['acc_std']:.2f} "
            f"| {r['train_loss_final']:.3f} | {_fmt_alpha(r['alpha_final'])} |"
        )
    return "\n".join(lines)


def cgtn_table(rows: list[dict], classes: list[str], watch: list[int]) -> str:
    lines = [
        "| N | ReLU before head | head | test acc. % (mean ± std) | Δ vs learned | "
        + " | ".join(f"{classes[c]} ({c}) acc. %" for c in watch) + " |",
        "|---|---|---|---|---|" + "---|" * len(watch),
    ]
    for r in rows:
        gap = _gap(r, rows)
        per = " | ".join(f"{100 * r['per_class_acc'][c]:.1f}" for c in watch)
        lines.append(
            f"| {r['features']} | {'yes' if r['relu_features'] else 'no'} | {HEAD_LABEL[r['head']]} "
            f"| {r['acc_mean']:.2f} ± {r['acc_std']:.2f} "
            f"| {'—' if r['head'] == 'linear' or gap is None else f'{gap:+.2f}'} | {per} |"
        )
    return "\n".join(lines)


def ddp_table(results: list[dict]) -> str:
    lines = [
        "| model (C × N) | head | buffers synced | steps | trainable params | gradient all-reduced / step (measured) "
        "| buffers broadcast / step | loopback bytes / step (measured) | step time | test acc. % | replicas equal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        run = r["config"]["run"]
        acc = "—" if r["test_acc"] is None else f"{100 * r['test_acc']:.2f}"
        lines.append(
            f"| {run['model']} ({run['classes']} × {run['features']}) | {HEAD_LABEL[run['head']]} "
            f"| {'yes' if r['config']['forward_sync_buffers'] else 'no'} | {r['steps']} | {r['params_trainable']:,} "
            f"| {_fmt_bytes(r['grad_bytes_per_step'])} | {_fmt_bytes(r['buffer_bytes_per_step'])} "
            f"| {_fmt_bytes(r['loopback_bytes_per_step'])} | {r['step_ms']:.1f} ms | {acc} "
            f"| {'yes' if r['replica_max_abs_diff'] == 0 else r['replica_max_abs_diff']} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Plots: means over seeds as lines, min-max over seeds as bands.


def _band(ax, runs: list[dict], x: str, y: str, label: str, color: str | None = None, scale: float = 1.0) -> None:
    xs = np.asarray(runs[0]["curve"][x], dtype=float)
    ys = scale * np.asarray([r["curve"][y] for r in runs], dtype=float)
    ax.plot(xs, ys.mean(0), label=label, color=color, lw=1.4)
    if len(runs) > 1:
        ax.fill_between(xs, ys.min(0), ys.max(0), color=color, alpha=0.2, lw=0)


def _by(runs: list[dict], **match) -> list[dict]:
    return [r for r in runs if all(r["config"][k] == v for k, v in match.items())]


def plot_curves(runs: list[dict], model: str, path: Path) -> None:
    """Training loss / accuracy and test accuracy per epoch, one line per head."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    heads = list(dict.fromkeys(r["config"]["head"] for r in runs))
    for head in heads:
        group = _by(runs, model=model, head=head)
        if not group:
            continue
        _band(axes[0], group, "epoch", "train_loss", HEAD_LABEL[head], HEAD_COLOR[head])
        _band(axes[1], group, "epoch", "train_acc", HEAD_LABEL[head], HEAD_COLOR[head], scale=100)
        acc = 100 * np.asarray([r["epoch_test_acc"] for r in group])
        epochs = np.arange(1, acc.shape[1] + 1)
        axes[2].errorbar(epochs, acc.mean(0), yerr=acc.std(0), label=HEAD_LABEL[head], color=HEAD_COLOR[head],
                         marker="o", ms=3, capsize=2)
    axes[0].set(xlabel="epoch", ylabel="training loss", yscale="log", title="training loss (running, per 50 steps)")
    axes[1].set(xlabel="epoch", ylabel="training accuracy %", title="training accuracy (running, per 50 steps)")
    axes[2].set(xlabel="epoch", ylabel="test accuracy %", title="test accuracy (full test set)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[2].legend()
    n = len({r["config"]["seed"] for r in runs})
    fig.suptitle(f"Fashion-MNIST, {model.upper()}: learned vs fixed classifier (mean of {n} seeds, band: min–max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_alpha(runs: list[dict], path: Path) -> None:
    """The learned alpha over training (the paper's Fig. 1), one panel per fixed head and
    one line per seed: with non-negative features the Hadamard head's alpha may change sign."""
    heads = [h for h in ("orthogonal", "hadamard", "etf") if _by(runs, head=h)]
    fig, axes = plt.subplots(1, len(heads), figsize=(5.5 * len(heads), 3.8), squeeze=False)
    for ax, head in zip(axes[0], heads):
        for model, style in (("cnn", "-"), ("mlp", "--")):
            for i, r in enumerate(_by(runs, head=head, model=model)):
                ax.plot(r["curve"]["epoch"], r["curve"]["alpha"], style, color=HEAD_COLOR[head], lw=1.2,
                        alpha=0.5 + 0.5 * (i == 0), label=f"{model.upper()} (one line per seed)" if i == 0 else None)
        ax.axhline(0, color="gray", lw=0.6)
        ax.set(xlabel="epoch", ylabel="α (learned scale)", title=HEAD_LABEL[head])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Learned α = inverse softmax temperature over training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_alpha_sweep(runs: list[dict], path: Path) -> None:
    """Training loss for fixed alphas vs learned alpha (the paper's Fig. 3), and accuracy."""
    heads = list(dict.fromkeys(r["config"]["head"] for r in runs))
    fig, axes = plt.subplots(1, len(heads) + 1, figsize=(5 * (len(heads) + 1), 3.8))
    alphas = sorted({r["config"]["alpha"] for r in runs if r["config"]["alpha"] is not None},
                    key=lambda a: (a < 0, abs(a)))
    cmap = plt.get_cmap("viridis")
    for ax, head in zip(axes, heads):
        for i, alpha in enumerate([*alphas, None]):
            group = _by(runs, head=head, alpha=alpha)
            if group:
                color = "black" if alpha is None else cmap(i / max(len(alphas), 1))
                label = "learned α" if alpha is None else f"α = {alpha:g}"
                _band(ax, group, "epoch", "train_loss", label, color)
                if alpha is not None and alpha < 0:
                    ax.lines[-1].set_linestyle("--")
        ax.set(xlabel="epoch", ylabel="training loss", yscale="log", title=HEAD_LABEL[head])
        ax.grid(alpha=0.3)
        ax.legend()
    ax = axes[-1]
    for j, head in enumerate(heads):
        xs, ys, es = [], [], []
        for i, alpha in enumerate([*alphas, None]):
            group = _by(runs, head=head, alpha=alpha)
            if group:
                acc = [100 * r["test_acc"] for r in group]
                xs.append(i + 0.15 * (j - (len(heads) - 1) / 2))
                ys.append(statistics.fmean(acc))
                es.append(statistics.stdev(acc) if len(acc) > 1 else 0)
        ax.errorbar(xs, ys, yerr=es, fmt="o", capsize=3, color=HEAD_COLOR[head], label=HEAD_LABEL[head])
    ax.set_xticks(range(len(alphas) + 1), [f"{a:g}" for a in alphas] + ["learned"])
    ax.set(xlabel="α", ylabel="test accuracy %", title="test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.suptitle("Fixed α vs learned α")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_class(rows: list[dict], classes: list[str], title: str, path: Path) -> None:
    """Per-class test accuracy, one panel per feature layer (N, ReLU or not), bars per head."""
    groups = list(dict.fromkeys((r["features"], r["relu_features"]) for r in rows))
    fig, axes = plt.subplots(len(groups), 1, figsize=(11, 3.2 * len(groups)), squeeze=False)
    for ax, (n, relu) in zip(axes[:, 0], groups):
        group = [r for r in rows if (r["features"], r["relu_features"]) == (n, relu)]
        width = 0.8 / len(group)
        for i, r in enumerate(group):
            xs = np.arange(len(classes)) + (i - (len(group) - 1) / 2) * width
            ax.bar(xs, 100 * np.asarray(r["per_class_acc"]), width, color=HEAD_COLOR[r["head"]],
                   label=f"{HEAD_LABEL[r['head']]} ({r['acc_mean']:.1f} %)")
        ax.set_xticks(range(len(classes)), [f"{c} ({i})" for i, c in enumerate(classes)], fontsize=8)
        ax.set(ylabel="test accuracy %", ylim=(0, 105),
               title=f"N = {n} features, {'ReLU' if relu else 'no ReLU'} before the head")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(loc="lower left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def round_floats(obj, digits: int = 6):
    """Round every float in a JSON-able structure to ``digits`` significant digits."""
    if isinstance(obj, float):
        return obj if obj == 0 or not math.isfinite(obj) else float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_floats(v, digits) for v in obj]
    return obj
