"""Hadamard matrices H_K for the orders K that are not powers of two, and how n splits into K * 2^k.

The transforms built on them compute, over the last dim of x (length n = K * 2^k),

    y = scale * (H_K kron H_{2^k}) @ x,  i.e.
    y[a * 2^k + b] = scale * sum_{a', b'} H_K[a, a'] * H_{2^k}[b, b'] * x[a' * 2^k + b']

for a, a' in [0, K) and b, b' in [0, 2^k): H_K acts on the *most significant* digit of the index
(reshape x to (..., K, 2^k): Y = H_K @ X @ H_{2^k}), and H_{2^k} is the Sylvester matrix
(`scipy.linalg.hadamard(2^k)`, symmetric). This is the convention of fast-hadamard-transform's
`hadamard_transform_{12,20,28,40}N` and of the rotation libraries (QuaRot, SpinQuant, QuIP#
`matmul_hadU`), derived from their sources; docs/orders.md says how.

Two families of matrices, because the libraries disagree on K = 12, 20 and 28:

- ``"rotation"`` (K in ORDERS): the matrices of QuaRot's and SpinQuant's ``get_hadK`` (QuIP#'s for
  the orders it has), all from N. J. A. Sloane's library of Hadamard matrices
  (http://neilsloane.com/hadamard/).
- ``"fht"`` (K in FHT_ORDERS): the matrices compiled into fast-hadamard-transform's kernels:
  Sloane's had.20.will, had.28.will, had.40.tpal, and a Paley II matrix of order 12 that is not
  in Sloane's library.

Every matrix is rebuilt here from a standard construction (Paley I, Paley II, Williamson, or
H_2 kron a smaller one) with the parameters and Williamson sequences below; tests/test_orders.py
pins each to a SHA-256 of its rows, taken from the library each reproduces. Many H_K are not
symmetric (see SYMMETRIC): the adjoint of a transform by H_K is the transform by H_K^T.
"""

from __future__ import annotations

import torch

__all__ = [
    "FAMILIES",
    "ORDERS",
    "FHT_ORDERS",
    "SYMMETRIC",
    "hadamard_k",
    "matrix_source",
    "split_order",
    "fht_padded_size",
]

#: Matrix families: "rotation" (QuaRot / SpinQuant / Sloane) and "fht" (fast-hadamard-transform).
FAMILIES = ("rotation", "fht")

#: The orders K != 1 that split_order picks from (the rotation libraries' set, 44 from SpinQuant).
ORDERS = (12, 20, 28, 36, 40, 44, 52, 60, 108, 140, 156, 172)

#: The orders of fast-hadamard-transform's hadamard_transform_{K}N.
FHT_ORDERS = (12, 20, 28, 40)

#: The symmetric H_K of each family (K = 1 aside). Paley II matrices are symmetric; Paley I ones
#: are skew-type (H + H^T = 2I), Williamson and H_2 kron Paley I ones are neither.
SYMMETRIC = {"rotation": frozenset({28, 36}), "fht": frozenset({12})}

# Williamson sequences: the first rows of the four symmetric circulants A, B, C, D ('+' = 1,
# '-' = -1), read off the first row of Sloane's had.K.will (fast-hadamard-transform's had_20_will
# and had_28_will are the same matrices).
_WILLIAMSON = {
    20: ("+----", "+----", "++--+", "+-++-"),
    28: ("+------", "++----+", "+-+--+-", "+--++--"),
    52: ("+-+--++++--+-", "+---++++++---", "++-+--++--+-+", "+----+--+----"),
    156: (
        "+++--+-+-----+--++----++--+-----+-+--++",
        "++++---+--++----+-+--+-+----++--+---+++",
        "+++--++-+---+-+--+----+--+-+---+-++--++",
        "+---++-+-+-----+++-++-+++-----+-+-++---",
    ),
    172: (
        "+---++--++++-+-+++-++--++-+++-+-++++--++---",
        "++-++++++----+-+--++-++-++--+-+----++++++-+",
        "+++-+-++--+-+-++++-+----+-++++-+-+--++-+-++",
        "++---++++-+--+--++--------++--+--+-++++---+",
    ),
}

