"""The vectorised torch SVM solves liblinear's problem; the protocol picks C on training data only."""
import numpy as np
import pytest
import torch

from c3dfeat.evaluate.linear import evaluate_split, linear_eval, normalize, select_C
from c3dfeat.evaluate.splits import Protocol, Split
from c3dfeat.evaluate.svm import LiblinearSVM, TorchLinearSVM, accuracy, svm_objective


def synthetic(n_train, n_test, dim, n_classes, seed=0, spread=2.0):
    """Post-ReLU-like, L2-normalised features with class structure and real overlap."""
    rng = np.random.default_rng(seed)
    mu = np.maximum(rng.standard_normal((n_classes, dim)), 0) * 0.6
    base = np.abs(rng.standard_normal(dim))

    def draw(n):
        y = rng.integers(0, n_classes, n)
        X = np.maximum(base + mu[y] + rng.standard_normal((n, dim)) * spread, 0)
        return normalize(X), y

    return (*draw(n_train), *draw(n_test))


@pytest.fixture(scope="module")
def data():
    return synthetic(1200, 1500, 200, 8)


@pytest.mark.parametrize("C", [0.1, 1.0, 10.0])
def test_torch_solver_matches_liblinear(data, C):
    Xtr, ytr, Xte, yte = data
    ref = LiblinearSVM(C=C).fit(Xtr, ytr)
    ours = TorchLinearSVM(C=C, dtype=torch.float64).fit(Xtr, ytr)
    acc_ref = 100 * accuracy(yte, ref.predict(Xte))[0]
    acc_ours = 100 * accuracy(yte, ours.predict(Xte))[0]
    assert 40 < acc_ref < 95  # a dataset where the comparison means something
    assert abs(acc_ours - acc_ref) <= 0.5
    # same problem, same optimum: objective values agree (ours may be slightly lower)
    f_ref, f_ours = ref.objective(Xtr, ytr), ours.objective(Xtr, ytr)
    assert f_ours.sum() <= f_ref.sum() * (1 + 1e-4)
    np.testing.assert_allclose(f_ours, f_ref, rtol=2e-3)
    # and the weights themselves are close
    rel = np.linalg.norm(ours.coef_ - ref.coef_) / np.linalg.norm(ref.coef_)
    assert rel < 0.02


def test_solution_satisfies_optimality_condition(data):
    """Gradient of liblinear's objective (bias as a penalised feature) vanishes at the solution."""
    Xtr, ytr = data[0], data[1]
    C = 1.0
    m = TorchLinearSVM(C=C, dtype=torch.float64, tol=1e-8, max_iter=100).fit(Xtr, ytr)
    Xb = np.hstack([Xtr, np.ones((len(Xtr), 1))])
    W = np.hstack([m.coef_, m.intercept_[:, None]])  # (K, d+1); bias feature = 1
    Y = np.where(ytr[:, None] == np.arange(W.shape[0])[None], 1.0, -1.0)
    slack = np.maximum(0, 1 - Y * (Xb @ W.T))
    grad = W - 2 * C * (Y * slack).T @ Xb
    g0 = np.linalg.norm(2 * C * Y.T @ Xb, axis=1)
    assert (np.linalg.norm(grad, axis=1) / g0).max() < 1e-6


def test_objective_formula_by_hand():
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = np.array([0, 1, 1])
    coef = np.array([[1.0, -1.0]])  # binary: one problem, class 1 positive
    intercept = np.array([0.5])
    # decision: 1.5, -0.5, 0.5 ; labels (+1 = class 1): -1, +1, +1 ; margins: -1.5, -0.5, 0.5
    # hinge^2: 2.5^2 + 1.5^2 + 0.5^2 = 8.75 ; 0.5*(1+1+0.25) = 1.125 ; C=2 → 1.125 + 17.5
    f = svm_objective(coef, intercept, X, y, C=2.0, bias=1.0, classes=np.array([0, 1]))
    assert f.tolist() == [pytest.approx(18.625)]


