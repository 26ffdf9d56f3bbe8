import numpy as np

from robofm.data.stats import BINS, RunningStats


def test_exact_moments_and_bounded_quantiles_over_streamed_chunks():
    rng = np.random.default_rng(0)
    # chunks with shifting ranges force the histogram to grow in both directions
    chunks = [rng.normal(loc=i * 3.0 - 10, scale=1 + i, size=(500, 3)) for i in range(8)]
    chunks.append(rng.standard_cauchy(size=(200, 3)))
    st = RunningStats()
    for c in chunks:
        st.update(c)
    allx = np.concatenate(chunks)
    r = st.result()
    np.testing.assert_allclose(r["mean"], allx.mean(0), rtol=1e-10)
    np.testing.assert_allclose(r["std"], allx.std(0), rtol=1e-10)
    np.testing.assert_array_equal(r["min"], allx.min(0))
    np.testing.assert_array_equal(r["max"], allx.max(0))
    bound = st.quantile_error_bound()
    assert (bound <= 2 * (allx.max(0) - allx.min(0)) / (BINS - 1)).all()
    for key, q in (("q01", 0.01), ("q99", 0.99)):
        err = np.abs(np.array(r[key]) - np.quantile(allx, q, axis=0))
        assert (err <= bound * (1 + 1e-6)).all(), (key, err, bound)


def test_constant_dimension_and_single_value():
    st = RunningStats()
    st.update(np.full((10, 2), 5.0))
    r = st.result()
    assert r["q01"] == [5.0, 5.0] and r["q99"] == [5.0, 5.0] and r["std"] == [0.0, 0.0]
    st.update(np.array([[6.0, 5.0]]))
    assert abs(st.result()["q99"][0] - np.quantile(np.r_[np.full(10, 5.0), 6.0], 0.99)) <= st.quantile_error_bound()[0]


def test_values_far_outside_the_grid_widen_it_instead_of_overflowing():
    """A later chunk 1e19 times wider than the first (a wrapped uint64 in a source) grows the bins, exactly."""
    rng = np.random.default_rng(1)
    chunks = [rng.normal(size=(100, 2)), np.full((50, 2), 1.8e19) - rng.uniform(0, 1e17, (50, 2))]
    st = RunningStats()
    for c in chunks:
        st.update(c)
    allx = np.concatenate(chunks)
    r = st.result()
    np.testing.assert_array_equal(r["max"], allx.max(0))
    err = np.abs(np.array(r["q99"]) - np.quantile(allx, 0.99, axis=0))
    assert (err <= st.quantile_error_bound() * (1 + 1e-6)).all()
