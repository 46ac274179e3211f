import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cam_core.kmeans import KMeansError, kmeans


def _planted(n_per=200, dim=16, k=4, spread=0.05, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(k, dim, generator=gen), dim=1) * 5
    pts = torch.cat([c + spread * torch.randn(n_per, dim, generator=gen) for c in centres])
    truth = torch.arange(k).repeat_interleave(n_per)
    return pts, truth, centres


def _same_partition(a, b) -> bool:
    """Labels equal up to a renaming of the clusters."""
    mapping = {}
    for x, y in zip(a.tolist(), b.tolist()):
        if mapping.setdefault(x, y) != y:
            return False
    return len(set(mapping.values())) == len(mapping)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_recovers_planted_clusters(metric):
    pts, truth, centres = _planted()
    res = kmeans(pts, 4, metric, seed=1)
    assert _same_partition(res.labels, truth)
    # centres are the plain means of their members, close to the planted ones
    for j in range(4):
        members = pts[res.labels == j]
        assert torch.allclose(res.centers[j], members.mean(0), atol=1e-5)
    dist = torch.cdist(res.centers, centres).min(dim=1).values
    assert dist.max() < 0.05


def test_cosine_and_euclidean_agree_on_normalised_data():
    pts, truth, _ = _planted(spread=0.3)
    unit = F.normalize(pts, dim=1)
    a = kmeans(unit, 4, "cosine", seed=3)
    b = kmeans(unit, 4, "euclidean", seed=3)
    assert _same_partition(a.labels, b.labels)


def test_cosine_ignores_scale():
    pts, truth, _ = _planted()
    scaled = pts * torch.rand(len(pts), 1).add(0.5) * 10  # each point stretched along its own ray
    assert _same_partition(kmeans(scaled, 4, "cosine", seed=0).labels, truth)


def test_empty_clusters_are_reseeded():
    # 3 distinct points, many duplicates: K=3 must give 3 non-empty clusters
    pts = torch.tensor([[1.0, 0.0]] * 50 + [[0.0, 1.0]] * 50 + [[1.0, 1.0]])
    res = kmeans(pts, 3, "euclidean", seed=0)
    assert torch.bincount(res.labels, minlength=3).min() >= 1
    assert res.inertia == pytest.approx(0.0, abs=1e-6)


def test_k_larger_than_points_is_a_clear_error():
    with pytest.raises(KMeansError, match=r"K = 10 is larger than the number of points \(4\)"):
        kmeans(torch.randn(4, 3), 10)
    with pytest.raises(KMeansError, match="at least 1"):
        kmeans(torch.randn(4, 3), 0)


def test_seeded_and_deterministic():
    pts, _, _ = _planted(spread=0.8)
    a, b = kmeans(pts, 5, seed=7), kmeans(pts, 5, seed=7)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centers, b.centers)


def test_fit_cap_subsample_then_exact_means_of_all_points():
    pts, truth, _ = _planted(n_per=3000, spread=0.2)
    res = kmeans(pts, 4, "cosine", seed=2, fit_cap=500)
    assert res.fitted_on == 500 and len(res.labels) == len(pts)
    assert _same_partition(res.labels, truth)
    for j in range(4):
        assert torch.allclose(res.centers[j], pts[res.labels == j].mean(0), atol=1e-5)


