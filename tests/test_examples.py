"""The paper-reproduction example (examples/fashion_mnist.py, examples/fixed_classifier/):
its data reader, a smoke run of the whole script on a small subset of Fashion-MNIST, and
2-process DistributedDataParallel training checked against a single process."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

import fashion_mnist  # noqa: E402
from fixed_classifier.data import DEFAULT_DATA_DIR, DatasetMissingError, Split, load_fashion_mnist, read_idx  # noqa: E402
from fixed_classifier.ddp import DDPConfig, ddp_run  # noqa: E402
from fixed_classifier.train import RunConfig, build_model, train_model  # noqa: E402

HAVE_DATA = (DEFAULT_DATA_DIR / "t10k-labels-idx1-ubyte.gz").exists()


@pytest.fixture
def fashion_data():
    """Skips without the dataset, except on CI (CI set), where it must be installed."""
    if not HAVE_DATA:
        message = f"Fashion-MNIST not in {DEFAULT_DATA_DIR}: run `bash scripts/install_data.sh`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def test_help_describes_the_experiments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        fashion_mnist.parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--data-dir", "--experiments", "--seeds", "--device", "--alphas", "--small-features"):
        assert option in out


def test_every_option_has_help_with_its_default():
    parser = fashion_mnist.build_parser()
    formatter = parser.formatter_class(prog="fashion_mnist.py")
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{action.option_strings} has no help text"
        assert "%(default)" in formatter._get_help_string(action), f"{action.option_strings} hides its default"
    assert "(default: 5)" in parser.format_help()  # --epochs


def test_default_output_is_a_fresh_ignored_folder():
    # A trial run must never overwrite the committed results in examples/results/.
    first = fashion_mnist.resolve_out_dir(fashion_mnist.parse_args([]))
    assert first.parent == REPO / "examples" / "runs" and not first.exists()
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", str(first / "results.json")])
    assert ignored.returncode == 0, "examples/runs/ is not git-ignored"


def test_default_output_never_reuses_a_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "RUNS_DIR", tmp_path)
    first = fashion_mnist.resolve_out_dir(fashion_mnist.parse_args([]))
    first.mkdir()
    second = fashion_mnist.resolve_out_dir(fashion_mnist.parse_args([]))
    assert second != first and not second.exists()


def test_committed_folder_only_when_asked(capsys):
    args = fashion_mnist.parse_args(["--committed"])
    assert fashion_mnist.resolve_out_dir(args) == REPO / "examples" / "results"
    assert fashion_mnist.resolve_out_dir(fashion_mnist.parse_args(["--out-dir", "x"])) == Path("x")
    with pytest.raises(SystemExit):
        fashion_mnist.parse_args(["--committed", "--out-dir", "x"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_render_only_needs_a_folder(capsys):
    assert fashion_mnist.main(["--render-only"]) == 2
    assert "--render-only needs --out-dir DIR or --committed" in capsys.readouterr().err


def test_missing_dataset_says_how_to_install(tmp_path):
    with pytest.raises(DatasetMissingError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)
    assert fashion_mnist.main(["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")]) == 2


def test_read_idx_checks_the_header(tmp_path):
    labels = bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 0, 9])  # idx1: magic 2049, 3 items
    (tmp_path / "ok.gz").write_bytes(gzip.compress(labels))
    assert read_idx(tmp_path / "ok.gz", "labels").tolist() == [7, 0, 9]
    (tmp_path / "raw").write_bytes(labels)
    assert read_idx(tmp_path / "raw", "labels").tolist() == [7, 0, 9]
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "raw", "images")
    (tmp_path / "short").write_bytes(labels[:-1])
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "short", "labels")


def test_hadamard_collisions_past_the_caveat():
    # H_16[:10, :8]: rows 8 and 9 repeat rows 0 and 1; with C <= N no row repeats.
    assert fashion_mnist.hadamard_collisions(10, 8) == [
        {"row": 8, "equals_row": 0, "sign": 1},
        {"row": 9, "equals_row": 1, "sign": 1},
    ]
    assert fashion_mnist.hadamard_collisions(10, 128) == []


@pytest.mark.slow
def test_smoke_run_learns_and_writes_results(fashion_data, tmp_path):
    """The whole script, every experiment, on 3,000 training images for 3 epochs (seconds)."""
    cmd = [
        sys.executable, str(REPO / "examples" / "fashion_mnist.py"),
        "--train-subset", "3000", "--test-subset", "1000", "--epochs", "3", "--seeds", "0",
        "--alpha-model", "mlp", "--cgtn-model", "mlp", "--ddp-model", "mlp", "--alphas", "0.1", "10",
        "--probe-classes", "100", "--probe-features", "128", "--probe-steps", "3",
        "--threads", "1", "--no-progress", "--out-dir", str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("results.json", "results.md", "curves_cnn.png", "curves_mlp.png", "alpha.png",
                 "alpha_sweep.png", "c_gt_n.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["environment"]["torch"] == torch.__version__

    main = {(r["model"], r["head"]): r for r in results["main"]["summary"]}
    assert len(main) == 8
    for (model, head), row in main.items():
        # Chance is 10 %. The CNN's Hadamard head starts slowly on ReLU features (see
        # examples/README.md), hence the lower bar for the CNN after ~70 steps.
        assert row["acc_mean"] > (60 if model == "mlp" else 30), (model, head, row["acc_mean"])
        assert row["params_head"] == (10 * 128 + 10 if head == "linear" else 10 + 1)
    assert main["cnn", "linear"]["params_total"] - main["cnn", "hadamard"]["params_total"] == 10 * 128 - 1
    assert main["cnn", "etf"]["params_total"] == main["cnn", "hadamard"]["params_total"]
    for run in results["main"]["runs"]:
        curve = run["curve"]
        assert len(curve["train_loss"]) == len(curve["step"]) > 0
        assert curve["train_loss"][-1] < curve["train_loss"][0]
        assert (curve["alpha"][-1] is None) == (run["config"]["head"] == "linear")

    sweep = results["alpha"]["summary"]
    assert {(r["head"], r["alpha"]) for r in sweep} == {
        ("orthogonal", 0.1), ("orthogonal", 10.0), ("orthogonal", None),
        ("hadamard", 0.1), ("hadamard", 10.0), ("hadamard", -0.1), ("hadamard", -10.0), ("hadamard", None),
    }
    cgtn = {(r["features"], r["relu_features"], r["head"]) for r in results["cgtn"]["summary"]}
    assert cgtn == {(n, relu, h) for n, relu in ((8, True), (8, False), (16, True))
                    for h in ("linear", "orthogonal", "hadamard")} | {(16, True, "etf")}  # an ETF needs C <= N
    assert len(results["cgtn"]["hadamard_collisions"]) == 2

    ddp = results["ddp"]["results"]
    for r in ddp:
        assert r["grad_bytes_per_step"] == 4 * r["params_trainable"]
        assert r["replica_max_abs_diff"] == 0
    probe = {(r["config"]["run"]["head"], r["config"]["forward_sync_buffers"]): r for r in ddp
             if r["config"]["run"]["model"] == "probe"}
    saved = probe["linear", True]["grad_bytes_per_step"] - probe["hadamard", True]["grad_bytes_per_step"]
    assert saved == 4 * (100 * 128 - 1)  # C x N weights + C biases vs C biases + alpha
    assert probe["etf", True]["grad_bytes_per_step"] == probe["hadamard", True]["grad_bytes_per_step"]
    assert probe["orthogonal", True]["buffer_bytes_per_step"] == 4 * 100 * 128
    assert probe["orthogonal", False]["buffer_bytes_per_step"] == 0

    (tmp_path / "results.md").unlink()
    assert fashion_mnist.main(["--render-only", "--out-dir", str(tmp_path)]) == 0
    assert "## Data-parallel training" in (tmp_path / "results.md").read_text()


def _synthetic(n: int, seed: int) -> Split:
    """Images labelled by a fixed random linear teacher: learnable, needs no download."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=gen)
    teacher = torch.randn(28 * 28, 10, generator=torch.Generator().manual_seed(0))
    return Split(x, (x.flatten(1) @ teacher).argmax(1))


