"""Stand-in files for the paper profile's weight options, written for CI's pilot: the published files' keys and shapes
(timm's `xception65` and `legacy_xception` ImageNet checkpoints, ESR-9's per-module files) with random values, so that
`--encoder-weights`, `--xception-weights` and `--esr-weights` go through their loaders. Nothing is downloaded.

    python tests/standin_weights.py DIR    # writes DIR/xception65.safetensors, DIR/legacy_xception.safetensors, DIR/esr_9/
"""
import sys
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from emd.fer.esr import FerEnsemble, save_esr9


def write_standins(out) -> dict:
    "Write the three stand-ins into `out`; returns their paths by option."
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    paths = {}
    for option, name in (('encoder_weights', 'xception65'), ('xception_weights', 'legacy_xception')):
        sd = timm.create_model(name, pretrained=False).state_dict()      # the checkpoint's keys and shapes
        save_file({k: v.contiguous() for k, v in sd.items()}, str(out / f'{name}.safetensors'))
        paths[option] = out / f'{name}.safetensors'
    save_esr9(FerEnsemble(9), out / 'esr_9')
    paths['esr_weights'] = out / 'esr_9'
    return paths


if __name__ == '__main__':
    if len(sys.argv) != 2: raise SystemExit(__doc__)
    for k, v in write_standins(sys.argv[1]).items(): print(f"--{k.replace('_', '-')} {v}")
