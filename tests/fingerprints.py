"""Fingerprints of every registered detector: two CPU training steps through `emd.train.detector.train_detector` and
a prediction of the test split, on a tiny SynthForensics store, kept in tests/fingerprints.json beside the run key
(`emd.train.detector.run_code`) they were made under.

A run is retrained only when its key changes. The key covers the code that computes a run's numbers, not every line it
reaches (`emd.core.keys.NOT_NUMERIC`, the other model families). If a model's numbers change while its key does not, the
key is too narrow: reruns would reuse results the code no longer produces. tests/test_fingerprints.py checks that.

    python tests/fingerprints.py            # compare every model with tests/fingerprints.json
    python tests/fingerprints.py --update   # after a change that moves numbers on purpose: record the new ones

The numbers are computed in a process held to one CPU code path (`ISA`: AVX2 in PyTorch, oneDNN and MKL, one
thread), so that they depend as little as possible on which machine runs them: with AVX-512 kernels EMD's loss after
two steps differs from AVX2's in the third decimal. Held to AVX2, Intel and AMD processors still differ for the models
on timm's Xceptions, whose depthwise convolutions oneDNN blocks by the processor's caches (`CPU_SENSITIVE`): measured on
an AMD EPYC against the values recorded on an Intel Xeon, their two-step loss by up to 8.5e-4 (relative) and their
test probabilities by up to 6.5e-5, while the first mask's spread (the last value) moved by 2-5 %. Those models are
compared at `LOOSE` tolerance without that value; a change outside the key (tests/test_fingerprints.py's
perturbation) still moves their loss by 4.5e-3 to 4e-2. Every other model agrees to the last digits.
"""
import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FILE = HERE / 'fingerprints.json'
RTOL, ATOL = 1e-4, 2e-5     # one code path (ISA): equal to the last digits here; a code change moves more
CPU_SENSITIVE = ('emd', 'xception', 'xception_seg', 'xception_simfer')   # timm's Xceptions: blocked by the CPU's caches
LOOSE = 2e-3                 # their relative tolerance (Intel against AMD: at most 8.5e-4), the mask's spread left out
ISA = dict(ATEN_CPU_CAPABILITY='avx2', ONEDNN_MAX_CPU_ISA='AVX2', MKL_ENABLE_INSTRUCTIONS='AVX2', OMP_NUM_THREADS='1',
           MKL_NUM_THREADS='1')


def tiny_store(tmp: Path) -> dict:
    "A 64-pixel FF++ store of 6 SynthForensics videos (Face2Face, c23) and two random FERs saved to disk."
    import torch
    from emd.data.ffpp import FFppConfig, prepare_ffpp
    from emd.fer.esr import FerEnsemble, SimFER, save_fer
    from emd.synth.dataset import SynthConfig, synthesize
    synthesize(SynthConfig.from_profile('smoke', out=tmp / 'synth', videos=6, frames=8, frames_jitter=0, parts=('ffpp',),
                                        methods=('Face2Face',), workers=1))
    prepare_ffpp(FFppConfig(root=tmp / 'synth', out=tmp / 'store', methods=('Face2Face',), compression=('c23',), size=64,
                            workers=1))
    torch.manual_seed(0); save_fer(FerEnsemble(2), tmp / 'esr')
    torch.manual_seed(1); save_fer(SimFER(), tmp / 'simfer')
    return dict(store=tmp / 'store', esr=tmp / 'esr', simfer=tmp / 'simfer')


def fingerprint(name: str, tiny: dict, out: Path) -> list:
    """Two training steps of model `name` (smoke settings at 64 px, batch 4, seed 0), then its test predictions: the steps'
    mean loss, validation accuracy, sums and extremes of the test probabilities (and of the first mask)."""
    import torch
    from emd.core.runs import Run
    from emd.models.registry import model_spec
    from emd.train.detector import DetectorTrainConfig, train_detector
    torch.set_num_threads(1)
    spec = model_spec(name)
    fer = {'esr': str(tiny['esr']), 'simfer': str(tiny['simfer'])}.get(spec.fer, '')
    cfg = DetectorTrainConfig.from_profile('smoke', model=name, data=tiny['store'], out=out, fer=fer, size=64,
                                           input_size=64, epochs_phase1=0, epochs=1, steps_per_epoch=2, batch_size=4,
                                           workers=0, seed=0)
    train_detector(cfg, progress=False)
    run = Run(out)
    df, masks = run.predictions()
    p = df.sort_values(['video', 'frame']).prob.to_numpy(np.float64)
    log = run.log_table()
    values = [float(log.train_loss.iloc[-1]), float(log.val_accuracy.iloc[-1])]     # the training steps' mean loss
    values += [float(p.sum()), float((p * np.arange(1, len(p) + 1)).sum()), float(p.min()), float(p.max())]
    if masks is not None: values += [float(masks[0].astype(np.float64).mean()), float(masks[0][:, ::7, ::7].astype(np.float64).std())]
    return [round(v, 6) for v in values]


