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
    """Plot loss curves per iteration and the COCO mAP of several runs, overlaid.

    The mAP panel is a line per run over epochs when some run was evaluated more than
    once, and otherwise (the demo: one evaluation at the end) a bar per run.

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

    logs = {label: load_scalars(path) for label, path in runs.items()}
    if keys is None:
        keys = sorted({k for log in logs.values() for e in log['train'] for k in e
                       if k.startswith('loss')}, key=lambda k: (k != 'loss', k))
    fig = curves_figure(logs, list(keys), title)
    fig.savefig(out_file, dpi=100)
    plt.close(fig)
    return list(keys)


def curves_figure(logs: Dict[str, Dict[str, List[dict]]], keys: List[str], title: str = ''):
    """The figure of :func:`plot_curves` from ``{label: load_scalars(...)}``: one panel per
    loss key, then the mAP panel; one colour per run across panels."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    panels = list(keys) + [MAP_KEY]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    colours = {label: f'C{i % 10}' for i, label in enumerate(logs)}  # one per run
    for ax, key in zip(axes.flat, keys):
        for label, log in logs.items():
            points = [(e['iter'], e[key]) for e in log['train'] if key in e]
            if points:
                ax.plot(*zip(*points), label=label, color=colours[label])
        ax.set_title(key)
        ax.set_xlabel('iteration')
        ax.grid(alpha=0.3)
    map_ax = axes.flat[len(keys)]
    evals = {label: [(e['step'], 100 * e[MAP_KEY]) for e in log['val'] if MAP_KEY in e]
             for label, log in logs.items()}
    if any(len(points) > 1 for points in evals.values()):
        for label, points in evals.items():
            if points:
                map_ax.plot(*zip(*points), marker='o', color=colours[label])
        map_ax.set_xlabel('epoch')
        map_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        map_ax.set_title('COCO box AP')
    else:  # one evaluation per run: its final AP as a bar, not a point on an epoch axis
        last = {label: points[-1] for label, points in evals.items() if points}
        bars = map_ax.bar(range(len(last)), [ap for _, ap in last.values()],
                          color=[colours[label] for label in last])
        map_ax.bar_label(bars, fmt='%.1f', fontsize=8)
        map_ax.margins(y=0.15)  # room for the labels
        map_ax.set_xticks(range(len(last)), list(last), rotation=30, ha='right')
        epochs = sorted({epoch for epoch, _ in last.values()})
        map_ax.set_title('COCO box AP after epoch ' + '/'.join(map(str, epochs))
                         if last else 'COCO box AP: no evaluation logged')
    map_ax.grid(alpha=0.3, axis='y')
    for ax in list(axes.flat)[len(panels):]:
        ax.axis('off')
    handles = [Line2D([], [], color=colours[label], label=label) for label in logs]
    fig.legend(handles=handles, loc='lower center', ncol=min(len(handles), 6),
               bbox_to_anchor=(0.5, 0.0))
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig
