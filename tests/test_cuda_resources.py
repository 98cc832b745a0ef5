"""scripts/cuda_resources.py: parser, occupancy model and gate on hand-computed examples (no nvcc)."""

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "cuda_resources.py"
_SPEC = importlib.util.spec_from_file_location("cuda_resources", _PATH)
cr = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = cr  # dataclasses look their module up there
_SPEC.loader.exec_module(cr)

ROW_BF16_F32 = "_ZN16hadamard_kernels4cuda20row_transform_kernelI13__nv_bfloat16fLi11ELb1EEEvNS0_7RowArgsIT_T0_EE"
ROW_BF16 = "_ZN16hadamard_kernels4cuda20row_transform_kernelI13__nv_bfloat16S2_Li3ELb0EEEvNS0_7RowArgsIT_T0_EE"
COLUMN_HALF = ("_ZN16hadamard_kernels4cuda23column_transform_kernelI6__halfS2_Li6ELNS0_14ColumnEpilogueE1EEEv"
               "NS0_10ColumnArgsIT_T0_EE")
FORWARD_F32 = "_ZN16hadamard_kernels4cuda25classifier_forward_kernelIfLi15ELb0ELb0EEEvNS0_21ClassifierForwardArgsIT_EE"
ROWS_F64 = "_ZN16hadamard_kernels4cuda31classifier_backward_rows_kernelIdEEvNS0_15BackwardRowArgsIT_EE"
QUANTIZE_BF16 = "_ZN16hadamard_kernels4cuda18kn_quantize_kernelI13__nv_bfloat16Li13EEEvNS0_6KnArgsIT_EENS0_9QuantArgsE"

LOG = f"""ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '{ROWS_F64}' for 'sm_90'
ptxas info    : Function properties for {ROWS_F64}
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 44 registers, used 1 barriers, 256 bytes smem
ptxas info    : Compile time = 90.042 ms
ptxas info    : Compiling entry function '{FORWARD_F32}' for 'sm_90'
ptxas info    : Function properties for {FORWARD_F32}
    8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers
ptxas info    : Compile time = 13.921 ms
"""

# float32 L = 15 tile {15, 512, 131200} as the PTX writes it: little-endian bytes, trailing zeros dropped.
PTX = f"""
.global .align 4 .b8 _ZN16hadamard_kernels4cuda12hk_tiles_f32E[12] = {{15, 0, 0, 0, 0, 2, 0, 0, 128, 0, 2}};

.visible .entry {ROWS_F64}(
\t.param .align 8 .b8 {ROWS_F64}_param_0[88]
)
.maxntid 512, 1, 1
{{
}}
.visible .entry {FORWARD_F32}(
\t.param .align 8 .b8 {FORWARD_F32}_param_0[96]
)
.maxntid 512, 1, 1
.minnctapersm 1
{{
}}
"""


def test_describe_reads_template_arguments():
    k = cr.describe(ROW_BF16_F32)
    assert (k.kernel, k.dtype, k.out, k.log2, k.strided) == ("row_transform", "bfloat16", "float32", 11, True)
    k = cr.describe(ROW_BF16)  # S2_: the substitution for the first argument's type
    assert (k.dtype, k.out, k.log2, k.path) == ("bfloat16", "bfloat16", 3, "contiguous")
    k = cr.describe(ROW_BF16_F32.replace("20row_transform_kernel", "27row_transform_centre_kernel"))
    assert k.label == "row_transform_centre<bfloat16, out=float32, L=11, strided>"
    k = cr.describe(COLUMN_HALF)
    assert (k.kernel, k.dtype, k.out, k.log2, k.epilogue) == ("column_transform", "float16", "float16", 6, "classifier")
    assert k.label == "column_transform<float16, L2=6, classifier>"
    k = cr.describe(FORWARD_F32)
    assert k.label == "classifier_forward<float32, L=15, contiguous>" and not k.etf
    k = cr.describe(FORWARD_F32.replace("Lb0ELb0E", "Lb1ELb1E"))  # kStrided, kEtf
    assert (k.strided, k.etf, k.label) == (True, True, "classifier_forward<float32, L=15, strided, etf>")
    assert cr.describe(ROWS_F64).label == "classifier_backward_rows<float64>"
    k = cr.describe(QUANTIZE_BF16)  # the rotate-and-quantise kernel: <T, L>, as kn_transform
    assert (k.kernel, k.dtype, k.log2, k.label) == ("kn_quantize", "bfloat16", 13, "kn_quantize<bfloat16, L=13>")
    rows_etf = ROWS_F64.replace("31classifier_backward_rows_kernel", "35classifier_backward_rows_etf_kernel")
    assert cr.describe(rows_etf).label == "classifier_backward_rows_etf<float64>"
    with pytest.raises(ValueError, match="not a hadamard_kernels"):
        cr.describe("_Z3fooPf")


