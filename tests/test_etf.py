"""The simplex ETF head (issue 13): hadamard_classifier(..., etf=True), the classifier ops
with etf, and nn.SimplexETFClassifier, on the C++ CPU kernels and the reference.

The ground truth is the issue's formula written out here in float64, independently of
reference.simplex_etf_matrix: ``alpha * sqrt(C/(C-1)) * (U x_hat - mean_c(U x_hat)) + b``,
U = H_N[:C, :N] / sqrt(N). The weight the kernels imply is recovered from the op itself and
checked to be a simplex ETF.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import LAYOUTS, RTOL, dtype_id, make_input, rel_err

import hadamard_kernels as hk
from hadamard_kernels import ops as hk_ops
from hadamard_kernels import reference as R
from hadamard_kernels.nn import HadamardClassifier, SimplexETFClassifier

OPS = torch.ops.hadamard_kernels
# (N, C): C = 2, C = N, C not a power of two, C << N (the input folded onto next_pow2(C)
# points), a 1000-class head.
SIZES = [(2, 2), (4, 3), (16, 10), (16, 16), (128, 10), (512, 100), (1024, 1000), (1024, 7)]
BACKENDS = ["cpu", "reference"]


def size_id(case) -> str:
    return f"N{case[0]}-C{case[1]}"


def etf_formula(x, c, scale, bias=None, normalize=True, eps=1e-12):
    """The issue's formula in float64."""
    x = x.double()
    n = x.shape[-1]
    x_hat = F.normalize(x, dim=-1, eps=eps) if normalize else x
    z = F.linear(x_hat, R.hadamard_matrix(n)[:c] / math.sqrt(n))
    y = torch.as_tensor(scale, dtype=torch.float64).reshape(()) * math.sqrt(c / (c - 1)) * (z - z.mean(-1, keepdim=True))
    return y if bias is None else y + bias.double()


def implied_weight(n, c, backend="cpu", dtype=torch.float64):
    """The (C, N) matrix the kernel multiplies by: its outputs for the N unit vectors,
    un-normalised, with scale 1 and no bias."""
    eye = torch.eye(n, dtype=dtype)
    return hk.hadamard_classifier(eye, c, 1.0, normalize=False, etf=True, backend=backend).T.double()


