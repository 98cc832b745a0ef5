"""hadamard_kernels.nn: HadamardClassifier and OrthogonalClassifier; SimplexETFClassifier in the
generic tests whose sizes it accepts (its own tests: test_etf.py)."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import RTOL, dtype_id, rel_err

from hadamard_kernels import reference as R
from hadamard_kernels.nn import HadamardClassifier, OrthogonalClassifier, SimplexETFClassifier

# (N, C): C < N, C = N, C > N (the paper's caveat).
CASES = [(16, 4), (16, 16), (8, 10), (3, 1000), (100, 10), (1, 1)]
HEADS = [HadamardClassifier, OrthogonalClassifier]
# Tests whose sizes are N a power of two and 2 <= C <= N run the ETF head too.
ALL_HEADS = [*HEADS, SimplexETFClassifier]


def nc_id(case) -> str:
    return f"N{case[0]}-C{case[1]}"


def head_id(cls) -> str:
    return cls.__name__


def dense_weight(head) -> torch.Tensor:
    """The (C, N) matrix the head multiplies x_hat by, in float64."""
    if isinstance(head, SimplexETFClassifier):
        n, c = head.in_features, head.num_classes
        u = R.hadamard_matrix(n)[:c] / math.sqrt(n)
        return math.sqrt(c / (c - 1)) * (u - u.mean(0))
    if isinstance(head, HadamardClassifier):
        m = R.next_pow2(max(head.in_features, head.num_classes))
        return R.hadamard_matrix(m)[: head.num_classes, : head.in_features]
    return head.weight.double()


def dense_forward(head, x: torch.Tensor) -> torch.Tensor:
    """scale * F.linear(x_hat, W) + b in float64: the formula each head implements."""
    x = x.double()
    x_hat = F.normalize(x, dim=-1, eps=head.eps) if head.normalize else x
    y = head.scale.double() * F.linear(x_hat, dense_weight(head))
    return y + head.bias.double() if head.bias is not None else y


def randomise(head) -> None:
    """Move scale and bias away from their initial values, so that the checks see them."""
    with torch.no_grad():
        head.scale.fill_(1.7)
        if head.bias is not None:
            head.bias.copy_(torch.randn_like(head.bias))


@pytest.mark.parametrize("cls", HEADS, ids=head_id)
@pytest.mark.parametrize("case", CASES, ids=nc_id)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_forward_matches_formula(cls, case, bias, normalize):
    n, c = case
    head = cls(n, c, bias=bias, normalize=normalize)
    randomise(head)
    x = torch.randn(2, 3, n)
    x0 = x.clone()
    y = head(x)
    assert y.shape == (2, 3, c) and y.dtype == x.dtype
    assert torch.equal(x, x0)
    assert rel_err(y, dense_forward(head, x)) <= RTOL[torch.float32]


@pytest.mark.parametrize("case", CASES, ids=nc_id)
def test_hadamard_head_matches_functional_reference(case):
    n, c = case
    head = HadamardClassifier(n, c)
    randomise(head)
    x = torch.randn(5, n, dtype=torch.float64)
    ref = R.hadamard_classifier_reference(x, c, head.scale.double(), head.bias.double())
    assert rel_err(head.double()(x), ref) <= RTOL[torch.float64]


@pytest.mark.parametrize("cls", ALL_HEADS, ids=head_id)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("learn_scale", [True, False], ids=["learn", "fixed"])
def test_parameter_count(cls, bias, learn_scale):
    n, c = 512, 10
    head = cls(n, c, bias=bias, learn_scale=learn_scale)
    expected = (c if bias else 0) + (1 if learn_scale else 0)
    assert sum(p.numel() for p in head.parameters()) == expected
    assert sum(p.numel() for p in head.parameters() if p.requires_grad) == expected
    # A fixed scale is a buffer: not trained, but saved.
    assert "scale" in head.state_dict()
    assert ("bias" in head.state_dict()) == bias
    assert isinstance(head.scale, torch.nn.Parameter) == learn_scale


def test_hadamard_stores_nothing_of_size_c_by_n():
    head = HadamardClassifier(4096, 1000)
    assert sum(t.numel() for t in head.state_dict().values()) == 1000 + 1


@pytest.mark.parametrize("c", [1, 4, 10, 1000])
def test_default_init_scales(c):
    assert HadamardClassifier(16, c).scale.item() == pytest.approx(-1 / math.sqrt(c))
    assert OrthogonalClassifier(16, c).scale.item() == pytest.approx(10.0)
    assert HadamardClassifier(16, c, init_scale=3.0).scale.item() == pytest.approx(3.0)
    assert OrthogonalClassifier(16, c, init_scale=3.0).scale.item() == pytest.approx(3.0)


@pytest.mark.parametrize("cls", ALL_HEADS, ids=head_id)
def test_bias_starts_at_zero(cls):
    head = cls(16, 10)
    assert torch.equal(head.bias, torch.zeros(10))


@pytest.mark.parametrize("cls", ALL_HEADS, ids=head_id)
def test_extra_repr(cls):
    text = repr(cls(64, 10, bias=False, learn_scale=False, normalize=False))
    assert text.startswith(f"{cls.__name__}(")
    for part in ("in_features=64", "num_classes=10", "bias=False", "learn_scale=False", "normalize=False"):
        assert part in text
    assert "learn_scale=True" in repr(cls(64, 10))


def test_orthogonal_repr_has_seed():
    assert "seed=7" in repr(OrthogonalClassifier(8, 4, seed=7))


@pytest.mark.parametrize("cls", HEADS, ids=head_id)
@pytest.mark.parametrize("learn_scale", [True, False], ids=["learn", "fixed"])
def test_state_dict_round_trip(cls, learn_scale):
    head = cls(24, 10, learn_scale=learn_scale)
    randomise(head)
    fresh = cls(24, 10, learn_scale=learn_scale, **({"seed": 1} if cls is OrthogonalClassifier else {}))
    x = torch.randn(6, 24)
    assert not torch.equal(fresh(x), head(x))
    fresh.load_state_dict(head.state_dict())
    assert torch.equal(fresh(x), head(x))


@pytest.mark.parametrize("cls", HEADS, ids=head_id)
def test_to_float64(cls):
    head = cls(24, 40)
    randomise(head)
    head = head.to(torch.float64)
    assert all(t.dtype == torch.float64 for t in head.state_dict().values())
    x = torch.randn(5, 24, dtype=torch.float64)
    y = head(x)
    assert y.dtype == torch.float64
    assert rel_err(y, dense_forward(head, x)) <= RTOL[torch.float64]


@pytest.mark.parametrize("cls", HEADS, ids=head_id)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=dtype_id)
def test_factory_dtype(cls, dtype):
    head = cls(24, 10, dtype=dtype)
    assert head.scale.dtype == dtype and head.bias.dtype == dtype
    x = torch.randn(5, 24, dtype=dtype)
    y = head(x)
    assert y.dtype == dtype
    assert rel_err(y, dense_forward(head, x)) <= RTOL[dtype]


def test_module_on_device(device):
    head = HadamardClassifier(24, 10, device=device)
    assert head.scale.device.type == torch.device(device).type
    x = torch.randn(5, 24, device=device)
    assert rel_err(head(x).cpu(), dense_forward(head.cpu(), x.cpu())) <= RTOL[torch.float32]


@pytest.mark.parametrize("case", [(16, 4), (16, 16), (100, 10), (8, 10), (3, 1000)], ids=nc_id)
def test_orthogonal_weight_is_orthonormal(case):
    n, c = case
    w = OrthogonalClassifier(n, c, dtype=torch.float64).weight
    assert w.shape == (c, n)
    if c <= n:  # orthonormal rows
        torch.testing.assert_close(w @ w.T, torch.eye(c, dtype=torch.float64))
    else:  # orthonormal columns
        torch.testing.assert_close(w.T @ w, torch.eye(n, dtype=torch.float64))


def test_orthogonal_seed():
    a, b = OrthogonalClassifier(32, 10, seed=3), OrthogonalClassifier(32, 10, seed=3)
    assert torch.equal(a.weight, b.weight)
    assert not torch.equal(a.weight, OrthogonalClassifier(32, 10, seed=4).weight)


def test_orthogonal_weight_is_buffer():
    head = OrthogonalClassifier(32, 10)
    assert "weight" in dict(head.named_buffers())
    assert "weight" in head.state_dict()
    assert all(name != "weight" for name, _ in head.named_parameters())


@pytest.mark.parametrize("cls", ALL_HEADS, ids=head_id)
@pytest.mark.parametrize("shape", [(4, 15), (4, 17), (17,)], ids=lambda s: f"x{list(s)}")
def test_wrong_feature_count(cls, shape):
    head = cls(16, 10)
    with pytest.raises(ValueError, match=rf"{cls.__name__}: expected 16 input features, got shape \({shape[0]}"):
        head(torch.randn(shape))


@pytest.mark.parametrize("cls", HEADS, ids=head_id)
@pytest.mark.parametrize(
    "n,c,match", [(0, 10, "in_features must be >= 1, got 0"), (16, 0, "num_classes must be >= 1, got 0")]
)
def test_bad_sizes(cls, n, c, match):
    with pytest.raises(ValueError, match=match):
        cls(n, c)


# Constructor arguments are validated at construction, not at the first forward.
BAD_ARGS = [
    ({"num_classes": 10.5}, TypeError, r"num_classes must be an int, got 10\.5 \(float\)"),
    ({"in_features": 16.0}, TypeError, r"in_features must be an int, got 16\.0 \(float\)"),
    ({"num_classes": True}, TypeError, r"num_classes must be an int, got True \(bool\)"),
    ({"in_features": -3}, ValueError, r"in_features must be >= 1, got -3"),
    ({"bias": "yes"}, TypeError, r"bias must be a bool, got 'yes' \(str\)"),
    ({"learn_scale": 1}, TypeError, r"learn_scale must be a bool, got 1 \(int\)"),
    ({"normalize": None}, TypeError, r"normalize must be a bool, got None"),
    ({"init_scale": "1"}, TypeError, r"init_scale must be a real number, got '1' \(str\)"),
    ({"init_scale": float("nan")}, ValueError, r"init_scale must be finite, got nan"),
    ({"eps": 0.0}, ValueError, r"eps must be > 0, got 0\.0"),
    ({"eps": 1e-40}, ValueError, r"eps must be >= 2\.94e-39 for torch\.float32"),
    ({"eps": "small"}, TypeError, r"eps must be a real number, got 'small' \(str\)"),
    ({"dtype": torch.int64}, TypeError, r"dtype must be a floating-point dtype.*got torch\.int64"),
]


@pytest.mark.parametrize("cls", ALL_HEADS, ids=head_id)
@pytest.mark.parametrize("kwargs,exc,match", BAD_ARGS, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_constructor_rejects_bad_arguments(cls, kwargs, exc, match):
    args = {"in_features": 16, "num_classes": 10, **kwargs}
    with pytest.raises(exc, match=rf"^{cls.__name__}: {match}"):
        cls(**args)


@pytest.mark.parametrize("n,c", [(2**21, 10), (10, 2**20 + 1)], ids=lambda v: str(v))
def test_hadamard_constructor_rejects_oversize(n, c):
    with pytest.raises(ValueError, match=r"HadamardClassifier: transform size next_pow2\(max\(in_features, num_classes\)\) = \d+ exceeds the supported maximum 1048576"):
        HadamardClassifier(n, c)


@pytest.mark.parametrize("backend,exc,match", [
    ("nonsense", ValueError, r"backend must be 'auto' or one of \('cuda', 'triton', 'cpu', 'reference'\), got 'nonsense'"),
    (None, TypeError, r"backend must be a str, got None"),
])  # fmt: skip
def test_hadamard_constructor_rejects_bad_backend(backend, exc, match):
    with pytest.raises(exc, match=rf"^HadamardClassifier: {match}"):
        HadamardClassifier(16, 10, backend=backend)


@pytest.mark.parametrize("seed", [1.5, "0", None], ids=["float", "str", "none"])
def test_orthogonal_constructor_rejects_bad_seed(seed):
    with pytest.raises(TypeError, match=r"^OrthogonalClassifier: seed must be an int, got"):
        OrthogonalClassifier(16, 10, seed=seed)


@pytest.mark.parametrize("cls", HEADS, ids=head_id)
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_gradients_match_formula(cls, normalize):
    head = cls(24, 10, normalize=normalize).double()
    randomise(head)
    x = torch.randn(6, 24, dtype=torch.float64, requires_grad=True)
    g = torch.randn(6, 10, dtype=torch.float64)
    got = torch.autograd.grad(head(x), (x, head.scale, head.bias), g)
    xr = x.detach().clone().requires_grad_()
    sr, br = head.scale.detach().clone().requires_grad_(), head.bias.detach().clone().requires_grad_()
    xr_hat = F.normalize(xr, dim=-1) if normalize else xr
    yr = sr * F.linear(xr_hat, dense_weight(head)) + br
    want = torch.autograd.grad(yr, (xr, sr, br), g)
    for gv, wv in zip(got, want):
        assert rel_err(gv, wv) <= RTOL[torch.float64]


@pytest.mark.parametrize("cls", ALL_HEADS, ids=head_id)
def test_training_step(cls):
    # A tiny separable problem: features from class-dependent means.
    torch.manual_seed(0)
    n, c = 16, 4
    model = torch.nn.Sequential(torch.nn.Linear(8, n), torch.nn.ReLU(), cls(n, c))
    head = model[2]
    labels = torch.arange(64) % c
    x = torch.randn(64, 8) + 3 * F.one_hot(labels, 8).float()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    scale0, bias0 = head.scale.detach().clone(), head.bias.detach().clone()
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert not torch.equal(head.scale, scale0)
    assert not torch.equal(head.bias, bias0)
    assert losses[-1] < 0.8 * losses[0]


def test_fixed_scale_is_not_trained():
    head = HadamardClassifier(16, 4, learn_scale=False)
    opt = torch.optim.SGD(head.parameters(), lr=1.0)
    scale0 = head.scale.clone()
    F.cross_entropy(head(torch.randn(8, 16)), torch.arange(8) % 4).backward()
    opt.step()
    assert torch.equal(head.scale, scale0)
    assert head.bias.grad is not None and head.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_hadamard_backend_argument(backend):
    head = HadamardClassifier(24, 10, backend=backend)
    randomise(head)
    x = torch.randn(5, 24)
    assert rel_err(head(x), dense_forward(head, x)) <= RTOL[torch.float32]
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        HadamardClassifier(24, 10, backend="nope")


@pytest.mark.slow
@pytest.mark.parametrize("cls", ALL_HEADS, ids=head_id)
def test_compile_model_fullgraph(cls):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), cls(32, 10))
    randomise(model[2])
    x, labels = torch.randn(8, 12), torch.arange(8) % 10

    def step(m):
        m.zero_grad()
        loss = F.cross_entropy(m(x), labels)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in m.parameters()]

    loss, grads = step(model)
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: any graph break raises
    loss_c, grads_c = step(compiled)
    assert rel_err(loss_c, loss) <= RTOL[torch.float32]
    assert len(grads_c) == len(grads)
    for gc, ge in zip(grads_c, grads):
        assert rel_err(gc, ge) <= 1e-4  # inductor reorders the float32 reductions of Linear


@pytest.mark.parametrize("cls", [HadamardClassifier, OrthogonalClassifier], ids=lambda c: c.__name__)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_head_output_keeps_input_dtype(cls, dtype):
    head = cls(8, 4)  # float32 parameters
    x = torch.randn(3, 8, dtype=dtype)
    y = head(x)
    assert y.dtype == dtype
    ref = head.to(torch.float64)(x.double())  # same (float32-valued) parameters, in float64
    assert rel_err(y, ref) <= RTOL[dtype]


def test_forward_fast_path_keeps_the_full_paths_behaviour():
    # HadamardClassifier.forward calls the cached op directly after a first call; what the
    # op cannot take as it is must still go through hadamard_classifier's full path.
    head = HadamardClassifier(8, 5)
    with torch.no_grad():
        head.bias.normal_()
    head(torch.randn(2, 8))  # warm the cache
    x = torch.randn(3, 8, dtype=torch.float64)  # float32 bias and scale: cast on the full path
    want = R.hadamard_classifier_reference(x, 5, head.scale.detach().double(), head.bias.detach().double())
    assert rel_err(head(x), want) <= RTOL[torch.float64]
    with pytest.raises(ValueError, match="HadamardClassifier: expected 8 input features"):
        head(torch.randn(3, 9))
    head.eps = 1e-40  # changed after construction: refused at forward, as hadamard_classifier does
    with pytest.raises(ValueError, match="eps must be >= 2.94e-39"):
        head(torch.randn(3, 8))