# (family, K) -> (construction, parameter, source). Constructions are defined below.
_TABLE = {
    ("rotation", 12): ("paley1", 11, "Sloane had.12 = Paley I, q = 11"),
    ("rotation", 20): ("paley1", 19, "Sloane had.20.pal = Paley I, q = 19"),
    ("rotation", 28): ("paley2", 13, "Sloane had.28.pal2 = Paley II, q = 13"),
    ("rotation", 36): ("paley2", 17, "Sloane had.36.pal2 = Paley II, q = 17"),
    ("rotation", 40): ("twice_paley1", 19, "Sloane had.40.tpal = H_2 kron had.20.pal"),
    ("rotation", 44): ("paley1", 43, "Sloane had.44.pal = Paley I, q = 43 (SpinQuant only)"),
    ("rotation", 52): ("williamson", 52, "Sloane had.52.will (Williamson, 13x13 circulants)"),
    ("rotation", 60): ("paley1", 59, "Sloane had.60.pal = Paley I, q = 59"),
    ("rotation", 108): ("paley1", 107, "Sloane had.108.pal = Paley I, q = 107"),
    ("rotation", 140): ("paley1", 139, "Sloane had.140.pal = Paley I, q = 139"),
    ("rotation", 156): ("williamson", 156, "Sloane had.156.will (Williamson, 39x39 circulants)"),
    ("rotation", 172): ("williamson", 172, "Sloane had.172.will (Williamson, 43x43 circulants)"),
    ("fht", 12): ("paley2_interleaved", 5, "Paley II, q = 5, C kron [[1,1],[1,-1]] + I kron [[1,-1],[-1,-1]]"),
    ("fht", 20): ("williamson", 20, "Sloane had.20.will (Williamson, 5x5 circulants)"),
    ("fht", 28): ("williamson", 28, "Sloane had.28.will (Williamson, 7x7 circulants)"),
    ("fht", 40): ("twice_paley1", 19, "Sloane had.40.tpal = H_2 kron had.20.pal"),
}


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[a, b] = chi(a - b) for a, b in 0..q-1, chi the quadratic character mod the prime q
    (chi(0) = 0, 1 on nonzero squares, -1 otherwise)."""
    squares = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0] + [1 if a in squares else -1 for a in range(1, q)], dtype=torch.int64)
    a = torch.arange(q)
    return chi[(a[:, None] - a[None, :]) % q]


def _paley1(q: int) -> torch.Tensor:
    """Order q + 1, q = 3 mod 4 prime: H = I + [[0, -1^T], [1, Q]] (first row +1, -1, ..., -1;
    first column all +1), the form of Sloane's had.12 and had.*.pal files."""
    s = torch.zeros(q + 1, q + 1, dtype=torch.int64)
    s[0, 1:] = -1
    s[1:, 0] = 1
    s[1:, 1:] = _jacobsthal(q)
    return torch.eye(q + 1, dtype=torch.int64) + s


def _conference(q: int) -> torch.Tensor:
    """The symmetric conference matrix C = [[0, 1^T], [1, Q]] of order q + 1, q = 1 mod 4 prime."""
    c = torch.ones(q + 1, q + 1, dtype=torch.int64)
    c[0, 0] = 0
    c[1:, 1:] = _jacobsthal(q)
    return c


_H2 = torch.tensor([[1, 1], [1, -1]], dtype=torch.int64)
_Z2 = torch.tensor([[1, -1], [-1, -1]], dtype=torch.int64)


def _paley2(q: int) -> torch.Tensor:
    """Order 2(q + 1), Sloane's layout (had.*.pal2): [[C + I, C - I], [C - I, -C - I]]
    = Z kron I + H_2 kron C with Z = [[1, -1], [-1, -1]]."""
    eye = torch.eye(q + 1, dtype=torch.int64)
    return torch.kron(_Z2, eye) + torch.kron(_H2, _conference(q))


def _paley2_interleaved(q: int) -> torch.Tensor:
    """Order 2(q + 1), the other Kronecker order (fast-hadamard-transform's had_12_paley):
    C kron H_2 + I kron Z, i.e. each entry c of C becomes the block c * H_2, each 0 becomes Z."""
    eye = torch.eye(q + 1, dtype=torch.int64)
    return torch.kron(_conference(q), _H2) + torch.kron(eye, _Z2)


def _circulant(row: str) -> torch.Tensor:
    """The circulant with first row ``row`` ('+'/'-'): C[i, j] = row[(j - i) mod m]."""
    first = torch.tensor([1 if c == "+" else -1 for c in row], dtype=torch.int64)
    i = torch.arange(len(row))
    return first[(i[None, :] - i[:, None]) % len(row)]