def _plain_lloyd_inertia(pts, k, seed, max_iter=300):
    """Textbook Lloyd in float64 numpy from k distinct random points: the sum of squared
    distances at convergence."""
    rng = np.random.default_rng(seed)
    x = pts.double().numpy()
    c = x[rng.choice(len(x), k, replace=False)]
    for _ in range(max_iter):
        labels = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        new = np.stack([x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return float(((x - c[labels]) ** 2).sum())


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_converged_result_is_a_lloyd_fixed_point(metric):
    """Unstructured data, where the k-means++ start is far from the end: run to convergence
    (tol = 0), every point is in the cluster of its nearest returned centre, each centre is
    its members' mean, and the inertia is the distance to those centres."""
    pts = torch.randn(2000, 8, generator=torch.Generator().manual_seed(0))
    res = kmeans(pts, 8, metric, tol=0.0, max_iter=300, seed=0)
    assert res.iterations < 300
    if metric == "euclidean":
        dist = torch.cdist(pts.double(), res.centers.double()).pow(2)
    else:
        dist = 1 - F.normalize(pts.double(), dim=1) @ F.normalize(res.centers.double(), dim=1).T
    moved = int((dist.argmin(dim=1) != res.labels).sum())
    assert moved == 0, f"{moved} points are not in the cluster of their nearest centre"
    assert res.inertia == pytest.approx(float(dist.min(dim=1).values.sum()), rel=1e-4)
    for j in range(8):
        assert torch.allclose(res.centers[j], pts[res.labels == j].mean(0), atol=1e-5)


def test_inertia_reaches_that_of_a_plain_lloyd():
    pts = torch.randn(2000, 8, generator=torch.Generator().manual_seed(0))
    reference = min(_plain_lloyd_inertia(pts, 8, s) for s in range(3))
    res = kmeans(pts, 8, "euclidean", tol=0.0, max_iter=300, seed=0)
    # centres that never moved from the k-means++ start would leave it ~35 % higher
    assert res.inertia <= 1.03 * reference


def _unstructured(n=2000, dim=8):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(0))


def _separated(scale=1.0):
    """8 tight clusters, far apart: k-means++ starts with one point in each."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 16, generator=gen) * 10
    pts = torch.cat([c + 0.01 * torch.randn(50, 16, generator=gen) for c in centres])
    return pts * scale, torch.arange(8).repeat_interleave(50)


@pytest.mark.parametrize("scale", [1.0, 1e-4])
def test_kmeans_plus_plus_starts_in_every_cluster_at_any_scale(scale):
    """One start point per cluster, so the first assignment is final: the second pass
    changes nothing and stops. The D^2 sampling ignores the data's scale."""
    pts, truth = _separated(scale)
    for seed in range(3):
        res = kmeans(pts, 8, "euclidean", seed=seed)
        assert res.iterations == 2 and _same_partition(res.labels, truth), seed


@pytest.mark.parametrize("n_distinct", [2, 3])
def test_k_larger_than_the_distinct_points_reseeds_the_empty_clusters(n_distinct):
    """k-means++ runs out of distinct points and starts some centres on copies of others;
    those clusters are empty after the first assignment and each takes a point of its own
    (the point worst served, here any: all distances are 0). No NaN centre, no empty cluster."""
    base = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])[:n_distinct]
    pts = base.repeat_interleave(20, dim=0)
    for metric in ("euclidean", "cosine"):
        if metric == "cosine":
            pts = pts + torch.tensor([1.0, 1.0])  # no zero vector
        res = kmeans(pts, 4, metric, seed=0)
        assert torch.bincount(res.labels, minlength=4).min() >= 1 and torch.isfinite(res.centers).all()
        for j in range(4):
            assert torch.equal(res.centers[j], pts[res.labels == j].mean(0))
        assert res.inertia == pytest.approx(0.0, abs=1e-5)


def test_few_points_in_many_dimensions():
    """K = N (allowed): every point its own cluster, for any seed, with C > N."""
    pts = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    for seed in range(10):
        res = kmeans(pts, 5, "cosine", seed=seed)
        assert sorted(res.labels.tolist()) == [0, 1, 2, 3, 4]
        assert torch.allclose(res.centers[res.labels], pts) and res.inertia == pytest.approx(0.0, abs=1e-5)


def test_one_cluster_is_the_mean():
    pts = _unstructured(100, 3)
    res = kmeans(pts, 1, "euclidean")
    assert res.labels.tolist() == [0] * 100
    assert torch.allclose(res.centers[0], pts.mean(0), atol=1e-6)
    assert res.inertia == pytest.approx(float((pts - pts.mean(0)).pow(2).sum()), rel=1e-4)


