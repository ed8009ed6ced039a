"""Training curves from mmengine's scalar logs (``vis_data/scalars.json``)."""
import glob
import json
import os.path as osp
from typing import Dict, List, Optional, Sequence

MAP_KEY = 'coco/bbox_mAP'


def find_scalars(work_dir: str) -> str:
    """The newest ``<timestamp>/vis_data/scalars.json`` under ``work_dir``."""
    if osp.isfile(work_dir):
        return work_dir
    found = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not found:
        raise FileNotFoundError(f'no */vis_data/scalars.json under {work_dir!r}: not an '
                                'mmengine work dir, or training has not logged yet')
    return found[-1]


def load_scalars(work_dir: str) -> Dict[str, List[dict]]:
    """Split a run's scalar log into ``train`` entries (with ``iter``) and ``val`` entries."""
    train, val = [], []
    with open(find_scalars(work_dir)) as f:
        for line in f:
            if not line.strip():
                continue
            entry = json.loads(line)
            (val if any(k.startswith('coco/') for k in entry) else train).append(entry)
    return {'train': train, 'val': val}


def plot_curves(runs: Dict[str, str], out_file: str,
                keys: Optional[Sequence[str]] = None, title: str = '') -> List[str]:
    """Plot loss curves per iteration and mAP per epoch of several runs, overlaid.

    Args:
        runs: ``{label: work_dir or scalars.json}``.
        out_file: the PNG to write.
        keys: the train scalars to plot (default: every ``loss*`` key of any run).
        title: figure title.

    Returns:
        the plotted loss keys.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    logs = {label: load_scalars(path) for label, path in runs.items()}
    if keys is None:
        keys = sorted({k for log in logs.values() for e in log['train'] for k in e
                       if k.startswith('loss')}, key=lambda k: (k != 'loss', k))
    panels = list(keys) + [MAP_KEY]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    colours = {label: f'C{i % 10}' for i, label in enumerate(logs)}  # one per run
    for ax, key in zip(axes.flat, panels):
        for label, log in logs.items():
            if key == MAP_KEY:
                points = [(e['step'], e[key]) for e in log['val'] if key in e]
                style = dict(marker='o')
            else:
                points = [(e['iter'], e[key]) for e in log['train'] if key in e]
                style = {}
            if points:
                ax.plot(*zip(*points), label=label, color=colours[label], **style)
        ax.set_title(key)
        ax.set_xlabel('epoch' if key == MAP_KEY else 'iteration')
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis('off')
    handles = [Line2D([], [], color=colours[label], label=label) for label in logs]
    fig.legend(handles=handles, loc='lower center', ncol=min(len(handles), 6),
               bbox_to_anchor=(0.5, 0.0))
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out_file, dpi=100)
    plt.close(fig)
    return list(keys)