def verdict(name: str, key: str, values: list, recorded: dict | None) -> str | None:
    "None when `values` agree with the recorded fingerprint; otherwise what is wrong and what to do."
    if recorded is None:
        return f"{name}: no fingerprint recorded in {FILE.name}; run python tests/fingerprints.py --update"
    want = recorded['values']
    if name in CPU_SENSITIVE: values, want, rtol = values[:7], want[:7], LOOSE
    else: rtol = RTOL
    same = len(values) == len(want) and np.allclose(values, want, rtol=rtol, atol=ATOL)
    if same: return None
    if key == recorded['key']:
        return (f"{name}: its numbers changed ({recorded['values']} -> {values}) but its run key did not "
                f"(emd.train.detector.run_code = {key}): the code that moved them is outside the key. Widen the key "
                f"(emd.core.keys.NOT_NUMERIC, or the modules run_code names) so that old runs are not reused.")
    return (f"{name}: its numbers changed ({recorded['values']} -> {values}) and so did its key ({recorded['key']} -> {key}): "
            f"if the change is meant, record it with python tests/fingerprints.py --update")


def measure(names=None, perturb: bool = False) -> dict:
    """{model: {key, values}} for `names` (default: every registered model), in this process. `perturb`: with the crops'
    normalisation changed at run time (a change of numbers no key can see; non-linear, so that no model's first layer
    or batch norm undoes it), for the test that the check catches such a change."""
    from unittest import mock
    import emd.data.datasets as D
    from emd.models.registry import list_models
    from emd.train.detector import run_code
    real = D.normalize
    tmp = Path(tempfile.mkdtemp(prefix='emd-fingerprints-'))
    try:
        with contextlib.redirect_stdout(sys.stderr):
            tiny = tiny_store(tmp)
            with (mock.patch.object(D, 'normalize', lambda x: real(x).sign() * real(x).abs().sqrt()) if perturb
                  else contextlib.nullcontext()):
                return {n: dict(key=run_code(n), values=fingerprint(n, tiny, tmp / 'runs' / n))
                        for n in (names or list_models())}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure_isolated(names=None, perturb: bool = False) -> dict:
    "`measure` in a fresh process held to the `ISA` code path (what the tests and --update use)."
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / 'fingerprints.json'
        cmd = [sys.executable, str(Path(__file__)), '--measure', str(out)] + (['--perturb'] if perturb else []) + list(names or [])
        r = subprocess.run(cmd, env={**os.environ, **ISA}, capture_output=True, text=True)
        if r.returncode: raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
        return json.loads(out.read_text())


def recorded() -> dict:
    return json.loads(FILE.read_text()) if FILE.exists() else {}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--update', action='store_true', help=f'record the measured fingerprints in {FILE.name}')
    ap.add_argument('--measure', metavar='JSON', help=argparse.SUPPRESS)   # the isolated process: measure, write, exit
    ap.add_argument('--perturb', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('models', nargs='*', help='only these models (default: all)')
    a = ap.parse_args()
    if a.measure:
        Path(a.measure).write_text(json.dumps(measure(a.models or None, a.perturb)))
        return
    now, old = measure_isolated(a.models or None), recorded()
    problems = [p for n, f in now.items() if (p := verdict(n, f['key'], f['values'], old.get(n)))]
    if a.update:
        FILE.write_text(json.dumps({**old, **now}, indent=1, sort_keys=True) + '\n')
        print(f"recorded {len(now)} fingerprints in {FILE}")
    else:
        print('\n'.join(problems) or f"{len(now)} fingerprints agree with {FILE.name}")
        sys.exit(1 if problems else 0)


if __name__ == '__main__':
    main()