@pytest.mark.slow
def test_ddp_two_processes_match_one_process():
    """2-process DDP (gloo) with the same global batches ends where one process ends; the
    all-reduced gradient is 4 bytes per trainable parameter, C x N fewer with a fixed head."""
    train, test = _synthetic(512, 1), _synthetic(256, 2)
    cfgs = {h: RunConfig(model="mlp", head=h, epochs=2, batch_size=64, lr=0.05, log_every=4)
            for h in ("linear", "orthogonal", "hadamard")}
    jobs = [(DDPConfig(cfg), train, test) for cfg in cfgs.values()]
    jobs.append((DDPConfig(cfgs["orthogonal"], forward_sync_buffers=False, max_steps=3), train, None))
    results = ddp_run(jobs, world_size=2, threads=1)

    for r, (head, cfg) in zip(results, cfgs.items()):
        single = build_model(cfg, torch.device("cpu"))
        single_result = train_model(single, cfg, train, test, torch.device("cpu"), progress=False)
        assert r.steps == 16
        assert r.replica_max_abs_diff == 0
        for name, value in single.state_dict().items():
            scale = value.abs().max().clamp(min=1.0)
            assert (r.state[name] - value).abs().max() <= 1e-4 * scale, (head, name)
        assert abs(r.test_acc - single_result.test_acc) <= 0.01
        assert single_result.curve["train_loss"][-1] < single_result.curve["train_loss"][0]
        assert r.grad_bytes_per_step == 4 * r.params_trainable
        if r.loopback_bytes_per_step is not None:  # Linux: every byte both ranks sent
            assert r.loopback_bytes_per_step >= r.grad_bytes_per_step
    linear, orthogonal, hadamard, orthogonal_unsynced = results
    # learned: C x N weights + C biases; fixed: C biases + alpha
    assert linear.grad_bytes_per_step - hadamard.grad_bytes_per_step == 4 * (10 * 128 - 1)
    assert orthogonal.grad_bytes_per_step == hadamard.grad_bytes_per_step
    assert orthogonal.buffer_bytes_per_step == 4 * 10 * 128  # the fixed Q, re-sent every step
    assert hadamard.buffer_bytes_per_step == orthogonal_unsynced.buffer_bytes_per_step == 0


