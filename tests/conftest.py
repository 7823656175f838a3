"""Test-session settings, applied before any test module imports numpy."""
import os

# The agents' per-step products are tiny; on 2 cores OpenBLAS's extra thread spins and slows them
# several times (the scripts set the same).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402  (after the thread setting)
import pytest  # noqa: E402


def _assert_same(a, b, rtol=1e-6, atol=1e-7):
    """Equal observations/infos: dicts key by key, ints and bools exactly, floats to ``rtol``/``atol``
    (by default float32 rounding: batch sizes change BLAS's summation order in the smell's product)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key], rtol, atol)
    elif np.asarray(a).dtype.kind == "f":
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture
def assert_same():
    """The comparison of batched against single envs (see ``_assert_same``)."""
    return _assert_same
