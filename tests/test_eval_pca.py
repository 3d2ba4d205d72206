"""PCA sweep: fitted on the training part only; reduced features in the store schema; plots."""
import numpy as np
import pytest

from c3dfeat.evaluate import pca as pca_mod
from c3dfeat.evaluate.linear import normalize
from c3dfeat.evaluate.pca import fit_pca, pca_sweep, reduce_features
from c3dfeat.evaluate.splits import Protocol, Split


def leaky_world(seed=0):
    """Train rows vary in dims 0-3; the TEST rows also carry a huge component along dim 7.

    A PCA fitted on train+test would put dim 7 first; fitted on train alone it is absent.
    """
    rng = np.random.default_rng(seed)
    n_tr, n_te, d = 80, 40, 8
    y = np.concatenate([np.arange(n_tr) % 2, np.arange(n_te) % 2])
    X = np.zeros((n_tr + n_te, d))
    X[:, :4] = rng.standard_normal((n_tr + n_te, 4)) * [3, 2, 1.5, 1]
    X[:, 0] += np.where(y == 1, 4.0, -4.0) + 10  # class signal on dim 0, positive offset
    X[:, 4:7] = rng.standard_normal((n_tr + n_te, 3)) * 0.01
    X[n_tr:, 7] = rng.choice([-1, 1], n_te) * 30.0
    split = Split("s", np.arange(n_tr), np.arange(n_tr, n_tr + n_te))
    return X, y, Protocol(["a", "b"], y, [split], "test")


def test_pca_is_fitted_on_training_rows_only():
    X, y, p = leaky_world()
    sweep = pca_sweep(X, p, [2, 3], norm="none", C=1.0)
    pca = sweep.pcas["s"]
    tr = p.splits[0].train
    # the fitted mean is the TRAINING mean, not the mean of all rows
    np.testing.assert_allclose(pca.mean, X[tr].mean(0), atol=1e-4)
    assert not np.allclose(pca.mean, X.mean(0), atol=1e-2)
    # the test-only direction (dim 7) is absent from the components...
    assert np.abs(pca.components[:, 7]).max() < 1e-3
    # ...whereas a train+test fit would make it the first component: the test would fail then
    leaky = fit_pca(X, 3)
    assert abs(leaky.components[0, 7]) > 0.99
    # explained variance is the training part's
    ref = fit_pca(X[tr], 3)
    np.testing.assert_allclose(pca.explained_variance_ratio, ref.explained_variance_ratio, rtol=1e-4)
    assert sweep.rows[0].explained_variance == pytest.approx(100 * ref.explained_variance_ratio[:2].sum(), rel=1e-4)


def test_pca_fit_sees_only_training_rows(monkeypatch):
    """Spy on the fit: the rows handed to the PCA are exactly the training rows of each split."""
    X, y, p = leaky_world()
    p.splits.append(Split("t", p.splits[0].test, p.splits[0].train))
    seen = []
    real = pca_mod.fit_pca

    def spy(Xfit, k, seed=0):
        seen.append(np.array(Xfit))
        return real(Xfit, k, seed)

    monkeypatch.setattr(pca_mod, "fit_pca", spy)
    pca_sweep(X, p, [2], norm="l2", C=1.0)
    Xn = normalize(X, "l2")
    assert len(seen) == 2
    for s, got in zip(p.splits, seen):
        np.testing.assert_array_equal(got, Xn[s.train])


def test_sweep_accuracy_grows_with_dims_on_structured_data():
    rng = np.random.default_rng(0)
    K, d, n = 6, 64, 360
    y = np.arange(n) % K
    mu = rng.standard_normal((K, d)) * 0.5
    X = mu[y] + rng.standard_normal((n, d))
    p = Protocol([str(k) for k in range(K)], y, [Split("s", np.arange(240), np.arange(240, n))], "t")
    sweep = pca_sweep(X, p, [1, 32], C=1.0)
    acc = {r.dims: r.result.mean_top1 for r in sweep.rows}
    ev = {r.dims: r.explained_variance for r in sweep.rows}
    assert acc[32] > acc[1] + 20 and acc[32] > 70
    assert 0 < ev[1] < ev[32] < 100


def test_reduced_features_round_trip_through_the_store(tmp_path):
    from c3dfeat.evaluate.api import LabelSource, SVMOptions, evaluate_features, pca_features
    from c3dfeat.store import FeatureFile, write_matrices

    rng = np.random.default_rng(0)
    ids = [f"{c}/v{i}.avi" for c in ("a", "b", "c") for i in range(10)]
    y = np.repeat(np.arange(3), 10)
    X = np.maximum(rng.standard_normal((3, 40))[y] * 2 + rng.standard_normal((30, 40)), 0)
    src = write_matrices(tmp_path / "f.h5", ids, {"c3d": {"fc6": X}}, {"kind": "test"})
    out = tmp_path / "r.h5"
    run = pca_features(str(src), [4, 8], labels=LabelSource(folds=2), svm=SVMOptions(C=1.0),
                       out=str(out), plot=str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000
    with FeatureFile(out) as ff:
        assert ff.layers("c3d") == ["fc6_pca4", "fc6_pca8"]
        rid, R = ff.video_matrix("c3d", "fc6_pca8")
        assert rid == ids and R.shape == (30, 8)
        assert ff.provenance["pca"]["fitted_on"].endswith("fold1 train")
        assert list(ff.videos()["label"]) == [c for c in ("a", "b", "c") for _ in range(10)]
    # the reduced features equal the PCA fitted on fold 1's training rows, applied to all rows
    _, ref = reduce_features(X, run.protocol.splits[0].train, [8])
    np.testing.assert_allclose(R, ref[8], rtol=1e-4, atol=1e-5)
    # and every other command reads them
    r = evaluate_features(str(out), layer="fc6_pca8", labels=LabelSource(folds=2), svm=SVMOptions(C=1.0))
    assert r.result.mean_top1 > 80
