"""Every registered detector's numbers (two CPU training steps and a prediction) against tests/fingerprints.json: they
may change only with the run key (`emd.train.detector.run_code`). A change of numbers under an unchanged key means the
key misses code that computes them, and reruns would reuse stale results. See tests/fingerprints.py: the numbers are
computed in a separate process held to one CPU code path (AVX2), so that they do not depend on the machine."""
import pytest

import fingerprints as F
from emd.models.registry import list_models

RECORDED = F.recorded()
MODELS = list_models()


@pytest.fixture(scope='module')
def measured():
    return F.measure_isolated()


@pytest.fixture(scope='module')
def perturbed():
    return F.measure_isolated(perturb=True)


@pytest.mark.parametrize('name', MODELS)
def test_fingerprint(name, measured):
    problem = F.verdict(name, measured[name]['key'], measured[name]['values'], RECORDED.get(name))
    assert problem is None, problem


@pytest.mark.parametrize('name', MODELS)
def test_a_numeric_change_outside_the_key_is_caught(name, perturbed):
    """The same check after a change of numbers that no key can see (the crops' normalisation changed at run time, the
    package's files untouched): the numbers move, the key does not, and the check must say so."""
    problem = F.verdict(name, perturbed[name]['key'], perturbed[name]['values'], RECORDED.get(name))
    assert problem is not None and 'did not' in problem and 'Widen the key' in problem, (name, problem)
