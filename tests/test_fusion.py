"""Stage (ii) map fusion: batched Otsu vs skimage, binarisation, overlap resolution, 3D, one-hot."""
import numpy as np
import pytest
import torch
from skimage.filters import threshold_otsu

from nnunet_cps4.method.fusion import (
    binarize_maps,
    fuse_binary_maps,
    fuse_maps,
    labels_to_probabilities,
    otsu_threshold,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _bimodal_rows(rng, n_rows=8, n=2000):
    rows = []
    for _ in range(n_rows):
        k = int(n * rng.uniform(0.05, 0.6))
        lo = rng.normal(rng.uniform(0.0, 0.3), rng.uniform(0.02, 0.1), n - k)
        hi = rng.normal(rng.uniform(0.6, 0.9), rng.uniform(0.02, 0.1), k)
        rows.append(rng.permutation(np.concatenate([lo, hi])).astype(np.float32))
    return np.stack(rows)


def _blob_maps(shape, centres, radius, peak=0.9, seed=0):
    """(1, C, *shape) probability maps: one ball of `peak` per class on low noise, and the ball masks."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    maps, masks = [], []
    for c in centres:
        d2 = sum((gr - ci) ** 2 for gr, ci in zip(grids, c))
        ball = d2 <= radius**2
        noise = 0.05 + 0.05 * torch.rand(shape, generator=g)
        maps.append(torch.where(ball, peak - 0.05 * torch.rand(shape, generator=g), noise))
        masks.append(ball)
    return torch.stack(maps)[None], torch.stack(masks)[None]


# ------------------------------------------------------------------------------------------------------- Otsu
@pytest.mark.parametrize("device", DEVICES)
def test_otsu_matches_skimage_within_one_bin(device):
    rng = np.random.default_rng(0)
    x = _bimodal_rows(rng)
    ours = otsu_threshold(torch.from_numpy(x).to(device)).cpu().numpy()
    assert ours.shape == (x.shape[0],)
    for row, t in zip(x, ours):
        bin_width = (row.max() - row.min()) / 256
        assert abs(t - threshold_otsu(row)) <= bin_width
        assert t in row  # the largest value of the lower class
    # fewer bins: same agreement
    ours64 = otsu_threshold(torch.from_numpy(x).to(device), bins=64).cpu().numpy()
    for row, t in zip(x, ours64):
        assert abs(t - threshold_otsu(row, nbins=64)) <= (row.max() - row.min()) / 64


def test_otsu_constant_rows_and_bad_input():
    x = torch.tensor([[0.3, 0.3, 0.3], [0.0, 0.0, 1.0]])
    t = otsu_threshold(x)
    assert t[0].item() == pytest.approx(0.3) and not (x[0] > t[0]).any()
    # threshold = largest value of Otsu's lower class, so `x > t` is exactly the upper class
    assert t[1].item() == 0.0 and (x[1] > t[1]).tolist() == [False, False, True]
    with pytest.raises(ValueError):
        otsu_threshold(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError):
        otsu_threshold(x, bins=1)


# ------------------------------------------------------------------------------------------------ binarize
@pytest.mark.parametrize("device", DEVICES)
def test_binarize_otsu_recovers_blobs(device):
    scores, balls = _blob_maps((24, 24), [(6, 6), (16, 14)], radius=4)
    scores = torch.cat([scores, scores.flip(-1)]).to(device)  # B=2, different images
    balls = torch.cat([balls, balls.flip(-1)]).to(device)
    binary = binarize_maps(scores)
    assert binary.dtype == torch.bool and binary.shape == scores.shape
    assert torch.equal(binary, balls)
    binary_f = binarize_maps(scores, method="fixed", threshold=0.5)
    assert torch.equal(binary_f, balls)
    assert not binarize_maps(scores, method="fixed", threshold=0.95).any()


def test_binarize_min_peak_suppresses_structureless_maps():
    scores, balls = _blob_maps((16, 16), [(5, 5)], radius=3)
    noise = 0.1 + 0.2 * torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))  # max < 0.5
    scores = torch.cat([scores, noise], dim=1)
    binary = binarize_maps(scores)  # min_peak 0.5
    assert torch.equal(binary[:, 0], balls[:, 0]) and not binary[:, 1].any()
    assert binarize_maps(scores, min_peak=0.0)[:, 1].any()  # without the guard Otsu fires on noise
    assert not binarize_maps(scores, min_peak=0.95).any()
    # a constant map fires nowhere even without the guard
    assert not binarize_maps(torch.full((1, 1, 4, 4), 0.8), min_peak=0.0).any()


def test_binarize_returns_thresholds_and_rejects_bad_arguments():
    scores, _ = _blob_maps((12, 12), [(4, 4), (8, 8)], radius=2)
    binary, thr = binarize_maps(scores, return_thresholds=True)
    assert thr.shape == (1, 2) and torch.all((thr > 0.05) & (thr < 0.9))
    _, thr_f = binarize_maps(scores, method="fixed", threshold=0.3, return_thresholds=True)
    assert torch.allclose(thr_f, torch.full((1, 2), 0.3))
    with pytest.raises(ValueError, match="method"):
        binarize_maps(scores, method="kmeans")
    with pytest.raises(ValueError, match="shape"):
        binarize_maps(scores[0])
    with pytest.raises(ValueError, match="sigmoid"):
        binarize_maps(scores * 10 - 5)  # logits instead of probabilities


# ---------------------------------------------------------------------------------------------------- fusion
def test_overlap_goes_to_higher_normalised_score_not_raw_score():
    # pixel (0, 0) fires for both classes; raw score class 0 (0.6) > class 1 (0.55), but normalised:
    #   class 0: (0.6 - 0.5) / (0.99 - 0.5) = 0.204;  class 1: (0.55 - 0.2) / (0.6 - 0.2) = 0.875 -> label 2
    # pixel (0, 1) fires for both too: class 0 (0.99 - 0.5) / 0.49 = 1.0 > class 1 (0.25 - 0.2) / 0.4 -> label 1
    scores = torch.tensor([[[[0.6, 0.99], [0.1, 0.1]], [[0.55, 0.25], [0.6, 0.1]]]])
    thr = torch.tensor([[0.5, 0.2]])
    binary = scores > thr.view(1, 2, 1, 1)
    fused = fuse_binary_maps(scores, binary, thresholds=thr)
    assert fused.dtype == torch.int64 and fused.shape == (1, 2, 2)
    assert fused.tolist() == [[[2, 1], [2, 0]]]  # (1, 1): nothing fires -> background
    # without explicit thresholds the lowest firing score stands in: class 0 -> 0.6, class 1 -> 0.25
    #   pixel (0, 0): class 0 (0.6-0.6)/0.39 = 0 < class 1 (0.55-0.25)/0.35 -> label 2
    assert fuse_binary_maps(scores, binary).tolist() == [[[2, 1], [2, 0]]]


def test_fuse_maps_end_to_end_2d_overlap_and_background():
    scores, balls = _blob_maps((24, 24), [(8, 8), (8, 13)], radius=4)  # balls overlap in the middle
    scores[0, 0][balls[0, 0]] = 0.95  # class 0 peaks higher everywhere in its ball...
    scores[0, 1][balls[0, 1]] = 0.7
    overlap = balls[0, 0] & balls[0, 1]
    scores[0, 0][overlap] = 0.4  # ...but in the overlap it is weak for class 0 and strong for class 1
    fused = fuse_maps(scores)
    assert fused.shape == (1, 24, 24)
    assert torch.all(fused[0][overlap] == 2)
    assert torch.all(fused[0][balls[0, 0] & ~overlap] == 1)
    assert torch.all(fused[0][balls[0, 1] & ~balls[0, 0]] == 2)
    assert torch.all(fused[0][~(balls[0, 0] | balls[0, 1])] == 0)
    with pytest.raises(ValueError, match="shape"):
        fuse_binary_maps(scores, torch.zeros(1, 3, 24, 24, dtype=torch.bool))  # C mismatch


@pytest.mark.parametrize("device", DEVICES)
def test_fuse_maps_3d(device):
    scores, balls = _blob_maps((8, 12, 12), [(3, 3, 3), (5, 8, 8), (4, 6, 6)], radius=2)
    scores[0, 2] = 0.2  # class 2 absent: flat low map
    fused = fuse_maps(scores.to(device)).cpu()
    assert fused.shape == (1, 8, 12, 12)
    expected = torch.zeros(1, 8, 12, 12, dtype=torch.long)
    expected[balls[:, 0]] = 1
    expected[balls[:, 1]] = 2
    assert torch.equal(fused, expected)
    fixed = fuse_maps(scores.to(device), method="fixed", threshold=0.5).cpu()
    assert torch.equal(fixed, expected)


def test_no_fire_is_background():
    scores = torch.full((2, 3, 5, 5), 0.1)
    assert torch.equal(fuse_maps(scores), torch.zeros(2, 5, 5, dtype=torch.long))
    assert torch.equal(fuse_maps(scores, method="fixed"), torch.zeros(2, 5, 5, dtype=torch.long))


# --------------------------------------------------------------------------------------------------- one-hot
def test_labels_to_probabilities_one_hot_2d_3d():
    fused = torch.tensor([[[0, 2], [1, 0]]])
    p = labels_to_probabilities(fused, 3)
    assert p.shape == (1, 3, 2, 2) and p.dtype == torch.float32
    assert torch.equal(p.argmax(1), fused) and torch.all(p.sum(1) == 1)
    assert p[0, :, 0, 1].tolist() == [0.0, 0.0, 1.0]
    p3 = labels_to_probabilities(torch.randint(0, 4, (2, 3, 4, 5)), 4)
    assert p3.shape == (2, 4, 3, 4, 5)
    with pytest.raises(ValueError, match="num_classes_incl_bg"):
        labels_to_probabilities(fused, 2)  # label 2 needs 3 channels
    with pytest.raises(ValueError):
        labels_to_probabilities(fused.float(), 3)