def _williamson(k: int) -> torch.Tensor:
    """The Williamson array [[A, B, C, D], [-B, A, -D, C], [-C, D, A, -B], [-D, -C, B, A]]."""
    a, b, c, d = (_circulant(r) for r in _WILLIAMSON[k])
    return torch.cat(
        [
            torch.cat([a, b, c, d], dim=1),
            torch.cat([-b, a, -d, c], dim=1),
            torch.cat([-c, d, a, -b], dim=1),
            torch.cat([-d, -c, b, a], dim=1),
        ]
    )


_BUILD = {
    "paley1": _paley1,
    "paley2": _paley2,
    "paley2_interleaved": _paley2_interleaved,
    "twice_paley1": lambda q: torch.kron(_H2, _paley1(q)),
    "williamson": _williamson,
}


def _check_family(family: str, fn: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"{fn}: family must be one of {FAMILIES}, got {family!r}")


# (family, K) -> H_K as int8, built on first use. A plain dict rather than functools.cache,
# which torch.compile traces through with a warning when the first use is inside a compiled
# function (hadamard_kernels.transforms builds H_K there).
_MATRICES: dict[tuple[str, int], torch.Tensor] = {}


def _matrix(family: str, k: int) -> torch.Tensor:
    h = _MATRICES.get((family, k))
    if h is None:
        if k == 1:
            h = torch.ones(1, 1, dtype=torch.int8)
        else:
            construction, param, _ = _TABLE[(family, k)]
            h = _BUILD[construction](param).to(torch.int8)
        _MATRICES[(family, k)] = h
    return h


def hadamard_k(
    K: int,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    *,
    family: str = "rotation",
) -> torch.Tensor:
    """The (K, K) Hadamard matrix H_K of ``family`` (entries +1/-1, H_K @ H_K.T = K * I).

    K = 1 gives [[1]]; otherwise K must be in ORDERS ("rotation") or FHT_ORDERS ("fht").
    Not symmetric unless K is in SYMMETRIC[family]. A fresh tensor on every call.
    """
    _check_family(family, "hadamard_k")
    if K != 1 and (family, K) not in _TABLE:
        allowed = ORDERS if family == "rotation" else FHT_ORDERS
        raise ValueError(f"hadamard_k: K={K} is not available in family {family!r}; allowed: 1, {allowed}")
    return _matrix(family, K).to(device=device, dtype=dtype, copy=True)


def matrix_source(K: int, family: str = "rotation") -> str:
    """Where H_K of ``family`` comes from (Sloane's file name and the construction)."""
    _check_family(family, "matrix_source")
    if K == 1:
        return "[[1]]"
    if (family, K) not in _TABLE:
        raise ValueError(f"matrix_source: K={K} is not available in family {family!r}")
    return _TABLE[(family, K)][2]


def split_order(n: int) -> tuple[int, int]:
    """(K, 2^k) with n = K * 2^k, the split the general K * 2^k transform uses.

    A power of two gives (1, n). Otherwise K is the largest order in ORDERS for which n / K is a
    power of two. The only order that can fit twice is 20 vs 40 (n = 40 * 2^k = 20 * 2^(k+1)):
    40 wins, as in QuaRot's and SpinQuant's ``get_hadK``, so results match theirs (QuIP# has no
    40 and would use 20; the two differ by a permutation). Raises ValueError for any other n.
    """
    if n >= 1 and n & (n - 1) == 0:
        return 1, n
    for k in sorted(ORDERS, reverse=True):
        m, rem = divmod(n, k)
        if n > 0 and rem == 0 and m & (m - 1) == 0:
            return k, m
    raise ValueError(f"split_order: n={n} is not a power of two or K * 2^k for K in {ORDERS}")


def fht_padded_size(n: int, K: int) -> int:
    """The length fast-hadamard-transform's ``hadamard_transform_{K}N`` zero-pads n features to:
    K * 2^k with 2^k = max(4, next_pow2(ceil(n / K))). The transform is taken at that length and
    the first n outputs are kept, so n = K * 2^k is exact only for 2^k >= 4 (n = K or 2K is
    padded to 4K). The peer refuses n > 1024 * K."""
    per = -(-n // K)  # ceil(n / K)
    return K * max(4, 1 << max(0, per - 1).bit_length())