def test_binary_problem_matches_liblinear():
    Xtr, ytr, Xte, yte = synthetic(400, 400, 50, 2, seed=3)
    ref = LiblinearSVM(C=1.0).fit(Xtr, ytr)
    ours = TorchLinearSVM(C=1.0, dtype=torch.float64).fit(Xtr, ytr)
    assert ours.coef_.shape == ref.coef_.shape == (1, 50)
    assert (ours.predict(Xte) != ref.predict(Xte)).mean() < 0.01
    np.testing.assert_allclose(ours.objective(Xtr, ytr), ref.objective(Xtr, ytr), rtol=2e-3)


def test_warm_start_reaches_the_same_solution(data):
    Xtr, ytr = data[0], data[1]
    cold = TorchLinearSVM(C=10.0, dtype=torch.float64).fit(Xtr, ytr)
    prev = TorchLinearSVM(C=1.0, dtype=torch.float64).fit(Xtr, ytr)
    warm = TorchLinearSVM(C=10.0, dtype=torch.float64).fit(Xtr, ytr, warm_start=prev)
    np.testing.assert_allclose(warm.objective(Xtr, ytr), cold.objective(Xtr, ytr), rtol=1e-3)


def test_svm_cost_is_chosen_on_training_data_only(data):
    """Scrambling the TEST labels must not change the chosen C (nor the model)."""
    Xtr, ytr, Xte, yte = data
    X = np.vstack([Xtr, Xte])
    split = Split("s", np.arange(len(ytr)), np.arange(len(ytr), len(X)))
    y1 = np.concatenate([ytr, yte])
    y2 = np.concatenate([ytr, np.random.default_rng(1).permutation(yte)])
    r1 = evaluate_split(X, y1, split, Cs=(0.1, 1, 10))
    r2 = evaluate_split(X, y2, split, Cs=(0.1, 1, 10))
    assert r1.C == r2.C and r1.cv == r2.cv
    assert r1.top1 > r2.top1 + 20  # sanity: the scrambled test labels are really scrambled
    # select_C agrees with an explicit CV computed from the training rows alone
    C, scores = select_C(Xtr, ytr, (0.1, 1, 10), early_stop=False)
    assert C == min(c for c in scores if scores[c] >= max(scores.values()) - 0.1)


def test_linear_eval_reports_mean_and_std(data):
    Xtr, ytr, Xte, yte = data
    X = np.vstack([Xtr, Xte])
    y = np.concatenate([ytr, yte])
    n = len(ytr)
    p = Protocol([str(i) for i in range(8)], y,
                 [Split("a", np.arange(n), np.arange(n, len(y))),
                  Split("b", np.arange(n, len(y)), np.arange(n))], "test")
    r = linear_eval(X, p, C=1.0)
    tops = [s.top1 for s in r.splits]
    d = r.to_dict()
    assert d["mean_top1"] == pytest.approx(np.mean(tops)) and d["std_top1"] == pytest.approx(np.std(tops))
    assert [s["name"] for s in d["splits"]] == ["a", "b"]
    ref = LiblinearSVM(C=1.0).fit(Xtr, ytr)
    assert abs(r.splits[0].top1 - 100 * accuracy(yte, ref.predict(Xte))[0]) <= 0.5
    # mean class accuracy is the mean of the per-class recalls
    assert r.splits[0].mean_class != r.splits[0].top1 or len(set(np.bincount(yte))) == 1


def test_normalisations():
    X = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(normalize(X, "l2"), [[0.6, 0.8], [0, 0]])
    np.testing.assert_allclose(normalize(X, "none"), X)
    np.testing.assert_allclose(normalize(np.array([[9.0, -16.0]]), "power-l2"), [[0.6, -0.8]])


def test_svm_device_words_mean_what_they_mean_in_extraction(unusable_gpus):
    """"auto" on a GPU torch cannot use: the CPU, and the same warning as `extract`; "cuda": the same error."""
    from c3dfeat import C3DFeatWarning
    from c3dfeat.errors import ConfigError
    from c3dfeat.evaluate.svm import make_svm

    with pytest.warns(C3DFeatWarning, match=r"^this machine has 2 NVIDIA GPU\(s\) .*; running on the CPU"):
        assert make_svm("torch", device="auto").device == "cpu"
    with pytest.raises(ConfigError, match=r"^--device cuda: this machine has 2 NVIDIA GPU\(s\)"):
        make_svm("torch", device="cuda")
