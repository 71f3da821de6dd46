"""Sub-center clean-up math on hand-built cases."""

import numpy as np

from gld_jax.train.label_noise import angles_to_dominant, dominant_subcenters


def test_dominant_subcenter_is_the_majority_vote_and_outliers_are_far():
    # class 0 centres: e0, e1, -e0 ; class 1 centres: e2, e3, e1
    e = np.eye(4)
    centers = np.stack([np.stack([e[0], e[1], -e[0]]), np.stack([e[2], e[3], e[1]])])
    # three images of class 0 near e0 (dominant k=0), one near e1 (k=1, 90 deg from e0)
    emb = np.stack([e[0], e[0] + 0.1 * e[2], e[0] - 0.1 * e[3], e[1], e[3], e[3] + 0.2 * e[2]])
    labels = np.array([0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(dominant_subcenters(emb, centers, labels), [0, 1])
    angles = angles_to_dominant(emb, centers, labels)
    # by hand: atan(0.1) = 5.71 deg; the e1 image is 90 deg from e0; class 1's
    # dominant centre is e3: the image e3 + 0.2 e2 is atan(0.2) = 11.31 deg away
    np.testing.assert_allclose(angles, [0.0, 5.7106, 5.7106, 90.0, 0.0, 11.3099], atol=1e-3)
    assert list(angles > 75) == [False, False, False, True, False, False]


def test_min_per_class_keeps_each_class_closest_images():
    from gld_jax.train.label_noise import select_noisy

    angles = np.array([80.0, 90.0, 10.0, 85.0, 76.0, 30.0])
    labels = np.array([7, 7, 3, 9, 9, 3])
    # the paper's rule: everything above 75 degrees, which empties classes 7 and 9
    assert select_noisy(angles, labels, 75.0).tolist() == [True, True, False, True, True, False]
    # keep each class's closest image: 80 (class 7) and 76 (class 9) stay
    kept1 = select_noisy(angles, labels, 75.0, min_per_class=1)
    assert kept1.tolist() == [False, True, False, True, False, False]
    assert not select_noisy(angles, labels, 75.0, min_per_class=2).any()
