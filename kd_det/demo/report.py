"""The demo's results: summary statistics, a text/Markdown table, JSON and an AP chart."""
import json
import math
import os
import os.path as osp
import platform
from typing import Dict, List, Optional

#: (column title, CocoMetric key) of the table's AP columns.
AP_COLUMNS = [('AP', 'coco/bbox_mAP'), ('AP50', 'coco/bbox_mAP_50'),
              ('AP75', 'coco/bbox_mAP_75'), ('AP_S', 'coco/bbox_mAP_s'),
              ('AP_M', 'coco/bbox_mAP_m'), ('AP_L', 'coco/bbox_mAP_l')]


def mean_std(values: List[float]) -> Dict[str, float]:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {'mean': mean, 'std': std, 'n': n}


def cpu_description() -> str:
    """The CPU model and its widest x86 SIMD (which sets the float rounding of training,
    hence its APs, and its speed), e.g. ``'AMD EPYC, AVX-512'``."""
    model, flags = platform.processor() or platform.machine(), set()
    if osp.isfile('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            info = dict(line.split(':', 1) for line in f.read().split('\n\n')[0].splitlines()
                        if ':' in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        model, flags = info.get('model name', model), set(info.get('flags', '').split())
    simd = next((name for flag, name in (('avx512f', 'AVX-512'), ('avx2', 'AVX2'))
                 if flag in flags), None)
    return f'{model}, {simd}' if simd else model


def machine_description() -> str:
    """What the results were measured on, e.g. ``'AMD EPYC, AVX-512, x86_64, 2 CPUs,
    Python 3.11.7'``: the CPU model matters, APs and times differ between models."""
    return (f'{cpu_description()}, {platform.machine()}, {os.cpu_count()} CPUs, '
            f'Python {platform.python_version()}')


def summarise(runs: Dict[str, List[dict]], teacher: Optional[dict]) -> Dict[str, dict]:
    """Per method: mean/std of every AP column (in AP points, x100) and of the time.

    Args:
        runs: ``{method: [{'metrics': {coco key: value in [0, 1]}, 'time': s}, ...]}``
            with one entry per seed; ``'baseline'`` is the student alone.
        teacher: the teacher's ``{'metrics': ..., 'time': ...}`` or None.

    Adds ``gain`` (AP over the baseline's mean) and ``gap_closed`` (the share of
    the teacher-baseline AP gap that the method closes) where defined.
    """
    summary = {}
    for method, entries in runs.items():
        row = {title: mean_std([100 * e['metrics'][key] for e in entries])
               for title, key in AP_COLUMNS}
        row['time'] = mean_std([e['time'] for e in entries])
        summary[method] = row
    base = summary.get('baseline', {}).get('AP', {}).get('mean')
    teacher_ap = 100 * teacher['metrics']['coco/bbox_mAP'] if teacher else None
    for method, row in summary.items():
        if base is not None and method != 'baseline':
            row['gain'] = row['AP']['mean'] - base
            if teacher_ap is not None and teacher_ap > base:
                row['gap_closed'] = row['gain'] / (teacher_ap - base)
    return summary


def _cell(stat: Dict[str, float], digits: int = 1) -> str:
    if stat['mean'] < 0:  # CocoMetric's -1: no object of that size in the split
        return 'n/a'
    text = f'{stat["mean"]:.{digits}f}'
    return text + (f' ± {stat["std"]:.{digits}f}' if stat['n'] > 1 else '')


def table_rows(summary: Dict[str, dict], teacher: Optional[dict]) -> List[List[str]]:
    """Header plus one row per model: teacher first, then baseline, then methods."""
    header = ['model'] + [t for t, _ in AP_COLUMNS] + ['time (s)', 'gain AP', 'gap closed']
    rows = [header]
    if teacher:
        rows.append(['teacher'] + [_cell(mean_std([100 * teacher['metrics'][k]]))
                                   for _, k in AP_COLUMNS]
                    + [f'{teacher["time"]:.0f}' if teacher.get('time') else '-', '', ''])
    for method, row in summary.items():
        gain = f'{row["gain"]:+.1f}' if 'gain' in row else ''
        gap = f'{100 * row["gap_closed"]:.0f}%' if 'gap_closed' in row else ''
        rows.append([method] + [_cell(row[t]) for t, _ in AP_COLUMNS]
                    + [_cell(row['time'], 0), gain, gap])
    return rows


def format_text(rows: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ['  '.join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, '-' * len(lines[0]))
    return '\n'.join(lines)


def format_markdown(rows: List[List[str]]) -> str:
    lines = ['| ' + ' | '.join(rows[0]) + ' |',
             '|' + '|'.join(['---'] + ['---:'] * (len(rows[0]) - 1)) + '|']
    lines += ['| ' + ' | '.join(r) + ' |' for r in rows[1:]]
    return '\n'.join(lines)


def write_json(path: str, payload: dict) -> None:
    with open(path, 'w') as f:
        json.dump(payload, f, indent=2, sort_keys=True)


def plot_ap_chart(summary: Dict[str, dict], teacher: Optional[dict], out_file: str,
                  title: str = '') -> None:
    """Bar chart of AP per method (mean ± std over seeds), teacher as a line."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    methods = list(summary)
    means = [summary[m]['AP']['mean'] for m in methods]
    stds = [summary[m]['AP']['std'] for m in methods]
    fig, ax = plt.subplots(figsize=(1.3 * len(methods) + 2.5, 3.6))
    bars = ax.bar(methods, means, yerr=stds, capsize=4,
                  color=['#999999' if m == 'baseline' else '#3b75af' for m in methods])
    for bar, mean in zip(bars, means):
        ax.annotate(f'{mean:.1f}', (bar.get_x() + bar.get_width() / 2, mean),
                    xytext=(0, 3), textcoords='offset points', ha='center', fontsize=9)
    if teacher:
        t_ap = 100 * teacher['metrics']['coco/bbox_mAP']
        ax.axhline(t_ap, color='#c0392b', linestyle='--', label=f'teacher {t_ap:.1f}')
        ax.legend(loc='lower right')
    ax.set_ylabel('COCO box AP (val)')
    ax.set_title(title or 'AP per method')
    ax.grid(axis='y', alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_file, dpi=100)
    plt.close(fig)