def test_bad_metric_and_shape_are_clear_errors():
    with pytest.raises(KMeansError, match=r"metric must be 'cosine' or 'euclidean', got 'manhattan'"):
        kmeans(torch.randn(4, 3), 2, "manhattan")
    with pytest.raises(KMeansError, match=r"features must be N x C, got shape \(5,\)"):
        kmeans(torch.randn(5), 2)


def test_iteration_limits_and_tolerance():
    pts = _unstructured()
    assert kmeans(pts, 8, "euclidean", tol=0.0).iterations == 50  # the default max_iter; 63 to converge
    assert kmeans(pts, 8, "euclidean", max_iter=1).iterations == 1
    assert kmeans(pts, 8, "euclidean", max_iter=0).iterations == 0  # the k-means++ start, assigned once
    assert kmeans(pts, 8, "euclidean", tol=1.0).iterations == 1  # tol 1: every change is small enough
    assert kmeans(pts, 8, "euclidean", tol=0.5).iterations > 1


def test_default_tolerance_gets_close_to_convergence():
    pts = _unstructured()
    reference = min(_plain_lloyd_inertia(pts, 8, s) for s in range(3))
    assert kmeans(pts, 8, "euclidean").inertia <= 1.03 * reference


def test_only_the_seed_decides_not_the_global_rng():
    pts = _unstructured()
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        runs.append((kmeans(pts, 8, seed=3), kmeans(pts, 8, seed=3, fit_cap=500)))
    for a, b in zip(*runs):
        assert torch.equal(a.centers, b.centers)
    assert torch.equal(kmeans(pts, 8).centers, kmeans(pts, 8, seed=0).centers)  # the default seed is 0
    assert not torch.equal(kmeans(pts, 8, seed=0).centers, kmeans(pts, 8, seed=1).centers)


def test_a_cap_above_the_number_of_points_changes_nothing():
    pts = _unstructured(600)
    plain = kmeans(pts, 6, seed=4)
    for cap in (600, 1000):
        capped = kmeans(pts, 6, seed=4, fit_cap=cap)
        assert capped.fitted_on == 600 and torch.equal(capped.centers, plain.centers)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_everything_stays_on_the_features_device():
    pts = _unstructured().cuda()
    for metric in ("euclidean", "cosine"):
        for cap in (None, 500):
            res = kmeans(pts, 8, metric, fit_cap=cap)
            assert res.centers.device == pts.device and res.labels.device == pts.device
    dup = torch.tensor([[1.0, 1.0], [4.0, 1.0]]).repeat_interleave(20, dim=0).cuda()
    res = kmeans(dup, 4, "euclidean")  # two empty clusters reseeded on the device
    assert torch.bincount(res.labels, minlength=4).min() >= 1 and torch.isfinite(res.centers).all()


def test_reseeding_never_empties_a_lone_members_cluster():
    """An empty cluster takes the worst-served point of a cluster that keeps a member: here the
    worst-served point is alone in cluster 1, so moving it (the old rule) would leave cluster 1
    empty and its centre NaN."""
    from cam_core.kmeans import _means

    raw = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]])
    labels = torch.tensor([0, 0, 1])  # cluster 2 empty
    dist = torch.tensor([[0.0, 9.0, 9.0], [0.5, 9.0, 9.0], [9.0, 3.0, 9.0]])  # point 2 is the worst served
    centres, new = _means(raw, labels, dist, 3)
    assert torch.isfinite(centres).all()
    assert torch.bincount(new, minlength=3).tolist() == [1, 1, 1]
    assert new[2] == 1  # the lone member stays; point 1, the worst of cluster 0, moves
    assert new[1] == 2 and torch.allclose(centres[2], raw[1])
