"""`emd reproduce --profile tiny` killed (`kill -9`, the whole tree: papermill's Jupyter kernels run in sessions of
their own) while given stages run, then run again: its table CSVs equal those of an uninterrupted reproduction.

The stage that runs is read from the work folder's stage state (`paths(cfg)['stages']`, WORK/stages.json: each stage's
key, status 'running'/'done'/'failed' and start time); each kill waits until its target stage has started, then a
seeded random fraction of the time that stage took in the uninterrupted run.

The uninterrupted reference is made here, or taken from EMD_TINY_REFERENCE: a folder holding `work/` and `out/` of a
finished `emd reproduce --profile tiny --seed 0` run under the suite's thread settings (`.ci/run` makes one for its
reduced reproduction and hands it over, so CI runs that 3-minute reproduction once). Either way the reference and the
killed run start from empty work folders, so the comparison is also "same command, same numbers" (issue 19)."""
import json
import os
import random
import subprocess
import time
from pathlib import Path

import pandas as pd

from emd.reproduce.checks import NOT_COMPARED

from faults import SEED, count, kill_tree, ok, run, start, SEQUENCES

# the stages to kill in, in their order: data (SynthForensics + both preparations), fer (ESR-9 and SimFER training,
# FER maps), detectors (every training run, 2 worker processes), table2 (a table notebook writing its CSV)
TARGETS = ('data', 'fer', 'detectors', 'table2')
# columns that hold paths into the work folder (they differ between two work folders, legitimately)
PATH_COLUMNS = {'run'}


def stage_state(work: Path) -> dict:
    f = Path(work) / 'stages.json'
    try: return json.loads(f.read_text()) if f.is_file() else {}
    except json.JSONDecodeError: return {}     # written atomically; a partial read cannot happen, but be safe


def running(work: Path) -> str | None:
    "The stage the state file says is running now (the one started last), or None."
    st = {k: v for k, v in stage_state(work).items() if v.get('status') == 'running'}
    return max(st, key=lambda k: st[k].get('started', '')) if st else None


def tables(out: Path) -> dict:
    return {p.name: pd.read_csv(p) for p in sorted(Path(out).glob('*.csv'))}


def test_reproduce_killed(root):
    cmd = 'reproduce tiny'
    ref, got = root / 'rep-ref', root / 'rep-killed'
    args = lambda d: ['reproduce', '--profile', 'tiny', '--out', d / 'out', '--work', d / 'work', '--seed', 0]
    if os.environ.get('EMD_TINY_REFERENCE'):
        ref = Path(os.environ['EMD_TINY_REFERENCE'])
        state = stage_state(ref / 'work')
        assert state and all(v.get('status') == 'done' for v in state.values()) and (ref / 'out').is_dir(), (
            f"EMD_TINY_REFERENCE={ref}: not a finished tiny reproduction (want {ref}/work/stages.json with every stage "
            f"done, and {ref}/out): run `emd reproduce --profile tiny --seed 0 --out {ref}/out --work {ref}/work`")
        count(cmd, seconds_uninterrupted=sum(v.get('seconds', 0) for v in state.values()))
    else:
        t0 = time.time()
        r = run(args(ref), timeout=1800)
        dt = time.time() - t0
        ok(r, 'the uninterrupted tiny reproduction')
        count(cmd, seconds_uninterrupted=dt)
    seconds = {k: v.get('seconds', 0) for k, v in stage_state(ref / 'work').items()}
    rng, log, t0 = random.Random(SEED + 3), [], time.time()
    (root / 'logs').mkdir(exist_ok=True)
    for i, target in enumerate(TARGETS):
        before = stage_state(got / 'work').get(target, {}).get('started')
        p = start(args(got), root / 'logs' / f'reproduce-{i}.log')
        while p.poll() is None:
            s = stage_state(got / 'work').get(target, {})
            if s.get('status') == 'running' and s.get('started') != before: break
            time.sleep(.2)
        if p.poll() == 0 and stage_state(got / 'work').get(target, {}).get('status') == 'done':
            # the previous kill landed after this target (a loaded machine runs stages at other speeds than the reference):
            # the target was finished before this attempt, which skipped it; nothing to kill here
            log.append(dict(attempt=i, target=target, stage=None, skipped='finished by an earlier attempt')); continue
        assert p.poll() is None, (f"{cmd}: attempt {i} ended (exit {p.returncode}) before stage {target} started; "
                                  f"output tail:\n{(root / 'logs' / f'reproduce-{i}.log').read_text()[-3000:]}")
        delay = rng.uniform(.1, .9) * max(seconds.get(target, 1), 1)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            pass
        if p.poll() == 0:
            log.append(dict(attempt=i, target=target, stage=None, skipped='finished before its kill')); continue
        assert p.poll() is None, f"{cmd}: attempt {i} ended (exit {p.returncode}) before its kill in stage {target}"
        stage = running(got / 'work')
        outside = kill_tree(p)
        log.append(dict(attempt=i, target=target, stage=stage, after=round(delay, 1), outside_group=outside))
        count(cmd, kills=1, resumes=1 if i else 0, killed_outside_group=outside)
    r = run(args(got), timeout=1800)
    assert r.returncode == 0, (f"{cmd}: the run after {len(log)} kills exited {r.returncode}; kills: {log}\n"
                               f"stderr tail:\n{r.stderr[-3000:]}")
    count(cmd, resumes=1, seconds_killed_sequence=time.time() - t0)
    SEQUENCES[cmd] = log
    killed_in = {l['stage'] for l in log if l['stage'] is not None}
    assert len(killed_in) >= 3, f"{cmd}: the kills fell in only {sorted(killed_in)}: {log}"
    ok(run(['reproduce', '--check', got / 'out']), f'{cmd}: emd reproduce --check after the kills')
    r = run(['reproduce', '--check', got / 'out', '--same-as', ref / 'out'])
    assert r.returncode == 0, f"{cmd}: emd reproduce --same-as the uninterrupted run: {r.stdout[-3000:]}{r.stderr[-3000:]}"

    want, have = tables(ref / 'out'), tables(got / 'out')
    assert want.keys() == have.keys(), f"{cmd}: other CSVs: {sorted(have)} vs the uninterrupted {sorted(want)}"
    for name, a in want.items():
        b = have[name]
        paths = {c for c in a.columns if a[c].astype(str).str.contains(str(ref), regex=False).any()}
        assert paths <= PATH_COLUMNS, f"{cmd}: {name}: columns {sorted(paths - PATH_COLUMNS)} hold paths too"
        drop = paths | (set(NOT_COMPARED) & set(a.columns))    # as `emd reproduce --same-as`: run folders, training seconds
        pd.testing.assert_frame_equal(b.drop(columns=sorted(drop & set(b.columns))), a.drop(columns=sorted(drop)),
                                      obj=f"{cmd}: {name} after the kills {log}")
    count(cmd, comparisons=1)
