"""Python side of the CPU-run CUDA harness: build the runner, run a launcher, read results.

The runner (runner.cpp + sim.cpp + launchers.cpp, see README.md) is the unchanged kernel
source of ``csrc/cuda/*.cuh`` compiled by the host C++ compiler against ``include/hk_sim.h``,
with AddressSanitizer and UBSan. :func:`build` compiles it once per source hash into
``build/cuda_sim/``; :func:`run` writes a request (inputs as raw storage bytes, strides,
schedules), runs it and returns the outputs and the per-launch memory counters.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSRC = Path(os.environ.get("HK_SIM_CSRC", ROOT / "csrc"))  # another copy of the kernels: HK_SIM_CSRC
BUILD = ROOT / "build" / "cuda_sim"

#: Storage types of the kernels: torch dtype -> (runner name, kernel type, accumulator dtype).
DTYPES = {
    torch.float32: ("float32", "float", torch.float32),
    torch.float64: ("float64", "double", torch.float64),
    torch.float16: ("float16", "__half", torch.float32),
    torch.bfloat16: ("bfloat16", "__nv_bfloat16", torch.float32),
}

CXX = os.environ.get("CXX", "g++")
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
COMMON = ["-std=c++20", "-O1", "-g", "-Wall", "-Wextra", "-Werror", *SANITIZE]
# Kernel code: AddressSanitizer's checks as calls (wrapped by sim.cpp to see every access),
# no auto-vectorisation (the counters must see the accesses the source makes).
KERNEL = [
    "--param", "asan-instrumentation-with-call-threshold=0",
    "-fno-tree-vectorize", "-fno-tree-slp-vectorize",
    "-Wno-unknown-pragmas", "-Wno-class-memaccess",
]  # fmt: skip
WRAPPED = [f"__asan_{k}{n}" for k in ("load", "store") for n in ("1", "2", "4", "8", "16", "N")]
ENV = {"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}


def _digest(cuda_dir: Path, tags: tuple[str, ...]) -> str:
    h = hashlib.sha256(" ".join([CXX, *COMMON, *KERNEL, *tags]).encode())
    for d in (HERE, HERE / "include", cuda_dir, cuda_dir.parent):
        for p in sorted(d.glob("*")):
            if p.suffix in {".h", ".cuh", ".cpp"}:
                h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def build(cuda_dir: Path = CSRC / "cuda", dtypes: tuple[torch.dtype, ...] = tuple(DTYPES)) -> Path:
    """Compile the runner for the kernels in ``cuda_dir`` (whose parent holds hadamard.h);
    returns its path. Cached by the hash of every source; the launchers of ``dtypes`` only
    (the others fail at run time). Two compiler jobs at a time."""
    tags = tuple(DTYPES[d][0] for d in dtypes)
    out = BUILD / _digest(cuda_dir, tags)
    exe = out / "runner"
    if exe.exists():
        return exe
    tmp = Path(tempfile.mkdtemp(prefix="build-", dir=BUILD.mkdir(parents=True, exist_ok=True) or BUILD))
    inc = ["-I", str(HERE), "-I", str(HERE / "include"), "-I", str(cuda_dir), "-I", str(cuda_dir.parent)]
    # The runtime itself: optimised and without AddressSanitizer's checks (it is the checker;
    # its fiber switches tell AddressSanitizer about the stacks).
    jobs = [[CXX, *COMMON, "-O2", "-fno-sanitize=address", "-I", str(HERE), "-c", str(HERE / "sim.cpp"),
             "-o", str(tmp / "sim.o")],
            [CXX, *COMMON, "-I", str(HERE), "-c", str(HERE / "runner.cpp"), "-o", str(tmp / "runner.o")]]  # fmt: skip
    for d in dtypes:
        tag, ctype, _ = DTYPES[d]
        jobs.append([CXX, *COMMON, *KERNEL, *inc, f"-DHK_SIM_TYPE={ctype}", f"-DHK_SIM_TAG={tag}",
                     "-c", str(HERE / "launchers.cpp"), "-o", str(tmp / f"launchers_{tag}.o")])  # fmt: skip
    stubs = ""
    for tag in {v[0] for v in DTYPES.values()} - set(tags):  # launchers not built: fail if used
        stubs += (
            f"#include <cstdio>\n#include <cstdlib>\n#include \"request.h\"\nnamespace hk_sim {{\n"
            f"size_t workspace_bytes_{tag}(const Request&) {{ std::fprintf(stderr, \"runner: {tag} not built\\n\");"
            f" std::exit(2); }}\ncudaError_t run_{tag}(const Request&) {{ std::exit(2); }}\n}}\n"
        )
    if stubs:
        (tmp / "stubs.cpp").write_text(stubs)
        jobs.append([CXX, *COMMON, "-I", str(HERE), "-c", str(tmp / "stubs.cpp"), "-o", str(tmp / "stubs.o")])

    def compile_one(cmd: list[str]) -> None:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"cuda_sim build failed:\n{' '.join(cmd)}\n{r.stderr[-6000:]}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(compile_one, jobs))
    wrap = "-Wl," + ",".join(f"--wrap={s}" for s in WRAPPED)
    compile_one([CXX, *SANITIZE, "-rdynamic", wrap, *map(str, sorted(tmp.glob("*.o"))), "-o", str(tmp / "runner")])
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(out)
    except OSError:  # built concurrently by another process: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return exe


def build_mutants(mutations: dict[int, tuple[str, str, str]], workdir: Path) -> Path:
    """The runner (float32 only) built from a copy of the kernels (in workdir) with every
    mutation (file in csrc/cuda, exact text, replacement consulting hk_sim::mutant(id)) applied,
    each switched on at run time by HK_SIM_MUTANT=id. The same mutations give the same
    sources, hence the cached build."""
    src = workdir / "csrc"
    shutil.copytree(CSRC, src, ignore=shutil.ignore_patterns("*.cpp", "*.cu", "check", "cpu"))
    for name, old, new in mutations.values():
        text = (src / "cuda" / name).read_text()
        if text.count(old) < 1:
            raise ValueError(f"mutation target not found in {name}: {old!r}")
        (src / "cuda" / name).write_text(text.replace(old, new, 1))
    return build(src / "cuda", dtypes=(torch.float32,))


@dataclasses.dataclass(frozen=True)
class View:
    """A strided (rows, cols) view of ``storage`` (1-D, contiguous) starting at ``offset``."""

    storage: torch.Tensor
    offset: int
    row_stride: int
    col_stride: int

    @staticmethod
    def of(t: torch.Tensor) -> "View":
        """The view ``t`` (2-D) is: its whole storage, offset and strides."""
        assert t.dim() == 2
        base = t.untyped_storage()
        storage = torch.empty(0, dtype=t.dtype).set_(base).contiguous()
        return View(storage, t.storage_offset(), t.stride(0), t.stride(1))


class SimFailure(RuntimeError):
    """The runner rejected a run: a check of the harness, AddressSanitizer or UBSan."""

    def __init__(self, returncode: int, stderr: str):
        super().__init__(f"runner exited with {returncode}:\n{stderr[-4000:]}")
        self.returncode = returncode
        self.stderr = stderr


@dataclasses.dataclass
class Result:
    y: torch.Tensor  # transform: (rows, out); forward: (rows, C); backward: grad_x (rows, N)
    contrib: torch.Tensor | None  # backward: (rows,) in the accumulator type
    launches: list[dict]  # per kernel launch: name, grid, block, counters (see sim.h)


def _read(path: Path, dtype: torch.dtype) -> torch.Tensor:
    data = path.read_bytes() if path.exists() else b""
    return torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.empty(0, dtype=dtype)


def schedules(seeds: tuple[int, ...], ahead: bool = True, max_grid: int = 0) -> list[str]:
    """Schedule tokens: a random order per seed, plus one warp-ahead schedule per seed."""
    cap = f":{max_grid}" if max_grid else ""
    out = [f"random:{s}{cap}" for s in seeds]
    if ahead:
        out += [f"ahead:{s}{cap}" for s in seeds]
    return out


def run(
    op: str,
    *,
    x: View,
    rows: int,
    n_in: int,
    n_out: int,
    schedules: list[str],
    g: View | None = None,
    bias: torch.Tensor | None = None,
    alpha: float = 1.0,
    scale: float = 1.0,
    normalize: bool = True,
    eps: float = 1e-12,
    etf: bool = False,
    runner: Path | None = None,
    env: dict[str, str] | None = None,
) -> Result:
    """Run launcher ``op`` ("transform", "forward", "backward") on the harness.

    transform: out = scale * H_M[:n_out, :n_in] @ x[r] (n_in = in_features, n_out = out);
    forward / backward: the classifier with N = n_in, C = n_out, g = grad_y (rows, C);
    etf: its simplex ETF head."""
    dtype = x.storage.dtype
    name, _, acc = DTYPES[dtype]
    runner = runner or build()
    with tempfile.TemporaryDirectory(prefix="cuda_sim-") as tmp:
        d = Path(tmp)
        kv = {"op": op, "dtype": name, "rows": rows, "in": n_in, "out": n_out, "scale": repr(float(scale)),
              "normalize": int(normalize), "eps": repr(float(eps)), "etf": int(etf),
              "schedules": " ".join(schedules)}  # fmt: skip

        def put(key: str, t: torch.Tensor, offset: int = 0) -> None:
            _put(d, kv, key, t, offset)

        put("x", x.storage, x.offset)
        kv["x_row_stride"], kv["x_col_stride"] = x.row_stride, x.col_stride
        if g is not None:
            put("g", g.storage, g.offset)
            kv["g_row_stride"], kv["g_col_stride"] = g.row_stride, g.col_stride
        if bias is not None:
            put("bias", bias)
        if op != "transform":
            put("alpha", torch.tensor([alpha], dtype=acc))
        return _execute(d, kv, runner, env, dtype, rows, n_in if op == "backward" else n_out, acc if op == "backward" else None)


def _execute(d: Path, kv: dict, runner: Path, env: dict[str, str] | None, dtype: torch.dtype, rows: int, cols: int,
             contrib_dtype: torch.dtype | None) -> Result:  # fmt: skip
    (d / "request.txt").write_text("".join(f"{k} {v}\n" for k, v in kv.items()))
    proc = subprocess.run([str(runner), str(d)], capture_output=True, text=True, env={**os.environ, **ENV, **(env or {})})
    if proc.returncode != 0:
        raise SimFailure(proc.returncode, proc.stderr)
    y = _read(d / "y.bin", dtype).reshape(rows, cols)
    contrib = _read(d / "contrib.bin", contrib_dtype) if contrib_dtype is not None else None
    return Result(y, contrib, json.loads((d / "counters.json").read_text()))


def _put(d: Path, kv: dict, key: str, t: torch.Tensor, offset: int = 0) -> None:
    (d / f"{key}.bin").write_bytes(t.contiguous().view(torch.uint8).numpy().tobytes())
    kv[f"{key}_file"] = f"{key}.bin"
    kv[f"{key}_offset"] = offset


def run_kn(
    *,
    x: View,
    rows: int,
    n: int,
    pow2: int,
    schedules: list[str],
    hk: torch.Tensor | None = None,
    pre: torch.Tensor | None = None,
    post: torch.Tensor | None = None,
    scale: float = 1.0,
    inplace: bool = False,
    runner: Path | None = None,
    env: dict[str, str] | None = None,
) -> Result:
    """Run launch_kn (csrc/cuda/orders.cuh) on the harness: y[r] = scale * post . [(H_K kron
    H_pow2) @ pad(pre . x[r], K * pow2)][:n] for the (rows, n) view x (unit column stride).
    hk: int8 (K, K) or None (K = 1); pre, post: (n,) in the accumulator dtype or None (post
    with the scale already multiplied in, as the torch glue passes it); inplace: the output is
    x's own storage (x contiguous), result.y its rows. Result.launches: the mask kernel (K > 1)
    and the transform."""
    dtype = x.storage.dtype
    name, _, acc = DTYPES[dtype]
    runner = runner or build()
    K = 1 if hk is None else hk.shape[0]
    with tempfile.TemporaryDirectory(prefix="cuda_sim-") as tmp:
        d = Path(tmp)
        kv = {"op": "kn", "dtype": name, "rows": rows, "in": n, "out": n, "scale": repr(float(scale)),
              "normalize": 0, "eps": "1e-12", "schedules": " ".join(schedules), "K": K, "pow2": pow2,
              "inplace": int(inplace), "x_row_stride": x.row_stride, "x_col_stride": x.col_stride}  # fmt: skip
        _put(d, kv, "x", x.storage, x.offset)
        if hk is not None:
            _put(d, kv, "hk", hk.to(torch.int8))
        for key, t in (("pre", pre), ("post", post)):
            if t is not None:
                _put(d, kv, key, t.to(acc))
        result = _execute(d, kv, runner, env, dtype, rows, n, None)
    return result


#: The code formats of launch_kn_quantize (csrc/cuda/quantize.cuh: QuantCode).
QUANT_CODES = {torch.int8: 0, torch.float8_e4m3fn: 1, torch.float8_e5m2: 2}


@dataclasses.dataclass
class QuantResult:
    q: torch.Tensor  # (rows, n) codes, as the code dtype
    scales: torch.Tensor  # (rows, n // group) float32
    launches: list[dict]  # the mask kernel (K > 1) and the quantising kernel


def run_quantize(
    *,
    x: View,
    rows: int,
    n: int,
    pow2: int,
    code: torch.dtype,
    group: int,
    schedules: list[str],
    hk: torch.Tensor | None = None,
    pre: torch.Tensor | None = None,
    scale: float = 1.0,
    runner: Path | None = None,
    env: dict[str, str] | None = None,
) -> QuantResult:
    """Run launch_kn_quantize (csrc/cuda/quantize.cuh) on the harness: the codes and scales of
    y[r] = scale * [(H_K kron H_pow2) @ pad(pre . x[r], K * pow2)][:n] per group of ``group``
    (a divisor of n) for the (rows, n) view x (unit column stride); hk, pre as run_kn."""
    dtype = x.storage.dtype
    name, _, acc = DTYPES[dtype]
    runner = runner or build()
    K = 1 if hk is None else hk.shape[0]
    with tempfile.TemporaryDirectory(prefix="cuda_sim-") as tmp:
        d = Path(tmp)
        kv = {"op": "quantize", "dtype": name, "rows": rows, "in": n, "out": n, "scale": repr(float(scale)),
              "normalize": 0, "eps": "1e-12", "schedules": " ".join(schedules), "K": K, "pow2": pow2,
              "code": QUANT_CODES[code], "group": group, "x_row_stride": x.row_stride,
              "x_col_stride": x.col_stride}  # fmt: skip
        _put(d, kv, "x", x.storage, x.offset)
        if hk is not None:
            _put(d, kv, "hk", hk.to(torch.int8))
        if pre is not None:
            _put(d, kv, "pre", pre.to(acc))
        (d / "request.txt").write_text("".join(f"{k} {v}\n" for k, v in kv.items()))
        proc = subprocess.run([str(runner), str(d)], capture_output=True, text=True,
                              env={**os.environ, **ENV, **(env or {})})  # fmt: skip
        if proc.returncode != 0:
            raise SimFailure(proc.returncode, proc.stderr)
        q = _read(d / "y.bin", torch.uint8).view(code).reshape(rows, n)
        scales = _read(d / "scales.bin", torch.float32).reshape(rows, n // group)
        return QuantResult(q, scales, json.loads((d / "counters.json").read_text()))
