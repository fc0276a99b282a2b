"""Every registered detector's numbers (two CPU training steps and a prediction) against tests/fingerprints.json: they
may change only with the run key (`emd.train.detector.run_code`). A change of numbers under an unchanged key means the
key misses code that computes them, and reruns would reuse stale results. See tests/fingerprints.py."""
from unittest import mock

import pytest

import fingerprints as F
from emd.models.registry import list_models
from emd.train.detector import run_code

RECORDED = F.recorded()


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return F.tiny_store(tmp_path_factory.mktemp('fingerprints'))


@pytest.mark.parametrize('name', list_models())
def test_fingerprint(name, tiny, tmp_path):
    key, values = run_code(name), F.fingerprint(name, tiny, tmp_path / 'run')
    problem = F.verdict(name, key, values, RECORDED.get(name))
    assert problem is None, problem


@pytest.mark.parametrize('name', list_models())
def test_a_numeric_change_outside_the_key_is_caught(name, tiny, tmp_path):
    """The same check after a change of numbers that no key can see (the crops' normalisation patched at run time, the
    package's files untouched; a non-linear change, which no model's first layer or batch norm can undo): the numbers
    move, the key does not, and the check must say so."""
    import emd.data.datasets as D
    real = D.normalize
    with mock.patch.object(D, 'normalize', lambda x: real(x).sign() * real(x).abs().sqrt()):
        values = F.fingerprint(name, tiny, tmp_path / 'run')
    problem = F.verdict(name, run_code(name), values, RECORDED.get(name))
    assert problem is not None and 'did not' in problem and 'Widen the key' in problem, (name, problem)