def test_rotated_quantization_example():
    # Issue 12's example: the rotation must cut int8's error when outliers dominate, and cost
    # nothing without them; the committed results must be the script's own files.
    import rotated_quantization

    rows = {(r["outlier"], r["codes"]): r for r in rotated_quantization.main(["--quick"])}
    assert rows[(100, "int8")]["rotated"] < rows[(100, "int8")]["plain"] / 2
    assert abs(rows[(1, "int8")]["rotated"] / rows[(1, "int8")]["plain"] - 1) < 0.1
    committed = json.loads((REPO / "examples/results/rotated_quantization.json").read_text())
    assert {r["codes"] for r in committed["rows"]} == {"int8", "float8_e4m3fn"}
    assert (REPO / "examples/results/rotated_quantization.png").stat().st_size > 0



def _fake_results(heads: list[str], commit: str) -> dict:
    config = {"epochs": 5, "batch_size": 128, "lr": 0.05, "momentum": 0.9, "features": 128, "seeds": [0, 1],
              "models": ["cnn", "mlp"], "train_size": 60000, "test_size": 10000}
    runs = [{"config": {"model": m, "head": h, "seed": s, "alpha": None, "features": 128, "relu_features": True},
             "test_acc": 0.9, "test_loss": 0.3, "curve": {"alpha": [None if h == "linear" else -1.0],
                                                         "train_loss": [0.3]},
             "params_total": 1, "params_head": 1, "wall_s": 1.0, "per_class_acc": [0.9] * 10}
            for m in ("cnn", "mlp") for s in (0, 1) for h in heads]
    env = {"git_commit": commit, "git_dirty": False, "date": "2026-11-24", "command": "python x.py"}
    return {"config": config, "environment": env, "main": {"runs": runs}}


def test_merge_main_adds_runs_in_table_order_and_names_their_commit():
    merged = fashion_mnist.merge_main(_fake_results(["linear", "hadamard"], "aaa"), _fake_results(["etf"], "bbb"))
    order = [(r["config"]["model"], r["config"]["seed"], r["config"]["head"]) for r in merged["main"]["runs"]]
    assert order == [(m, s, h) for m in ("cnn", "mlp") for s in (0, 1) for h in ("linear", "hadamard", "etf")]
    assert [(r["model"], r["head"]) for r in merged["main"]["summary"]] == [
        (m, h) for m in ("cnn", "mlp") for h in ("linear", "hadamard", "etf")]
    assert merged["added_runs"] == [{"experiment": "main", "heads": ["etf"], "git_commit": "bbb", "git_dirty": False,
                                     "date": "2026-11-24", "command": "python x.py"}]
    assert merged["environment"]["git_commit"] == "aaa"
    with pytest.raises(ValueError, match="runs already present"):
        fashion_mnist.merge_main(merged, _fake_results(["etf"], "ccc"))
    other = _fake_results(["etf"], "ccc")
    other["config"]["epochs"] = 6
    with pytest.raises(ValueError, match="epochs differs: 5 vs 6"):
        fashion_mnist.merge_main(_fake_results(["linear"], "aaa"), other)
