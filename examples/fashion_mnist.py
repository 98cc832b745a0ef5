#!/usr/bin/env python
"""Learned vs fixed classifiers on Fashion-MNIST: the paper's Table 1 in miniature.

Hoffer, Hubara & Soudry, "Fix your classifier: the marginal value of training the last
weight layer" (ICLR 2018). The same small CNN and MLP are trained with four heads - a
learned ``nn.Linear``, ``OrthogonalClassifier``, ``HadamardClassifier`` and, from the later
neural-collapse work, ``SimplexETFClassifier`` - and compared on the full test set.
Experiments (``--experiments``, default all):

  main   4 heads x models x seeds: accuracy (mean, spread), curves, params, learned alpha
  alpha  alpha fixed at each of --alphas vs learned (the paper's Fig. 3; the paper's two
         fixed heads only)
  cgtn   more classes than features (C=10 > N=--small-features): past the paper's caveat,
         with the ReLU before the head and without it, and C <= N=--control-features
         (the ETF head only where it exists: N a power of two >= C)
  ddp    2-process DistributedDataParallel (gloo, CPU): accuracy, replicas in sync, and
         the gradient bytes all-reduced per step, measured, also for an ImageNet-sized head

Writes results.json, results.md and PNG plots to a new folder examples/runs/<UTC time>/
(git-ignored), or to --out-dir; --committed writes to examples/results/, the committed
run, which the defaults reproduce (see examples/README.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

import hadamard_kernels
from fixed_classifier import report
from fixed_classifier.data import CLASSES, DEFAULT_DATA_DIR, DatasetMissingError, Split, load_fashion_mnist
from fixed_classifier.models import HEADS, MODELS
from fixed_classifier.train import RunConfig, pick_device, train_run

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("main", "alpha", "cgtn", "ddp")
#: The committed run (written only with --committed) and the git-ignored folder of new runs.
COMMITTED_DIR = REPO / "examples" / "results"
RUNS_DIR = REPO / "examples" / "runs"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default after its help."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS),
                   help="experiments to run (see below)")
    p.add_argument("--models", nargs="+", choices=MODELS[:2], default=["cnn", "mlp"],
                   help="bodies of the main experiment")
    p.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS),
                   help="heads of the main experiment")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one run per seed")
    p.add_argument("--epochs", type=int, default=5, help="training epochs of every run")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size")
    p.add_argument("--lr", type=float, default=0.05, help="SGD (Nesterov) learning rate, cosine-decayed to 0")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--features", type=int, default=128, help="N: width of the feature layer before the head")
    p.add_argument("--alphas", nargs="+", type=float, default=[0.1, 1.0, 10.0], help="fixed alphas of the sweep")
    p.add_argument("--no-negative-alphas", action="store_true",
                   help="do not also sweep -alpha for the Hadamard head (its row 0 is all ones, so with "
                        "non-negative features the sign of alpha matters; the paper's code uses -scale)")
    p.add_argument("--alpha-model", choices=MODELS[:2], default="cnn", help="model of the alpha sweep")
    p.add_argument("--small-features", type=int, default=8, help="N of the C > N experiment (C = 10)")
    p.add_argument("--control-features", type=int, default=16, help="N of its C <= N control")
    p.add_argument("--no-cgtn-variants", action="store_true",
                   help="C > N experiment: skip the no-ReLU variant and the C <= N control")
    p.add_argument("--cgtn-model", choices=MODELS[:2], default="cnn", help="model of the C > N experiment")
    p.add_argument("--ddp-model", choices=MODELS[:2], default="cnn", help="model of the DDP experiment")
    p.add_argument("--ddp-world-size", type=int, default=2, help="DDP processes (gloo, CPU)")
    p.add_argument("--ddp-epochs", type=int, default=None, help="epochs of the DDP runs, None for --epochs")
    p.add_argument("--probe-classes", type=int, default=1000, help="C of the communication-only DDP probe")
    p.add_argument("--probe-features", type=int, default=2048, help="N of the communication-only DDP probe")
    p.add_argument("--probe-steps", type=int, default=20, help="steps of the communication-only DDP probe")
    p.add_argument("--train-subset", type=int, default=None, help="train on a random subset (smoke tests)")
    p.add_argument("--test-subset", type=int, default=None, help="test on a random subset (smoke tests)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help="folder of the four Fashion-MNIST idx(.gz) files (default: %(default)s, "
                        "installed by Debian's dataset-fashion-mnist)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out-dir", type=Path, default=None,
                     help=f"output folder, None for a new folder {_relative(RUNS_DIR)}/<UTC time>/ (git-ignored)")
    out.add_argument("--committed", action="store_true",
                     help=f"write to {_relative(COMMITTED_DIR)}/, the committed run, replacing its files")
    p.add_argument("--merge-main", type=Path, default=None, metavar="DIR",
                   help="with --render-only: add the main-experiment runs of DIR/results.json (a run of other "
                        "--heads with the same training settings) to the run being redrawn, noting their commit")
    p.add_argument("--device", default="auto", help="auto (CUDA if visible, else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads, None for torch's choice")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--render-only", action="store_true",
                   help="train nothing: rewrite results.md and the plots from results.json in --out-dir "
                        "(or with --committed)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def resolve_out_dir(args: argparse.Namespace) -> Path:
    """--out-dir, the committed folder with --committed, else a new folder under RUNS_DIR
    named by the UTC time (with a suffix if a run of the same second has it already)."""
    if args.out_dir is not None:
        return args.out_dir
    if args.committed:
        return COMMITTED_DIR
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    path, k = RUNS_DIR / stamp, 1
    while path.exists():
        path, k = RUNS_DIR / f"{stamp}-{k}", k + 1
    return path


# ---------------------------------------------------------------------------------------
# Provenance


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def environment(device: torch.device, args: argparse.Namespace) -> dict:
    status = _git("status", "--porcelain")
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {_cpu_name()}",
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "niceness": os.nice(0) if hasattr(os, "nice") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "hadamard_kernels": hadamard_kernels.__version__,
        "backend": hadamard_kernels.available_backends(device)[0],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "command": " ".join(["python", _relative(Path(sys.argv[0]))] + sys.argv[1:]),
        "data_dir": str(args.data_dir),
    }


# ---------------------------------------------------------------------------------------
# Experiments


def _run_all(configs: list[RunConfig], train: Split, test: Split, device, args) -> list[dict]:
    runs = []
    for cfg in configs:
        result = train_run(cfg, train, test, device, progress=not args.no_progress)
        alpha = result.curve["alpha"][-1]
        print(f"  {cfg.name:<42} test acc {100 * result.test_acc:6.2f} %  "
              f"{'' if alpha is None else f'alpha {alpha:7.3f}  '}{result.wall_s:6.1f} s", flush=True)
        runs.append({**asdict(result), "head_share": result.head_share})
    return runs


def _base(args: argparse.Namespace, **kw) -> RunConfig:
    return RunConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                     features=args.features, **kw)


def experiment_main(args, train, test, device) -> dict:
    # Seeds outermost, heads innermost: slow drifts of a shared machine hit every head alike.
    configs = [_base(args, model=m, head=h, seed=s) for m in args.models for s in args.seeds for h in args.heads]
    runs = _run_all(configs, train, test, device, args)
    return {"runs": runs, "summary": report.summarize(runs)}


def experiment_alpha(args, train, test, device, main: dict | None) -> dict:
    # The paper's two fixed heads. The ETF head's softmax is the Hadamard head's with alpha
    # times sqrt(C / ((C-1) N)) (nn.SimplexETFClassifier), so its sweep would repeat that one.
    fixed = [h for h in args.heads if h in ("orthogonal", "hadamard")]
    alphas = {h: list(args.alphas) for h in fixed}
    if "hadamard" in alphas and not args.no_negative_alphas:
        alphas["hadamard"] += [-a for a in args.alphas if -a not in args.alphas]
    configs = [_base(args, model=args.alpha_model, head=h, seed=s, alpha=a)
               for s in args.seeds for h in fixed for a in alphas[h]]
    runs = _run_all(configs, train, test, device, args)
    learned = [r for r in (main or {}).get("runs", [])
               if r["config"]["model"] == args.alpha_model and r["config"]["head"] in fixed]
    if not learned:  # main was not run: train the learned-alpha reference here
        learned = _run_all([_base(args, model=args.alpha_model, head=h, seed=s) for s in args.seeds for h in fixed],
                           train, test, device, args)
    runs = runs + learned
    summary = report.summarize(runs)
    summary.sort(key=lambda r: (fixed.index(r["head"]), r["alpha"] is None,
                                0 if r["alpha"] is None else (r["alpha"] < 0, abs(r["alpha"]))))
    return {"model": args.alpha_model, "runs": runs, "summary": summary}


def hadamard_collisions(classes: int, features: int) -> list[dict]:
    """Rows of H_M[:C, :N] equal (up to sign) to an earlier row: classes the head cannot
    tell apart except through their biases."""
    m = 1 << max(classes - 1, features - 1, 0).bit_length()
    h = hadamard_kernels.reference.hadamard_matrix(m)[:classes, :features]
    found = []
    for i in range(classes):
        for j in range(i):
            for sign in (1, -1):
                if torch.equal(h[i], sign * h[j]):
                    found.append({"row": i, "equals_row": j, "sign": sign})
    return found


def etf_fits(features: int, classes: int) -> bool:
    """Whether the simplex ETF head exists for these sizes (N a power of two, 2 <= C <= N)."""
    return features & (features - 1) == 0 and 2 <= classes <= features


def experiment_cgtn(args, train, test, device) -> dict:
    n = args.small_features
    layers = [(n, True)] + ([] if args.no_cgtn_variants else [(n, False), (args.control_features, True)])
    configs = [replace(_base(args, model=args.cgtn_model, head=h, seed=s), features=f, relu_features=relu)
               for s in args.seeds for f, relu in layers for h in args.heads
               if h != "etf" or etf_fits(f, len(CLASSES))]
    runs = _run_all(configs, train, test, device, args)
    return {"model": args.cgtn_model, "features": n, "classes": len(CLASSES), "layers": layers,
            "hadamard_collisions": hadamard_collisions(len(CLASSES), n),
            "runs": runs, "summary": report.summarize(runs)}


def experiment_ddp(args, train, test, main: dict | None) -> dict:
    from fixed_classifier.ddp import DDPConfig, ddp_run

    world = args.ddp_world_size
    epochs = args.ddp_epochs or args.epochs
    jobs = [(DDPConfig(replace(_base(args, model=args.ddp_model, head=h, seed=args.seeds[0]), epochs=epochs)),
             train, test) for h in args.heads]
    # Communication only: a few steps of the same model with the orthogonal head's buffer
    # left out of DDP's per-forward broadcast, and an ImageNet-sized head on random data.
    steps = args.probe_steps
    if "orthogonal" in args.heads:
        cfg = replace(_base(args, model=args.ddp_model, head="orthogonal", seed=args.seeds[0]), epochs=epochs)
        jobs.append((DDPConfig(cfg, forward_sync_buffers=False, max_steps=steps), train, None))
    c, n = args.probe_classes, args.probe_features
    gen = torch.Generator().manual_seed(0)
    probe = Split(torch.randn(steps * args.batch_size, 256, generator=gen),
                  torch.randint(0, c, (steps * args.batch_size,), generator=gen))
    for h in (h for h in args.heads if h != "etf" or etf_fits(n, c)):
        cfg = RunConfig(model="probe", head=h, features=n, classes=c, epochs=1, batch_size=args.batch_size,
                        lr=args.lr, momentum=args.momentum)
        jobs.append((DDPConfig(cfg, max_steps=steps), probe, None))
        if h == "orthogonal":
            jobs.append((DDPConfig(cfg, forward_sync_buffers=False, max_steps=steps), probe, None))
    threads = max(1, (args.threads or os.cpu_count() or 1) // world)
    start = time.perf_counter()
    results = ddp_run(jobs, world_size=world, threads=threads)
    print(f"  ddp: {len(jobs)} jobs on {world} processes in {time.perf_counter() - start:.1f} s", flush=True)
    single = {r["config"]["head"]: r["test_acc"] for r in (main or {}).get("runs", [])
              if r["config"]["model"] == args.ddp_model and r["config"]["seed"] == args.seeds[0]
              and r["config"]["epochs"] == epochs}
    rows = []
    for r in results:
        row = asdict(r)
        row.pop("state")
        row["single_process_test_acc"] = single.get(r.config["run"]["head"]) if r.test_acc is not None else None
        rows.append(row)
        print(f"  ddp {r.config['run']['model']}/{r.config['run']['head']} sync_buffers="
              f"{r.config['forward_sync_buffers']}: {r.grad_bytes_per_step:,.0f} B all-reduced/step, "
              f"{r.step_ms:.1f} ms/step" + ("" if r.test_acc is None else f", test acc {100 * r.test_acc:.2f} %"),
              flush=True)
    return {"world_size": world, "threads_per_process": threads, "results": rows}


# ---------------------------------------------------------------------------------------
# Output


# Settings that must agree for runs of two invocations to share one table.
_SHARED_SETTINGS = ("epochs", "batch_size", "lr", "momentum", "features", "seeds", "models", "train_size", "test_size")


def merge_main(results: dict, extra: dict) -> dict:
    """``results`` with the main-experiment runs of ``extra`` (another invocation, e.g. a head
    added later) added, in the table's order (model, seed, head), and an entry in
    ``results["added_runs"]`` naming their heads, commit, date and command. Refuses runs that
    ``results`` already has and training settings that differ."""
    for key in _SHARED_SETTINGS:
        if results["config"].get(key) != extra["config"].get(key):
            raise ValueError(f"merge_main: {key} differs: {results['config'].get(key)} vs {extra['config'].get(key)}")
    have = {(r["config"]["model"], r["config"]["head"], r["config"]["seed"]) for r in results["main"]["runs"]}
    new = extra["main"]["runs"]
    dup = sorted(have & {(r["config"]["model"], r["config"]["head"], r["config"]["seed"]) for r in new})
    if dup:
        raise ValueError(f"merge_main: runs already present: {dup}")
    runs = results["main"]["runs"] + new
    runs.sort(key=lambda r: (MODELS.index(r["config"]["model"]), r["config"]["seed"], HEADS.index(r["config"]["head"])))
    env = extra["environment"]
    heads = sorted({r["config"]["head"] for r in new}, key=HEADS.index)
    added = {"experiment": "main", "heads": heads, **{k: env[k] for k in ("git_commit", "git_dirty", "date", "command")}}
    return {**results, "main": {"runs": runs, "summary": report.summarize(runs)},
            "added_runs": [*results.get("added_runs", []), added]}


def write_outputs(results: dict, out_dir: Path) -> None:
    """results.json, then everything rendered from it."""
    (out_dir / "results.json").write_text(json.dumps(report.round_floats(results), indent=1) + "\n")
    render(results, out_dir)


def render(results: dict, out_dir: Path) -> None:
    """The plots and results.md, from ``results`` (as in results.json)."""
    write_plots(results, out_dir)
    (out_dir / "results.md").write_text(markdown(results, out_dir))


def markdown(results: dict, out_dir: Path) -> str:
    env, cfg = results["environment"], results["config"]
    lines = [
        "# Fixed vs learned classifiers on Fashion-MNIST",
        "",
        f"{env['device']}, torch threads: {env['torch_threads']}; torch {env['torch']}, hadamard_kernels "
        f"{env['hadamard_kernels']} ({env['backend']} backend); commit {env['git_commit']}"
        f"{' (uncommitted changes)' if env['git_dirty'] else ''}; {env['date']}.",
        f"Command: `{env['command']}`",
        *[f"Added later to the {a['experiment']} experiment: the {', '.join(report.HEAD_LABEL[h] for h in a['heads'])} "
          f"runs, commit {a['git_commit']}{' (uncommitted changes)' if a['git_dirty'] else ''}; {a['date']}; "
          f"command `{a['command']}`." for a in results.get("added_runs", [])],
        "",
        f"SGD (Nesterov, momentum {cfg['momentum']}), lr {cfg['lr']} cosine-decayed to 0, batch {cfg['batch_size']}, "
        f"{cfg['epochs']} epochs, no weight decay, no augmentation; train {cfg['train_size']:,} / test "
        f"{cfg['test_size']:,} images. Accuracy on the test set after the last epoch; mean ± sample std over "
        f"seeds {cfg['seeds']}.",
    ]
    if "main" in results:
        rows = results["main"]["summary"]
        lines += ["", f"## Learned vs fixed heads (N = {cfg['features']} features, C = 10 classes)", "",
                  report.main_table(rows), ""]
        lines += [f"![curves]({p.name})" for p in sorted(out_dir.glob("curves_*.png"))]
        if (out_dir / "alpha.png").exists():
            lines += ["", "![alpha](alpha.png)"]
    if "alpha" in results:
        lines += ["", f"## Fixed α vs learned α ({results['alpha']['model']})", "",
                  report.alpha_table(results["alpha"]["summary"]), "", "![alpha sweep](alpha_sweep.png)"]
    if "cgtn" in results:
        r = results["cgtn"]
        coll = ", ".join(f"row {c['row']} = {'' if c['sign'] > 0 else '-'}row {c['equals_row']}"
                         for c in r["hadamard_collisions"]) or "none"
        watch = sorted({c["row"] for c in r["hadamard_collisions"]} | {c["equals_row"] for c in r["hadamard_collisions"]})
        control = ", ".join(f"N = {f}{'' if relu else ' without the ReLU'}" for f, relu in r["layers"][1:])
        lines += ["", f"## More classes than features: C = {r['classes']} > N = {r['features']} ({r['model']})"
                      + (f"; variants: {control}" if control else ""), "",
                  f"Identical rows of the Hadamard head's H_M[:C, :N]: {coll}.", "",
                  report.cgtn_table(r["summary"], list(CLASSES), watch or list(range(4))), "",
                  "![per-class accuracy](c_gt_n.png)"]
    if "ddp" in results:
        d = results["ddp"]
        lines += ["", f"## Data-parallel training: {d['world_size']} processes, gloo, "
                      f"{d['threads_per_process']} thread(s) each", "",
                  report.ddp_table(d["results"]), ""]
        same = [(r["config"]["run"]["head"], r["test_acc"], r["single_process_test_acc"]) for r in d["results"]
                if r["single_process_test_acc"] is not None]
        if same:
            lines.append("Single-process run with the same seed and global batches (main table): " + ", ".join(
                f"{report.HEAD_LABEL[h]} {100 * s:.2f} % (DDP {100 * a:.2f} %)" for h, a, s in same) + ".")
    return "\n".join(lines) + "\n"


def write_plots(results: dict, out_dir: Path) -> None:
    if "main" in results:
        runs = results["main"]["runs"]
        for model in dict.fromkeys(r["config"]["model"] for r in runs):
            report.plot_curves(runs, model, out_dir / f"curves_{model}.png")
        if any(r["curve"]["alpha"] and r["curve"]["alpha"][0] is not None for r in runs):
            report.plot_alpha([r for r in runs if r["config"]["head"] != "linear"], out_dir / "alpha.png")
    if "alpha" in results:
        report.plot_alpha_sweep(results["alpha"]["runs"], out_dir / "alpha_sweep.png")
    if "cgtn" in results:
        r = results["cgtn"]
        report.plot_per_class(r["summary"], list(CLASSES),
                              f"Per-class test accuracy with C = {r['classes']} > N = {r['features']} ({r['model']})",
                              out_dir / "c_gt_n.png")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        if args.out_dir is None and not args.committed:
            print("error: --render-only needs --out-dir DIR or --committed (the run to redraw)", file=sys.stderr)
            return 2
        out_dir = resolve_out_dir(args)
        results = json.loads((out_dir / "results.json").read_text())
        if args.merge_main is not None:
            results = merge_main(results, json.loads((args.merge_main / "results.json").read_text()))
            write_outputs(results, out_dir)
        else:
            render(results, out_dir)
        return 0
    args.out_dir = resolve_out_dir(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    try:
        train, test = load_fashion_mnist(args.data_dir)
    except DatasetMissingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    train, test = train.subset(args.train_subset, seed=1), test.subset(args.test_subset, seed=2)
    results: dict = {
        "environment": environment(device, args),
        "config": {**{k: v for k, v in vars(args).items() if k not in ("data_dir", "out_dir", "committed")},
                   "train_size": len(train), "test_size": len(test)},
    }
    print(f"{results['environment']['device']}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"train {len(train):,} / test {len(test):,} images", flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for name in args.experiments:
        print(f"[{name}]", flush=True)
        if name == "main":
            results["main"] = experiment_main(args, train, test, device)
        elif name == "alpha":
            results["alpha"] = experiment_alpha(args, train, test, device, results.get("main"))
        elif name == "cgtn":
            results["cgtn"] = experiment_cgtn(args, train, test, device)
        elif name == "ddp":
            results["ddp"] = experiment_ddp(args, train, test, results.get("main"))
        results["total_wall_s"] = time.perf_counter() - start
        write_outputs(results, args.out_dir)
    print(f"done in {time.perf_counter() - start:.0f} s: {_relative(args.out_dir)}/results.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
