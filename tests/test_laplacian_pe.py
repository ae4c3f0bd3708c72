"""Laplacian eigenvector encodings (`posexplorer.encodings.coordinates.laplacian_pe`, RVGP arXiv:2309.16746): closed forms on rings, paths and grids,
networkx's Laplacian (what RVGP's `compute_laplacian` calls) and numpy's eigensolver as outside references, the anchored
basis under node relabelling, the connection Laplacian on a flat torus and a sphere, and bad input."""
import math
import numpy as np
import pytest
import torch
from posexplorer.core import get
from posexplorer.encodings.coordinates.laplacian_pe import (LaplacianPE, canonical_basis, clifford_torus, connection_laplacian, eigenspaces,
    fibonacci_sphere, grid_graph, knn_graph, laplacian, laplacian_eigvecs, path_modes, procrustes, ring_graph,
    tangent_frames, vector_eigenfields)

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

def _relabel(A, pi):
    "The same graph with node i renamed pi[i]"
    B = torch.empty_like(A); B[pi[:, None], pi[None, :]] = A
    return B

# ---- outside references: networkx (RVGP's own Laplacian call) and numpy's eigensolver -------------------------
@pytest.mark.parametrize("graph", ["ring", "grid", "torus", "random"])
def test_laplacian_matches_networkx(graph):
    nx = pytest.importorskip("networkx")
    G = {"ring": lambda: nx.cycle_graph(11), "grid": lambda: nx.grid_2d_graph(4, 6), "torus": lambda: nx.grid_2d_graph(4, 5, periodic=True),
         "random": lambda: nx.gnp_random_graph(30, 0.2, seed=3)}[graph]()
    A = torch.tensor(nx.to_numpy_array(G), dtype=torch.float64)
    try: ref = torch.tensor(nx.laplacian_matrix(G).toarray(), dtype=torch.float64)  # RVGP's call; needs scipy
    except ImportError: ref = torch.diag(torch.tensor([float(d) for _, d in G.degree()], dtype=torch.float64)) - A  # networkx's degrees
    torch.testing.assert_close(laplacian(A), ref, atol=0, rtol=0)
    if graph == "ring": torch.testing.assert_close(ring_graph(11), A, atol=0, rtol=0)
    if graph == "grid": torch.testing.assert_close(grid_graph(4, 6), A, atol=0, rtol=0)  # networkx orders (r, c) row-major too
    if graph == "torus": torch.testing.assert_close(grid_graph(4, 5, periodic=True), A, atol=0, rtol=0)

@pytest.mark.parametrize("N,dim", [(9, 8), (12, 10), (64, 32), (101, 20)])
def test_ring_closed_form(N, dim):
    lam, U = laplacian_eigvecs(ring_graph(N), dim)
    j = torch.arange(N, dtype=torch.float64)
    for c in range(dim):
        k, f = c // 2 + 1, (torch.cos if c % 2 == 0 else torch.sin)
        assert math.isclose(lam[c], 2 - 2 * math.cos(2 * math.pi * k / N), abs_tol=1e-12)
        torch.testing.assert_close(U[:, c], math.sqrt(2 / N) * f(2 * math.pi * k * j / N), atol=1e-10, rtol=0)
    e = get("laplacian_pe", dim=dim, n_nodes=N).embed(torch.arange(N)).double()
    torch.testing.assert_close(e, U * math.sqrt(N), atol=2e-6, rtol=0)  # float32 table
    np_lam = np.linalg.eigvalsh(laplacian(ring_graph(N)).numpy())[1:dim + 1]
    np.testing.assert_allclose(lam.numpy(), np_lam, atol=1e-12)

@pytest.mark.parametrize("rows,cols,periodic", [(5, 7, False), (6, 6, False), (4, 6, True)])
def test_grid_eigenvectors_are_products_of_sinusoids(rows, cols, periodic):
    if periodic:  # torus: products of ring modes, eigenvalue sums of 2 − 2cos(2πk/n)
        def modes(n):
            lam, U = laplacian_eigvecs(ring_graph(n), n - 1)
            return torch.cat([torch.zeros(1, dtype=torch.float64), lam]), torch.cat([torch.full((n, 1), n ** -0.5, dtype=torch.float64), U], 1)
    else: modes = path_modes
    mu, Ur = modes(rows); nu, Vc = modes(cols)
    prod_lam = (mu[:, None] + nu[None, :]).flatten()
    prod_vec = torch.einsum("ra,cb->rcab", Ur, Vc).reshape(rows * cols, rows * cols)
    lam, U = laplacian_eigvecs(grid_graph(rows, cols, periodic), 14)
    for c in range(14):
        same = prod_vec[:, (prod_lam - lam[c]).abs() < 1e-9]
        assert same.shape[1] >= 1
        torch.testing.assert_close(same @ (same.T @ U[:, c]), U[:, c], atol=1e-10, rtol=0)

