"""A full disk and a read-only output folder: a clear one-line error (no traceback, a handled exit status, naming
a file), and after a full disk a state from which the same command, rerun with room, completes with the result of
an uninterrupted run.

**Full disk** is simulated with `RLIMIT_FSIZE` (`faults.file_size_limit`, set in the child before `exec`, inherited by
its workers, SIGXFSZ ignored): a write beyond the limit fails with EFBIG ("File too large") as a write to a full disk
fails with ENOSPC. The limit lets small files (settings, markers, logs) through and stops the large ones (crops,
checkpoints), so the command fails in the middle of its work.

**Read-only.** CI and this machine run as root, for whom permission bits do not stop writes (CAP_DAC_OVERRIDE). The
`readonly` fixture makes an empty output folder that the child cannot write, the first way that works here (each is
probed: a child must fail to create a file there, else the next is tried; the one used is in the summary):
1. a read-only bind mount of the folder on itself (`mount --bind D D; mount -o remount,ro,bind D`: EROFS; needs
   CAP_SYS_ADMIN, which root has on this machine and in CI; any file system);
2. `chattr +i D` (an immutable folder: no entry can be created; needs CAP_LINUX_IMMUTABLE and ext4/xfs/btrfs);
3. mode 0o555 and the child run as the unprivileged user nobody (uid/gid 65534, `faults.as_nobody`) where the
   interpreter is reachable by that user (here it is not: the venv's python links into /root/.pyenv, /root is 0700);
4. not root: mode 0o555 alone.
Measured on this machine (root, 2 cores): 1 and 2 work, 3 does not (the interpreter), so 1 is used."""
import os

import pytest

from conftest import FFPP, train_args
from faults import (NOBODY, as_nobody, assert_clean_error, assert_same_run, assert_same_store, child_env, count,
                    file_size_limit, ok, run)


def _problems(*checks) -> list:
    "Run the checks in order, stopping at the first that fails; its message (the test reports every part's)."
    for c in checks:
        try: c()
        except AssertionError as e: return [str(e)]
    return []


def limited(args, nbytes):
    return run(args, preexec_fn=file_size_limit(nbytes))


def test_prepare_ffpp_full_disk(root, synth, ffpp_ref):
    cmd, out = 'prepare ffpp', root / 'ffpp-full'
    args = ['prepare', 'ffpp', '--root', synth, '--out', out, *FFPP]
    crops = sorted(p.stat().st_size for p in (ffpp_ref['path'] / 'crops').rglob('*.png'))
    limit = crops[len(crops) // 2]           # about half the crops fit, the others fail: mid-work
    r = limited(args, limit)
    count(cmd + ' (full disk)', runs=1)
    problems = _problems(lambda: assert_clean_error(r, f"emd prepare ffpp with files limited to {limit} bytes"))
    # whatever the message, the state must be resumable: the same command with room completes, as if uninterrupted
    r2 = run(args)
    count(cmd + ' (full disk)', resumes=1)
    problems += _problems(lambda: ok(r2, f"{cmd}: the rerun after a full disk"),
                          lambda: assert_same_store(out, ffpp_ref['path'], f"{cmd}: the store after a full disk and a "
                                                    f"rerun", cmd + ' (full disk)'))
    assert not problems, '\n\n'.join(problems)


def test_train_detector_full_disk(root, ffpp_ref, train_ref):
    cmd, out = 'train detector', root / 'run-full'
    ck = (train_ref['path'] / 'checkpoint.pt').stat().st_size
    limit = ck // 2                           # settings and log fit; the first checkpoint (and best weights) do not
    r = limited(train_args(ffpp_ref['path'], out), limit)
    count(cmd + ' (full disk)', runs=1)
    problems = _problems(lambda: assert_clean_error(r, f"emd train detector with files limited to {limit} bytes"))
    resume = '--resume' if (out / 'checkpoint.pt').is_file() else '--force'
    r2 = run([*train_args(ffpp_ref['path'], out), resume])
    count(cmd + ' (full disk)', resumes=1)
    problems += _problems(lambda: ok(r2, f"{cmd}: the rerun ({resume}) after a full disk"),
                          lambda: assert_same_run(out, train_ref['path'], f"{cmd}: the run after a full disk and a rerun",
                                                  cmd + ' (full disk)'))
    assert not problems, '\n\n'.join(problems)


def _cannot_write(d, pre=None, env=None) -> bool:
    "Whether a child (as `pre` makes it) fails to create a file in `d`."
    import subprocess, sys
    r = subprocess.run([sys.executable, '-c', f"open({str(d / 'probe')!r}, 'w')"], preexec_fn=pre, env=env,
                       capture_output=True, text=True)
    if r.returncode == 0: (d / 'probe').unlink(missing_ok=True)
    return r.returncode != 0 and ('Read-only' in r.stderr or 'Permission' in r.stderr or 'not permitted' in r.stderr)


def _sh(*cmd) -> bool:
    import subprocess
    return subprocess.run(cmd, capture_output=True).returncode == 0


@pytest.fixture
def readonly(root):
    "An empty output folder the child cannot write: (folder, preexec_fn, env); see the module's docstring."
    d = root / 'readonly'
    d.mkdir(exist_ok=True)
    home = root / 'home-nobody'; home.mkdir(exist_ok=True); home.chmod(0o777)
    env = child_env(HOME=str(home), MPLCONFIGDIR=str(home))
    undo, pre, how = None, None, None
    if os.geteuid() != 0:
        d.chmod(0o555); how, undo = 'mode 0o555 (not root)', lambda: d.chmod(0o755)
    if how is None and _sh('mount', '--bind', str(d), str(d)):
        if _sh('mount', '-o', 'remount,ro,bind', str(d)) and _cannot_write(d):
            how, undo = 'read-only bind mount', lambda: _sh('umount', str(d))
        else: _sh('umount', str(d))
    if how is None and _sh('chattr', '+i', str(d)):
        if _cannot_write(d): how, undo = 'chattr +i', lambda: _sh('chattr', '-i', str(d))
        else: _sh('chattr', '-i', str(d))
    if how is None:
        d.chmod(0o555)
        if _cannot_write(d, as_nobody, env): how, pre, undo = f'uid {NOBODY}, mode 0o555', as_nobody, lambda: d.chmod(0o755)
    if how is None: pytest.fail(f"no way to make {d} read-only for a child found (bind mount, chattr +i, uid {NOBODY})")
    count('read-only folder', **{f'made by {how}': 1})
    yield d, pre, env
    undo()


def test_prepare_ffpp_readonly(root, synth, readonly):
    d, pre, env = readonly
    r = run(['prepare', 'ffpp', '--root', synth, '--out', d, *FFPP], preexec_fn=pre, env=env)
    count('prepare ffpp (read-only)', runs=1)
    assert_clean_error(r, f"emd prepare ffpp --out {d} (read-only)", names=[d])


def test_train_detector_readonly(root, ffpp_ref, readonly):
    d, pre, env = readonly
    r = run(train_args(ffpp_ref['path'], d), preexec_fn=pre, env=env)
    count('train detector (read-only)', runs=1)
    assert_clean_error(r, f"emd train detector --out {d} (read-only)", names=[d])
