"""Fixtures of the fault-injection suite: one small SynthForensics and its uninterrupted preparations, made once per
session in a temporary folder; and the summary of what the suite did (kills, resumes, comparisons, seconds per
command), printed at the end and written to JSON (EMD_FAULTS_SUMMARY, default $TMPDIR/emd-faults-summary.json)."""
import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

import faults
from faults import count, run, ok, timed

# SynthForensics as small as the tiny reproduction's (emd/plans.py, PLANS['tiny'].synth), a few more frames and faces
SYNTH = ['--videos', 12, '--frames', 16, '--frames-jitter', 0, '--affectnet-train', 120, '--affectnet-val', 16,
         '--seed', 0, '--workers', 2]
FFPP = ['--frames-train', 12, '--frames-eval', 4, '--size', 128, '--workers', 2]
AFFECTNET = ['--chunk', 40, '--workers', 2]     # small chunks: many completion markers to be killed between
_T0 = time.time()


@pytest.fixture(scope='session')
def root():
    "The session's folder, readable by everyone (the read-only test runs a child as nobody, who must read the inputs)."
    d = Path(tempfile.mkdtemp(prefix='emd-faults-'))
    d.chmod(0o755)
    yield d
    if not os.environ.get('EMD_FAULTS_KEEP'): shutil.rmtree(d, ignore_errors=True)


def readable(folder: Path):
    "Make everything under `folder` readable by every user (atomic_write's temporary files are created 0600)."
    for p in [folder, *folder.rglob('*')]:
        m = p.stat().st_mode
        p.chmod(m | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH | (0o111 if p.is_dir() else 0))


@pytest.fixture(scope='session')
def synth(root):
    out = root / 'synth'
    r, dt = timed('synth', ['synth', '--out', out, *SYNTH])
    readable(out)
    return out


@pytest.fixture(scope='session')
def ffpp_ref(root, synth):
    "The uninterrupted `emd prepare ffpp` (the reference of the kill test, the data of the training tests)."
    out = root / 'ffpp-ref'
    r, dt = timed('prepare ffpp', ['prepare', 'ffpp', '--root', synth, '--out', out, *FFPP])
    t0 = time.time()
    ok(run(['prepare', 'ffpp', '--root', synth, '--out', out, *FFPP]), 'prepare ffpp, rerun of a finished store')
    startup = time.time() - t0
    count('prepare ffpp', seconds_rerun_finished=startup)
    readable(out)
    return dict(path=out, seconds=dt, startup=startup)


# a detector with a segmentation head (its test masks are compared too), two phases, small enough for 2 CPU cores
TRAIN = ['--profile', 'smoke', '--model', 'multitask', '--methods', 'Face2Face', '--compression', 'c23',
         '--epochs-phase1', 1, '--epochs', 9, '--size', 64, '--input-size', 64, '--workers', 0,
         '--seed', 0]
N_EPOCHS = 10


def train_args(data, out) -> list: return ['train', 'detector', '--data', data, '--out', out, *TRAIN]


@pytest.fixture(scope='session')
def train_ref(root, ffpp_ref):
    "The uninterrupted `emd train detector`, and the time of a rerun of it with --resume (as for an interrupted run)."
    out = root / 'run-ref'
    _, dt = timed('train detector', train_args(ffpp_ref['path'], out))
    t0 = time.time()
    ok(run([*train_args(ffpp_ref['path'], out), '--resume']), 'train detector --resume of a finished run')
    startup = time.time() - t0
    count('train detector', seconds_rerun_finished=startup)
    return dict(path=out, seconds=dt, startup=startup)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not faults.COUNTS: return
    tr = terminalreporter
    total = time.time() - _T0
    tr.section('fault injection: what the suite did')
    summary = {}
    for cmd, c in faults.COUNTS.items():
        summary[cmd] = {k: (round(v, 1) if not float(v).is_integer() else int(v)) for k, v in c.items()}
        tr.write_line(f'{cmd:28s} ' + ', '.join(f'{k} {v}' for k, v in summary[cmd].items()))
    tr.write_line(f'total: {total:.0f} s; seed {faults.SEED}')
    out = Path(os.environ.get('EMD_FAULTS_SUMMARY', Path(tempfile.gettempdir()) / 'emd-faults-summary.json'))
    out.write_text(json.dumps(dict(seed=faults.SEED, seconds=round(total, 1), commands=summary, sequences=faults.SEQUENCES), indent=1))
    tr.write_line(f'written to {out}')
