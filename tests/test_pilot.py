"""What CI's pilot (`emd reproduce --profile pilot`, .ci/run) must have done: every run of the paper plan executed on
SynthForensics given as the user's FF++ and AffectNet, each with its pilot's settings, and each measured; outputs
that say PILOT and SYNTHETIC; paper-plan.md with the rates of the machine it ran on. EMD_PILOT names the folder .ci/run
ran it in (data/, out/, work/); without it the test is skipped."""
import json
import os
from pathlib import Path

import pytest

PILOT = os.environ.get('EMD_PILOT')
pytestmark = pytest.mark.skipif(not PILOT, reason='EMD_PILOT: the folder of .ci/run\'s pilot (run .ci/run)')


@pytest.fixture(scope='module')
def pilot():
    from emd.reproduce.plans import ReproduceConfig
    d = Path(PILOT)
    m = json.loads((d / 'out' / 'manifest.json').read_text())
    p = m['parameters']
    return d, m, ReproduceConfig(profile='pilot', ffpp=p['ffpp'], affectnet=p['affectnet'], esr_weights=p['esr_weights'],
                                 encoder_weights=p['encoder_weights'], xception_weights=p['xception_weights'],
                                 out=d / 'out', work=d / 'work', device=p['device'], seed=p['seed'])


def test_every_run_of_the_paper_plan_executed(pilot):
    from emd.reproduce.plans import SIZE_FIELDS, detector_runs, fer_config
    from emd.core.runs import Run
    d, m, cfg = pilot
    runs = detector_runs(cfg)
    assert len(runs) == 77                                  # 62 cells of Tables II-V and 15 runs of Fig. 6
    for c in runs + [fer_config(cfg, 'simfer')]:            # ESR-9: the published files (--esr-weights), not trained
        r = Run(c.out)
        assert r.finished(c), f'{c.out} did not finish'
        saved = r.summary()['config']
        assert {k: saved[k] for k in SIZE_FIELDS if k in saved} == {k: getattr(c, k) for k in SIZE_FIELDS if hasattr(c, k)}
    assert not fer_config(cfg, 'esr').out.joinpath('summary.json').exists()
    assert m['pilot'] and m['synthetic'] and m['stages']['detectors']['status'] == 'done'


def test_weights_went_through_their_loaders(pilot):
    from emd.reproduce.plans import detector_runs
    d, m, cfg = pilot
    for c in detector_runs(cfg):
        if c.model in ('emd', 'xception_seg', 'xception_simfer'): assert c.encoder_weights == cfg.encoder_weights
        if c.model == 'xception': assert c.encoder_weights == cfg.xception_weights
        if c.model in ('emd', 'multitask_ensfer'): assert c.fer == cfg.esr_weights


def test_outputs_say_pilot_and_measure_the_cost(pilot):
    d, m, cfg = pilot
    out = d / 'out'
    for f in ('reproduction.md', 'table1.md', 'table2.md', 'table5.md'):
        text = (out / f).read_text()
        assert 'PILOT' in text and 'SYNTHETIC' in text, f
    rates = json.loads((out / 'pilot-rates.json').read_text())
    assert len(rates) == 79                                 # the paper plan's 79 runs (2 FERs), in its order
    trained = [r for r in rates if r['model'] != 'ESR-9']
    assert all(r['measured'] and r['hours'] and r['hours'] > 0 for r in trained), [r for r in trained if not r['hours']]
    assert all(r['measured']['device'] == 'cpu' and r['measured']['batch'] == 2 for r in trained)
    plan = (out / 'paper-plan.md').read_text()
    assert 'CPU-hours on this machine' in plan and 'for 78 of the 78 training runs' in plan and 'bench-cuda.json' in plan
