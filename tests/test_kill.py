"""`kill -9` at seeded random moments, then the same command again: the result equals an uninterrupted run's.

For each command: one uninterrupted run (the reference, timed), one rerun of the finished command (the time a rerun
needs to start and skip what is done), then one interrupted sequence in a fresh output (kill, rerun, kill, ... then a
final rerun to completion; `faults.killed_sequence`) and one comparison (one more for each attempt that completed
before its kill moment, which a slower or faster machine can cause: the sequence then goes on in a fresh output). Every run has the same options (seed,
workers, OMP/MKL threads: `faults.child_env`)."""
import random
import time
from pathlib import Path

from conftest import AFFECTNET, FFPP, N_EPOCHS, train_args
from faults import KILLS, SEED, assert_same_run, assert_same_store, count, killed_sequence, ok, run, timed


def markers(store: Path) -> int:
    "Completion markers of a frame store (one per video or chunk; temporary files of atomic_write excluded)."
    d = Path(store) / '.state'
    return len([p for p in d.glob('*.json') if not p.name.startswith('.')]) if d.is_dir() else 0


def test_prepare_ffpp_killed(root, synth, ffpp_ref):
    cmd = 'prepare ffpp'
    total = markers(ffpp_ref['path'])
    assert total > 50, f"the reference store has only {total} markers"
    killed_sequence(cmd, lambda r: root / f'ffpp-killed-{r}',
                    lambda out, i: ['prepare', 'ffpp', '--root', synth, '--out', out, *FFPP],
                    lambda out: markers(out) / total,
                    lambda out, log: assert_same_store(out, ffpp_ref['path'], f"{cmd} after the kills {log}", cmd),
                    KILLS, ffpp_ref['seconds'], ffpp_ref['startup'], random.Random(SEED), root / 'logs' / 'ffpp')


def test_prepare_affectnet_killed(root, synth):
    cmd, ref = 'prepare affectnet', root / 'affectnet-ref'
    args = lambda o, i=0: ['prepare', 'affectnet', '--root', synth, '--out', o, *AFFECTNET]
    _, dt = timed(cmd, args(ref))
    t0 = time.time(); ok(run(args(ref)), f'{cmd}, rerun of a finished store'); startup = time.time() - t0
    count(cmd, seconds_rerun_finished=startup)
    total = markers(ref)
    assert total >= 8, f"the reference store has only {total} markers (chunks)"
    killed_sequence(cmd, lambda r: root / f'affectnet-killed-{r}', args, lambda out: markers(out) / total,
                    lambda out, log: assert_same_store(out, ref, f"{cmd} after the kills {log}", cmd),
                    KILLS, dt, startup, random.Random(SEED + 1), root / 'logs' / 'affectnet')


def epochs_done(run_dir: Path, total: int) -> float:
    "Fraction of the epochs in the run's checkpoint (log.csv is rewritten whole with each checkpoint)."
    log = Path(run_dir) / 'log.csv'
    if not log.is_file(): return 0.
    return min(1., (len(log.read_text().strip().splitlines()) - 1) / total)


def test_train_detector_killed(root, ffpp_ref, train_ref):
    cmd = 'train detector'

    def args(out, i):   # how a user continues an interrupted run: --resume once it has a checkpoint, else start over
        return [*train_args(ffpp_ref['path'], out), '--resume' if (out / 'checkpoint.pt').is_file() else '--force']
    killed_sequence(cmd, lambda r: root / f'run-killed-{r}', args, lambda out: epochs_done(out, N_EPOCHS),
                    lambda out, log: assert_same_run(out, train_ref['path'], f"{cmd} after the kills {log}", cmd),
                    KILLS, train_ref['seconds'], train_ref['startup'], random.Random(SEED + 2), root / 'logs' / 'train')
