"""Training runs as jobs of a real single-node SLURM (`emd.train.slurm`): `.ci/slurm-up` installs Debian's slurm-wlm and munge
when missing and starts them on localhost (CPU only, two slots). The fault suite's reference training run is submitted
again as a SLURM job, cancelled with `scancel` once it has a checkpoint, submitted again by `slurm_train_runs`, and must
give the same best weights and test predictions as the uninterrupted run; a run on a missing store must be reported as
failed with its log files, without stopping the other. Needs root on a fresh machine (apt-get): it runs when
EMD_SLURM=1 (.ci/run sets it):  EMD_SLURM=1 python -m pytest tests/test_slurm.py"""
import argparse
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import train_args
from faults import REPO, THREADS, assert_same_run, child_env, count, ok, run

pytestmark = pytest.mark.skipif(not os.environ.get('EMD_SLURM'),
                                reason='starts a local SLURM (root, apt-get): set EMD_SLURM=1 to run it')


@pytest.fixture(scope='module')
def slurm(root):
    d = root / 'slurm'
    t0 = time.time()
    r = subprocess.run([str(REPO / '.ci' / 'slurm-up'), str(d)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f".ci/slurm-up failed:\n{r.stderr[-3000:]}"
    old = os.environ.get('SLURM_CONF')
    os.environ['SLURM_CONF'] = r.stdout.strip().splitlines()[-1]
    count('slurm', seconds_start=round(time.time() - t0, 1))
    yield d
    subprocess.run([str(REPO / '.ci' / 'slurm-down'), str(d)])
    if old is None: os.environ.pop('SLURM_CONF', None)
    else: os.environ['SLURM_CONF'] = old


def _cancel_when_checkpointed(run: Path, name: str, log: list, timeout: float = 600):
    "scancel the job named `name` once `run` has a checkpoint (an epoch done, more to come)."
    t0 = time.time()
    while time.time() - t0 < timeout:
        if (run / 'checkpoint.pt').is_file() and not (run / 'summary.json').is_file():
            r = subprocess.run(['scancel', '--name', name], capture_output=True, text=True)
            log.append(dict(seconds=round(time.time() - t0, 1), rc=r.returncode, stderr=r.stderr.strip()))
            return
        time.sleep(.5)


def test_slurm_cancelled_run_resubmitted(root, ffpp_ref, train_ref, slurm, monkeypatch):
    from emd.reproduce.stages import _train_one
    from emd.train.slurm import SlurmOptions, job_name, slurm_train_runs
    from emd.train.detector import DetectorTrainConfig
    # the reference run's settings, parsed as `emd train detector` parses them; its thread settings, which the jobs inherit
    parser = argparse.ArgumentParser()
    DetectorTrainConfig.add_arguments(parser)
    cfg = DetectorTrainConfig.from_args(parser.parse_args([str(a) for a in train_args(ffpp_ref['path'], root / 'slurm-run')[2:]]))
    for k, v in child_env().items():
        if k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'PYTHONHASHSEED'): monkeypatch.setenv(k, v)
    bad = cfg.replace(out=root / 'slurm-bad', data=root / 'no-such-store')
    cancels = []
    watcher = threading.Thread(target=_cancel_when_checkpointed, args=(cfg.out, job_name(cfg), cancels), daemon=True)
    watcher.start()
    t0 = time.time()
    res = slurm_train_runs([cfg, bad], SlurmOptions(slurm / 'jobs', cpus_per_run=int(THREADS), hours=.5, poll=1), _train_one)
    count('slurm', seconds_runs=round(time.time() - t0, 1))
    watcher.join(1)
    assert cancels and cancels[0]['rc'] == 0, f"the run was not cancelled: {cancels}"
    r = res.set_index(res.out.map(lambda o: Path(o).name))
    assert r.loc['slurm-run', 'ok'] and r.loc['slurm-run', 'attempts'] == 2, r.to_dict('records')
    assert r.loc['slurm-run', 'state'] == 'COMPLETED'
    assert not r.loc['slurm-bad', 'ok'] and '_log.err' in r.loc['slurm-bad', 'error'], r.to_dict('records')
    assert Path(r.loc['slurm-bad', 'error'].split('logs: ')[1].split(', ')[1].rstrip(')')).is_file()
    count('slurm', kills=1, resumes=1)
    assert_same_run(cfg.out, train_ref['path'], 'the SLURM run cancelled and resubmitted', 'slurm')


def _cancel_running(name: str, started: Path, log: list, timeout: float = 900):
    "scancel the job named `name` once SLURM runs it and its run folder `started` exists (the run has begun)."
    t0 = time.time()
    while time.time() - t0 < timeout:
        r = subprocess.run(['squeue', '-h', '-t', 'R', '-n', name, '-o', '%i'], capture_output=True, text=True)
        if r.stdout.strip() and started.exists():
            time.sleep(1)                                                # into the run, before its end
            c = subprocess.run(['scancel', '--name', name], capture_output=True, text=True)
            log.append(dict(seconds=round(time.time() - t0, 1), job=r.stdout.strip(), rc=c.returncode, stderr=c.stderr.strip()))
            return
        time.sleep(.5)


def test_reproduce_tiny_on_slurm(root, slurm):
    """`emd reproduce --profile tiny --launcher slurm`, end to end: ESR-9, SimFER and the 13 detector runs are SLURM
    jobs; EMD's job is cancelled with `scancel` while it trains and must be submitted again; the tables and figures must
    equal those of the same reproduction on this machine with the same threads per run (`--jobs 1`: one run at a time
    with the process's 2 threads; on SLURM `--cpus-per-run 2`, so the two-slot node runs one job at a time)."""
    from faults import start
    args = lambda d: ['reproduce', '--profile', 'tiny', '--seed', 0, '--out', d / 'out', '--work', d / 'work']
    ref, got = root / 'slurm-rep-local', root / 'slurm-rep'
    (root / 'logs').mkdir(exist_ok=True)
    t0 = time.time()
    ok(run(args(ref) + ['--jobs', 1], timeout=1800), 'the local tiny reproduction (--jobs 1)')
    count('slurm', seconds_reproduce_local=round(time.time() - t0, 1))
    cancels, name = [], 'emd-emd-pooled'
    watcher = threading.Thread(target=_cancel_running, args=(name, got / 'work' / 'runs' / 'emd' / 'pooled' / 'config.json',
                                                              cancels), daemon=True)
    watcher.start()
    t0 = time.time()
    p = start(args(got) + ['--launcher', 'slurm', '--gpus-per-run', 0, '--cpus-per-run', 2, '--time', .5],
              root / 'logs' / 'reproduce-slurm.log')
    rc = p.wait(timeout=1800)
    count('slurm', seconds_reproduce_slurm=round(time.time() - t0, 1))
    watcher.join(1)
    assert rc == 0, f"emd reproduce --launcher slurm exited {rc}: {(root / 'logs' / 'reproduce-slurm.log').read_text()[-3000:]}"
    assert cancels and cancels[0]['rc'] == 0, f"{name} was not cancelled: {cancels}"
    # every training run went through SLURM, EMD's twice (cancelled, then completed); squeue keeps ended jobs 10 min
    q = subprocess.run(['squeue', '-h', '--states=all', '-o', '%j %T'], capture_output=True, text=True, check=True).stdout
    jobs = [l.split() for l in q.splitlines() if l.strip()]
    runs = sorted(f"emd-{m.parent.name}-{m.name}" for m in (got / 'work' / 'runs').glob('*/*') if m.is_dir())
    want = ['emd-esr-esr9', 'emd-simfer-simfer'] + runs
    assert len(runs) == 13 and set(want) <= {j for j, _ in jobs}, f"jobs {jobs}, runs {want}"
    test_states = sorted(s for j, s in jobs if j == name)
    assert test_states == ['CANCELLED', 'COMPLETED'], f"{name}: {test_states}"
    assert 'submitted again' in (got / 'work' / 'executed' / '02_detectors.ipynb').read_text()
    count('slurm', jobs=len(want) + 1, kills=1, resumes=1)
    ok(run(['reproduce', '--check', got / 'out']), 'emd reproduce --check after the SLURM reproduction')
    r = run(['reproduce', '--check', got / 'out', '--same-as', ref / 'out'])
    assert r.returncode == 0, f"the SLURM reproduction differs from the local one: {r.stdout[-3000:]}{r.stderr[-3000:]}"
    count('slurm', comparisons=1)