@pytest.mark.parametrize("case", SIZES, ids=size_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_implied_weight_is_a_simplex_etf(case, backend):
    n, c = case
    w = implied_weight(n, c, backend)
    gram = w @ w.T
    want = torch.full((c, c), -1.0 / (c - 1), dtype=torch.float64)
    want.fill_diagonal_(1.0)
    assert (gram - want).abs().max() <= 1e-12  # unit rows, pairwise cosine -1/(C-1)
    assert w.sum(0).abs().max() <= 1e-12  # the rows sum to zero (centred)
    # ... and it is the centred, rescaled Hadamard rows, not just any ETF.
    u = R.hadamard_matrix(n)[:c] / math.sqrt(n)
    assert (w - math.sqrt(c / (c - 1)) * (u - u.mean(0))).abs().max() <= 1e-12
    assert torch.allclose(w, R.simplex_etf_matrix(n, c), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", SIZES, ids=size_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_matches_formula(case, dtype, backend):
    n, c = case
    x = torch.randn(5, n, dtype=dtype)
    scale = torch.tensor(-2.7)
    bias = torch.randn(c, dtype=dtype)
    y = hk.hadamard_classifier(x, c, scale, bias, etf=True, backend=backend)
    assert y.shape == (5, c) and y.dtype == dtype
    assert rel_err(y, etf_formula(x, c, scale, bias)) <= RTOL[dtype]


@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_layouts_and_options(normalize, layout):
    n, c = 64, 10
    x = make_input((3, 4, n), torch.float32, layout)
    scale = torch.tensor([1.3])
    y = hk.hadamard_classifier(x, c, scale, None, normalize=normalize, etf=True)
    assert y.shape == (3, 4, c)
    assert rel_err(y, etf_formula(x, c, scale, normalize=normalize)) <= RTOL[torch.float32]


def test_logits_sum_to_zero_without_bias():
    y = hk.hadamard_classifier(torch.randn(7, 256, dtype=torch.float64), 10, 5.0, etf=True)
    assert y.sum(-1).abs().max() <= 1e-12 * y.abs().max()


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_row(backend):
    x = torch.randn(3, 32)
    x[1] = 0
    bias = torch.randn(4)
    y = hk.hadamard_classifier(x, 4, 2.0, bias, etf=True, backend=backend)
    assert torch.isfinite(y).all()
    assert torch.equal(y[1], bias)  # x_hat = 0: only the bias is left


@pytest.mark.parametrize("case", [(2, 2), (16, 10), (16, 16), (512, 100), (1024, 7)], ids=size_id)
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_autograd_of_the_formula(case, normalize, dtype, backend):
    n, c = case
    x = torch.randn(6, n, dtype=dtype, requires_grad=True)
    scale = torch.tensor(1.9, dtype=dtype, requires_grad=True)
    bias = torch.randn(c, dtype=dtype, requires_grad=True)
    g = torch.randn(6, c, dtype=dtype)
    got = torch.autograd.grad(hk.hadamard_classifier(x, c, scale, bias, normalize=normalize, etf=True,
                                                     backend=backend), (x, scale, bias), g)
    leaves = [t.detach().double().requires_grad_() for t in (x, scale, bias)]
    want = torch.autograd.grad(etf_formula(*leaves[:1], c, leaves[1], leaves[2], normalize=normalize),
                               leaves, g.double())
    for gv, wv in zip(got, want):
        assert gv.dtype == dtype
        assert rel_err(gv, wv) <= RTOL[dtype]


def test_gradient_zero_row():
    x = torch.randn(3, 16, dtype=torch.float64)
    x[0] = 0
    x.requires_grad_()
    scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    hk.hadamard_classifier(x, 5, scale, etf=True).pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(scale.grad)


@pytest.mark.parametrize("case", [(2, 2), (8, 5), (16, 16), (64, 10)], ids=size_id)
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_gradcheck_and_gradgradcheck(case, normalize):
    n, c = case
    x = torch.randn(3, n, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(c, dtype=torch.float64, requires_grad=True)

    def f(x, scale, bias):
        return hk.hadamard_classifier(x, c, scale, bias, normalize=normalize, etf=True)

    assert torch.autograd.gradcheck(f, (x, scale, bias))
    assert torch.autograd.gradgradcheck(f, (x, scale, bias))


def test_backward_op_matches_the_differentiable_backward():
    # The fused backward (no graph) and the one built of differentiable ops (create_graph)
    # are two implementations of one formula.
    x = torch.randn(4, 128, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 10, dtype=torch.float64)
    fused = torch.autograd.grad(hk.hadamard_classifier(x, 10, scale, etf=True), (x, scale), g)
    graph = torch.autograd.grad(hk.hadamard_classifier(x, 10, scale, etf=True), (x, scale), g, create_graph=True)
    for a, b in zip(fused, graph):
        assert rel_err(a, b.detach()) <= RTOL[torch.float64]
    gx, gs, gb = OPS.classifier_backward(g, x.detach(), scale.detach(), True, 1e-12, True)
    assert rel_err(gx, fused[0]) <= RTOL[torch.float64] and rel_err(gs, fused[1]) <= RTOL[torch.float64]
    assert torch.equal(gb, g.sum(0))  # the bias gradient is not centred


@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
def test_opcheck(normalize, requires_grad):
    x = torch.randn(5, 64, requires_grad=requires_grad)
    scale = torch.tensor(0.7, requires_grad=requires_grad)
    bias = torch.randn(10, requires_grad=requires_grad)
    torch.library.opcheck(OPS.classifier_forward, (x, scale, bias, 10, normalize, 1e-12, True))
    g = torch.randn(5, 10)
    torch.library.opcheck(OPS.classifier_backward, (g, x.detach(), scale.detach(), normalize, 1e-12, True))


@pytest.mark.slow
def test_compile_fullgraph_dynamic_batch():
    scale = torch.tensor(2.0, requires_grad=True)
    bias = torch.randn(10, requires_grad=True)

    def f(x, scale, bias):
        return hk.hadamard_classifier(x, 10, scale, bias, etf=True)

    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend="aot_eager")
    for rows in (3, 5):
        x = torch.randn(rows, 128, requires_grad=True)
        y, yc = f(x, scale, bias), compiled(x, scale, bias)
        assert rel_err(yc, y) <= RTOL[torch.float32]
        g = torch.randn_like(y)
        for a, b in zip(torch.autograd.grad(yc, (x, scale, bias), g), torch.autograd.grad(y, (x, scale, bias), g)):
            assert rel_err(a, b) <= RTOL[torch.float32]


# ---------------------------------------------------------------------------------------
# Bad sizes and arguments: the op, the function and the module refuse them by name.

BAD_SIZES = [(12, 4), (100, 10), (16, 1), (16, 17), (1, 1)]


@pytest.mark.parametrize("case", BAD_SIZES, ids=size_id)
def test_bad_sizes_are_refused(case):
    n, c = case
    x = torch.randn(2, n)
    with pytest.raises(ValueError, match=rf"hadamard_classifier: the simplex ETF head needs in_features N a power "
                                         rf"of two and 2 <= num_classes <= N .*got N={n}, num_classes={c}"):
        hk.hadamard_classifier(x, c, 1.0, etf=True)
    for op in (OPS.classifier_forward, OPS.classifier_forward.default._op):
        with pytest.raises(ValueError, match=rf"classifier_forward: the simplex ETF head needs N a power of two "
                                             rf"and 2 <= C <= N, got N={n}, C={c}"):
            op(x, torch.tensor(1.0), None, c, True, 1e-12, True)
    with pytest.raises(ValueError, match=r"classifier_backward: the simplex ETF head needs"):
        OPS.classifier_backward(torch.randn(2, c), x, torch.tensor(1.0), True, 1e-12, True)
    with pytest.raises(ValueError, match=rf"^SimplexETFClassifier: needs in_features a power of two and "
                                         rf"2 <= num_classes <= in_features .*in_features={n}, num_classes={c}"):
        SimplexETFClassifier(n, c)


def test_bad_sizes_are_refused_by_the_fake_kernel():
    with pytest.raises(Exception, match="simplex ETF head needs"):
        torch.compile(lambda x: hk.hadamard_classifier(x, 10, 1.0, etf=True), fullgraph=True,
                      backend="aot_eager")(torch.randn(2, 24))


def test_etf_must_be_a_bool():
    with pytest.raises(TypeError, match="hadamard_classifier: etf must be a bool, got int"):
        hk.hadamard_classifier(torch.randn(2, 16), 4, 1.0, etf=1)


# ---------------------------------------------------------------------------------------
# The module.


def test_module_matches_formula_and_weight():
    head = SimplexETFClassifier(128, 10)
    with torch.no_grad():
        head.scale.fill_(-4.2)
        head.bias.normal_()
    x = torch.randn(2, 3, 128)
    y = head(x)
    assert y.shape == (2, 3, 10)
    assert rel_err(y, etf_formula(x, 10, head.scale.detach(), head.bias.detach())) <= RTOL[torch.float32]
    assert rel_err(head.weight.double(), implied_weight(128, 10)) <= RTOL[torch.float32]
    assert sum(t.numel() for t in head.state_dict().values()) == 10 + 1  # nothing of size C x N


def test_module_default_init_scale():
    assert SimplexETFClassifier(16, 4).scale.item() == -10.0
    assert SimplexETFClassifier(16, 4, init_scale=3.0).scale.item() == 3.0


def test_module_fast_path_keeps_etf():
    # After the first call, forward calls the cached op directly: it must still pass etf
    # (dropping it would silently give the Hadamard head) and still refuse bad input by name.
    head = SimplexETFClassifier(64, 10)
    with torch.no_grad():
        head.bias.normal_()
    plain = HadamardClassifier(64, 10)
    x = torch.randn(4, 64)
    plain(x)  # warms the same op for the plain head
    for _ in range(3):
        assert rel_err(head(x), etf_formula(x, 10, head.scale.detach(), head.bias.detach())) <= RTOL[torch.float32]
        assert rel_err(hk.hadamard_classifier(x, 10, head.scale, head.bias, etf=True),
                       etf_formula(x, 10, head.scale.detach(), head.bias.detach())) <= RTOL[torch.float32]
    with pytest.raises(ValueError, match="SimplexETFClassifier: expected 64 input features"):
        head(torch.randn(4, 32))
    with pytest.raises(ValueError, match="hadamard_classifier: the simplex ETF head needs"):
        hk.hadamard_classifier(torch.randn(4, 48), 10, head.scale, head.bias, etf=True)


def test_softmax_equals_the_hadamard_heads_with_rescaled_alpha():
    # What the class docstring states: the centring cancels under softmax.
    n, c = 128, 10
    etf, had = SimplexETFClassifier(n, c).double(), HadamardClassifier(n, c).double()
    with torch.no_grad():
        etf.bias.normal_()
        had.bias.copy_(etf.bias)
        had.scale.copy_(etf.scale * math.sqrt(c / ((c - 1) * n)))
    x = torch.randn(8, n, dtype=torch.float64)
    assert rel_err(etf(x).softmax(-1), had(x).softmax(-1)) <= RTOL[torch.float64]
    assert rel_err(etf(x), had(x)) > 0.1  # the logits themselves differ


def test_row_zero_dominates_on_non_negative_features():
    # Why init_scale defaults to a negative value (class docstring): W[c] <= W[0] entry by entry.
    w = R.simplex_etf_matrix(128, 10)
    assert (w[1:] <= w[0] + 1e-15).all()
    x = torch.rand(100, 128)
    y = hk.hadamard_classifier(x, 10, 1.0, etf=True)
    assert (y.argmax(-1) == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=dtype_id)
def test_module_dtypes(dtype):
    head = SimplexETFClassifier(32, 8, dtype=dtype)
    x = torch.randn(5, 32, dtype=dtype)
    y = head(x)
    assert y.dtype == dtype
    assert rel_err(y, etf_formula(x, 8, head.scale.detach().double())) <= RTOL[dtype]
    assert head.weight.dtype == dtype


def test_reference_etf_matrix_refuses_bad_sizes():
    with pytest.raises(ValueError, match="simplex_etf_matrix: needs N a power of two and 2 <= C <= N"):
        R.simplex_etf_matrix(24, 4)
    assert hk_ops.etf_factor(10, 128) == pytest.approx(math.sqrt(10 / (9 * 128)))


@pytest.mark.parametrize("learn_scale", [True, False], ids=["learn", "fixed"])
def test_module_state_dict_round_trip(learn_scale):
    head = SimplexETFClassifier(32, 6, learn_scale=learn_scale)
    with torch.no_grad():
        head.scale.fill_(-3.3)
        head.bias.normal_()
    fresh = SimplexETFClassifier(32, 6, learn_scale=learn_scale)
    x = torch.randn(4, 32)
    assert not torch.equal(fresh(x), head(x))
    fresh.load_state_dict(head.state_dict())
    assert torch.equal(fresh(x), head(x))
    assert set(head.state_dict()) == {"scale", "bias"}
