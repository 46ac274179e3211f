"""The feature-space embedding: PCA and t-SNE on constructed clouds with known structure."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cam_core import Cancelled, Explainer
from cam_core.featurespace import (CENTRE, PIXEL, SIPE_PROTO, PointCloud, base_cloud, embed, prototype_cloud,
                                   similarity_map)


def two_clusters(n=60, dim=16, seed=0):
    """Two tight clusters around orthogonal directions (cosine metric tells them apart)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.zeros(dim)
    a[0] = 1
    b = torch.zeros(dim)
    b[1] = 1
    pts = torch.cat([a + 0.05 * torch.randn(n, dim, generator=g), b + 0.05 * torch.randn(n, dim, generator=g)])
    labels = ["a"] * n + ["b"] * n
    cloud = PointCloud(F.normalize(pts, dim=1), [PIXEL] * (2 * n), labels, np.zeros(2 * n, int),
                       np.zeros(2 * n, int), (1, 2 * n))
    return cloud, np.array([0] * n + [1] * n), a, b


def separation(coords, groups):
    """Smallest distance between the groups over the largest spread within one."""
    ca, cb = coords[groups == 0], coords[groups == 1]
    between = np.min(np.linalg.norm(ca[:, None] - cb[None], axis=2))
    within = max(np.ptp(ca, axis=0).max(), np.ptp(cb, axis=0).max())
    return between / within


def test_pca_is_the_top_two_principal_axes_and_places_base_points_where_they_are():
    cloud, groups, a, b = two_clusters()
    emb = embed(cloud, "pca")
    x = cloud.vectors.numpy().astype(np.float64)
    # The first axis carries the a-versus-b split: the groups fall on opposite sides of 0.
    assert np.sign(emb.coords[groups == 0, 0]).std() == 0
    assert np.sign(emb.coords[groups == 0, 0][0]) != np.sign(emb.coords[groups == 1, 0][0])
    centred = x - x.mean(0)
    var = np.var(centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T, axis=0)
    np.testing.assert_allclose(np.var(emb.coords, axis=0), var, rtol=1e-6)
    np.testing.assert_allclose(emb.place(cloud.vectors), emb.coords, atol=1e-5)


def test_tsne_separates_clusters_and_places_new_points_near_their_cluster():
    cloud, groups, a, b = two_clusters()
    ticks = []
    emb = embed(cloud, "tsne", perplexity=10, progress=ticks.append)
    assert emb.coords.shape == (len(cloud), 2)
    assert separation(emb.coords, groups) > 0.2
    assert ticks and ticks[-1] == pytest.approx(1.0) and ticks == sorted(ticks)
    fit_ticks = len(ticks)
    new = emb.place(F.normalize(torch.stack([a, b]), dim=1))
    # Placing runs no callback of the finished fit (issue 9 item 4: the page's bar came back at 100%).
    assert len(ticks) == fit_ticks
    centre_a, centre_b = emb.coords[groups == 0].mean(0), emb.coords[groups == 1].mean(0)
    assert np.linalg.norm(new[0] - centre_a) < np.linalg.norm(new[0] - centre_b)
    assert np.linalg.norm(new[1] - centre_b) < np.linalg.norm(new[1] - centre_a)


def test_tsne_is_seeded_and_cancellable():
    cloud, *_ = two_clusters(n=30)
    one = embed(cloud, "tsne", perplexity=5, seed=3).coords
    two = embed(cloud, "tsne", perplexity=5, seed=3).coords
    np.testing.assert_allclose(one, two)
    with pytest.raises(Cancelled):
        embed(cloud, "tsne", perplexity=5, cancel=lambda: True)
    with pytest.raises(ValueError, match="at least 5"):
        embed(PointCloud(cloud.vectors[:3], [PIXEL] * 3, ["x"] * 3, np.zeros(3, int), np.zeros(3, int), (1, 3)),
              "tsne")


def test_similarity_map_is_the_cosine_of_each_pixel():
    feats = torch.zeros(3, 2, 2)
    feats[0, 0, 0] = 2  # along the vector
    feats[1, 0, 1] = 1  # orthogonal
    feats[0, 1, 0], feats[1, 1, 0] = 1, 1  # 45 degrees
    feats[0, 1, 1] = -3  # opposite
    sim = similarity_map(torch.tensor([5.0, 0, 0]), feats)
    np.testing.assert_allclose(sim.numpy(), [[1, 0], [2 ** -0.5, -1]], atol=1e-6)


def test_base_cloud_holds_the_image_pixels_and_the_classifier_rows(lite0, cat):
    fwd = Explainer(lite0).forward(cat)
    cloud = base_cloud(fwd, [281, 285], cap=30)
    c, h, w = fwd.head_features.shape
    pixels = cloud.indices(PIXEL)
    assert len(pixels) == 30 and len(cloud.indices(CENTRE)) == 2
    # each pixel point is the normalised head feature at its (row, col)
    i = pixels[7]
    expected = F.normalize(fwd.head_features[:, cloud.rows[i], cloud.cols[i]].float().cpu(), dim=0)
    torch.testing.assert_close(cloud.vectors[i], expected)
    torch.testing.assert_close(cloud.vectors[-1], F.normalize(lite0.linear_weight[285].float().cpu(), dim=0))


def test_spread_labels_leaves_no_two_boxes_overlapping():
    from cam_core.featurespace import spread_labels

    # Four centres almost on one spot (tiger cat, tabby, Egyptian cat, lynx), one far away.
    points = np.array([[100.0, 50.0], [102.0, 52.0], [99.0, 49.0], [101.0, 55.0], [400.0, 50.0]])
    widths = np.array([90.0, 60.0, 100.0, 40.0, 80.0])
    pos = spread_labels(points, widths, height=16.0, dx=10.0)
    np.testing.assert_allclose(pos[:, 0], points[:, 0] + 10.0)  # each box beside its own point
    assert (pos[:, 1] >= points[:, 1]).all()  # moved up only
    for i in range(len(pos)):
        for j in range(i):
            apart_x = pos[i, 0] >= pos[j, 0] + widths[j] or pos[j, 0] >= pos[i, 0] + widths[i]
            apart_y = abs(pos[i, 1] - pos[j, 1]) >= 16.0 - 1e-9
            assert apart_x or apart_y, (i, j)
    assert pos[4, 1] == 50.0  # a label with room stays at its point's height
    assert np.ptp(pos[:4, 1]) == pytest.approx(3 * 16.0)  # the four stack, one line apart


def test_sipe_prototypes_are_named_by_class(lite0, cat):
    ex = Explainer(lite0)
    sipe = ex.compute(cat, "sipe", 281, params={"classes": 2, "multiscale": False})
    protos = prototype_cloud(sipe=sipe, fwd=ex.forward(cat))
    named = [label for label, kind in zip(protos.labels, protos.kinds) if kind == SIPE_PROTO]
    assert named[0] == "SIPE: background"
    assert "SIPE: tabby" in named and not any(label[6:].isdigit() for label in named)