def test_parse_log_and_ptx():
    usage = cr.parse_ptxas_log(LOG)
    assert usage[ROWS_F64] == cr.Usage(44, 0, 0, 0, 256)
    assert usage[FORWARD_F32] == cr.Usage(128, 8, 12, 16, 0)
    threads, tiles = cr.parse_ptx(PTX)
    assert threads == {ROWS_F64: 512, FORWARD_F32: 512}
    assert tiles == {("row", "float32", 15): (512, 131200)}


@pytest.mark.parametrize(
    "threads, registers, smem, blocks, fraction, limiter",
    [
        # 8 warps x 4096 registers: 65536 / 4096 = 16 warps = 2 blocks.
        (256, 128, 0, 2, 0.25, "registers"),
        # 129 registers: 4128 per warp, rounded to 4352; 65536 / 4352 = 15 warps = 1 block.
        (256, 129, 0, 1, 0.125, "registers"),
        # 131200 + 1024 bytes -> 132224 (a multiple of 128); 233472 / 132224 = 1 block of 16 warps.
        (512, 64, 131200, 1, 0.25, "shared memory"),
        # 1 warp, 40 registers -> 1280 per warp, 51 warps; 32 blocks per SM bind first.
        (32, 40, 0, 32, 0.5, "blocks"),
        # 64 registers at 256 threads: 4 blocks by registers and 8 by warps ... 4 blocks = 50%.
        (256, 64, 4096, 4, 0.5, "registers"),
        # 48 KB + 1 KB per block: 233472 / 50176 = 4 blocks; 32 registers x 128 threads allow 16.
        (128, 32, 48 * 1024, 4, 0.25, "shared memory"),
        (256, 256, 0, 0, 0.0, "launch fails"),
        (256, 32, 227 * 1024 + 1, 0, 0.0, "launch fails"),
    ],
)
def test_occupancy(threads, registers, smem, blocks, fraction, limiter):
    occ = cr.occupancy(threads, registers, smem)
    assert (occ.blocks, occ.fraction, occ.limiter) == (blocks, fraction, limiter)


def _row(mangled, registers, spill=0, threads=256):
    usage = cr.Usage(registers, spill, spill, spill, 0)
    return cr.Row(mangled, cr.describe(mangled), usage, threads, 0, cr.occupancy(threads, registers, 0))


def test_gate():
    strided = "_ZN16hadamard_kernels4cuda26classifier_backward_kernelIfLi14ELb1ELb0EEEvNS0_22ClassifierBackwardArgsIT_EE"
    contiguous = "_ZN16hadamard_kernels4cuda26classifier_backward_kernelIfLi14ELb0ELb0EEEvNS0_22ClassifierBackwardArgsIT_EE"
    assert cr.gate([_row(contiguous, 128), _row(strided, 168)]) == []  # strided: occupancy not gated
    failures = cr.gate([_row(contiguous, 129)])
    assert len(failures) == 1 and "occupancy 12.5% < 25%" in failures[0]
    failures = cr.gate([_row(contiguous, 64, spill=8), _row(strided, 64, spill=8)])
    assert len(failures) == 2 and "STRIDED_ALLOW" in failures[1]
    assert cr.gate([_row(strided, 64, spill=8)], allow={("classifier_backward", "float32", 14): "why"}) == []
    assert "no __launch_bounds__" in cr.gate([_row(contiguous, 64, threads=0)])[0]


def test_build_rows_checks_manifest_against_launch_bounds():
    rows = cr.build_rows(LOG, PTX)
    forward = next(r for r in rows if r.kernel.kernel == "classifier_forward")
    assert (forward.threads, forward.dynamic_smem_bytes, forward.occupancy.fraction) == (512, 131200, 0.25)
    with pytest.raises(ValueError, match="RowTile::THREADS"):
        cr.build_rows(LOG, PTX.replace("{15, 0, 0, 0, 0, 2,", "{15, 0, 0, 0, 0, 1,"))