def test_path_modes_closed_form():
    for n in (2, 5, 16):
        lam, C = path_modes(n)
        one = torch.ones(n - 1, dtype=torch.float64)
        L = laplacian(torch.diag(one, 1) + torch.diag(one, -1))  # the path graph
        torch.testing.assert_close(L @ C, C * lam, atol=1e-12, rtol=0)
        torch.testing.assert_close(C.T @ C, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)

# ---- sign and basis ambiguity ----------------------------------------------------------------------------
@pytest.mark.parametrize("graph", ["ring", "torus", "random"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_anchored_basis_follows_relabelling(graph, seed):
    g = torch.Generator().manual_seed(seed)
    A = {"ring": lambda: ring_graph(24), "torus": lambda: grid_graph(5, 5, periodic=True),
         "random": lambda: (lambda M: torch.maximum(M, M.T).fill_diagonal_(0))((torch.rand(20, 20, generator=g) < 0.3).double() * torch.rand(20, 20, generator=g))}[graph]()
    N = A.shape[0]
    pi = torch.randperm(N, generator=g)
    A2 = _relabel(A, pi)
    dim = min(12, N - 2)
    e = LaplacianPE(dim=dim, adjacency=A).embed(torch.arange(N))
    e2 = LaplacianPE(dim=dim, adjacency=A2, anchors=pi).embed(pi)  # node i is now pi[i]; anchors carried along
    torch.testing.assert_close(e2, e, atol=1e-5, rtol=0)
    # the basis spans the same eigenspaces as numpy's eigh (projectors are basis-free)
    lam, U = laplacian_eigvecs(A, dim)
    for l, V in eigenspaces(laplacian(A))[1:]:
        cols = (lam - l).abs() < 1e-7
        if cols.sum() == V.shape[1]: torch.testing.assert_close(U[:, cols] @ U[:, cols].T, V @ V.T, atol=1e-9, rtol=0)

def test_raw_eigh_is_ambiguous_on_a_symmetric_graph():
    "The problem the anchors solve: eigh's basis of a degenerate eigenspace does not follow a relabelling"
    g = torch.Generator().manual_seed(0)
    A, pi = ring_graph(16), torch.randperm(16, generator=g)
    raw, raw2 = torch.linalg.eigh(laplacian(A))[1][:, 1:5], torch.linalg.eigh(laplacian(_relabel(A, pi)))[1][:, 1:5]
    assert not torch.allclose(raw2[pi].abs(), raw.abs(), atol=1e-3)

def test_sign_rule_and_determinism():
    A = grid_graph(6, 6)
    U1, U2 = laplacian_eigvecs(A, 20)[1], laplacian_eigvecs(A.clone(), 20)[1]
    torch.testing.assert_close(U1, U2, atol=0, rtol=0)
    for _, V in eigenspaces(laplacian(A))[1:6]:
        B = canonical_basis(V, torch.arange(36))
        torch.testing.assert_close(B.T @ B, torch.eye(B.shape[1], dtype=torch.float64), atol=1e-12, rtol=0)
        assert B[0, 0] > 0  # the first vector is positive at its anchor, node 0

def test_ring_gram_is_circulant():
    G = get("laplacian_pe", dim=10, n_nodes=20).embed(torch.arange(20)).double()
    G = G @ G.T
    for s in range(1, 20): torch.testing.assert_close(G.roll((s, s), (0, 1)), G, atol=1e-5, rtol=0)

# ---- the connection Laplacian ------------------------------------------------------------------------------
def test_connection_laplacian_flat_torus_is_L_kron_I():
    P, F = clifford_torus(8)
    A = knn_graph(P, 4)
    torch.testing.assert_close(A, grid_graph(8, 8, periodic=True), atol=0, rtol=0)
    L = laplacian(A)
    torch.testing.assert_close(connection_laplacian(A, F), torch.kron(L, torch.eye(2, dtype=torch.float64)), atol=1e-12, rtol=0)
    Lc = connection_laplacian(A, tangent_frames(P, 9))
    torch.testing.assert_close(Lc, Lc.T, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.eigvalsh(Lc), torch.linalg.eigvalsh(L).repeat_interleave(2), atol=1e-9, rtol=0)

def test_connection_laplacian_gauge_and_psd():
    S = fibonacci_sphere(150)
    A, F = knn_graph(S, 7), tangent_frames(S, 10)
    Lc = connection_laplacian(A, F)
    torch.testing.assert_close(Lc, Lc.T, atol=1e-12, rtol=0)
    assert torch.linalg.eigvalsh(Lc).min() > 0  # the sphere has no parallel field
    th = torch.rand(150, dtype=torch.float64) * 2 * math.pi  # rotate every frame: T_i -> T_i G_i
    G = torch.stack([torch.stack([th.cos(), -th.sin()], 1), torch.stack([th.sin(), th.cos()], 1)], 1)
    Lc2 = connection_laplacian(A, F @ G)
    Gb = torch.block_diag(*G)
    torch.testing.assert_close(Lc2, Gb.T @ Lc @ Gb, atol=1e-10, rtol=0)
    v = torch.randn(300, dtype=torch.float64)  # vᵀ L_c v = Σ_edges ‖v_i − O_ij v_j‖²
    V, O = v.view(150, 2), procrustes(F[:, None], F[None, :])
    i, j = torch.triu_indices(150, 150, 1)
    keep = A[i, j] > 0
    i, j = i[keep], j[keep]
    direct = (V[i] - (O[i, j] @ V[j, :, None])[..., 0]).pow(2).sum()
    assert math.isclose(v @ Lc @ v, direct.item(), rel_tol=1e-10)

def test_sphere_eigenfields_match_continuum():
    S = fibonacci_sphere(400)
    lam, V = vector_eigenfields(S, 7)
    lam0 = torch.linalg.eigvalsh(laplacian(knn_graph(S, 8)))[1:4].mean()
    r = lam / lam0
    assert ((r[:6] > 0.45) & (r[:6] < 0.55)).all() and r[6] > 2, r  # continuum: 1 (×6) against 2 (×3)
    normal = (V * S[:, :, None]).sum(1).abs().max()  # the fields are tangent: orthogonal to the sphere's normal
    assert normal < 0.05 * V.norm(dim=1).max(), normal

# ---- the registered encoding and bad input ------------------------------------------------------------------
def test_registered_defaults():
    enc = get("laplacian_pe")
    assert enc.dim == 16 and enc.n_nodes == 256 and enc.card.arxiv == "2309.16746"
    for d in range(2, 33, 2):
        e = get("laplacian_pe", dim=d)
        for T in (1, 40, 300):
            p = e.default_positions(T)
            assert e.embed(p).shape == (T, d) and p.max() < 256
    assert get("laplacian_pe", dim=254).embed(torch.arange(3)).shape == (3, 254)

BAD = [
    (lambda: get("laplacian_pe", dim=7), ValueError, "`dim`"),
    (lambda: get("laplacian_pe", dim=256), ValueError, "`dim` = 256 exceeds"),
    (lambda: get("laplacian_pe", n_nodes=2), ValueError, "`n_nodes`"),
    (lambda: get("laplacian_pe", adjacency=[[0, 1], [1, 0]]), TypeError, "`adjacency`"),
    (lambda: get("laplacian_pe", dim=2, adjacency=torch.tensor([[0.0, 1.0], [0.0, 0.0]])), ValueError, "symmetric"),
    (lambda: get("laplacian_pe", dim=2, adjacency=-ring_graph(5)), ValueError, "nonnegative"),
    (lambda: get("laplacian_pe", dim=2, adjacency=torch.ones(3, 4)), ValueError, "square"),
    (lambda: get("laplacian_pe", dim=2, adjacency=ring_graph(5) * float("nan")), ValueError, "NaN"),
    (lambda: get("laplacian_pe", dim=2, anchors=torch.tensor([999])), ValueError, "`anchors`"),
    (lambda: get("laplacian_pe", dim=2, anchors=torch.tensor([0.5])), ValueError, "`anchors`"),
    (lambda: get("laplacian_pe").embed(torch.tensor([0.0, 1.0])), TypeError, "`positions`"),
    (lambda: get("laplacian_pe").embed(torch.tensor([0, 256])), ValueError, "`positions` must be node ids in [0, 256)"),
    (lambda: get("laplacian_pe").embed(torch.tensor([-1])), ValueError, "`positions`"),
    (lambda: get("laplacian_pe").embed([0, 1]), TypeError, "`positions`"),
    (lambda: knn_graph(torch.randn(5, 3), 5), ValueError, "`points`"),
    (lambda: knn_graph(torch.randn(5, 3), 0), ValueError, "`k`"),
    (lambda: grid_graph(1, 4), ValueError, "`rows`"),
]

@pytest.mark.parametrize("make,exc,words", BAD)
def test_bad_input(make, exc, words):
    with pytest.raises(exc) as e: make()
    assert words in str(e.value)

def test_inputs_untouched():
    A = ring_graph(10); A0 = A.clone()
    LaplacianPE(dim=4, adjacency=A); connection_laplacian(A, tangent_frames(fibonacci_sphere(10), 4))
    torch.testing.assert_close(A, A0, atol=0, rtol=0)
