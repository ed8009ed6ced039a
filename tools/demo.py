"""The embedded demo: distil a small detector from a bigger one on a CPU, and measure it.

    python tools/demo.py                 # the baseline, SSIM and RCKA students
    python tools/demo.py --methods seed  # + RRD and UniKD: the four seed methods
    python tools/demo.py --quick         # smoke run on 32 images (what the tests run)
    python tools/demo.py --seeds 3       # every student over 3 seeds: mean +- std
    python tools/demo.py --seeds 3 --methods seed ssim-rcka mse pkd kd
    python tools/demo.py --split tune    # evaluate on the tune split (for choosing settings)
    python tools/demo.py --split tune --methods rrd \\
        'rrd[model.distill_losses.loss_rrd.loss_weight=0.1]'
    python tools/demo.py --family gfl    # the one-stage pair (GFL): CrossKD and LD

Steps, all real: generate the synthetic shapes dataset (kd_det/demo/synthetic_coco.py),
take the teacher (the checkpoint shipped in checkpoints/, or train one with
``--teacher train``, as the GFL family always does), evaluate it, train the student alone and with each distillation
method under identical schedules and seeds (``tools/train.py``, up to ``--jobs`` at
once; see ``kd_det.demo.runs.plan_jobs``), evaluate each with COCO mAP (mmdet's
CocoMetric), and write
``results.json``, ``results.md``, ``ap_chart.png``, ``loss_curves.png`` and the
first method's feature-similarity maps (``<method>_similarity.png``) into the work dir.
Finished runs are reused when the demo is run again with the same settings, and an
interrupted run resumes from its last epoch's checkpoint (``kd_det/demo/runs.py``).

``--split`` picks the split every run is evaluated on: ``val`` (default; the reported
numbers) or ``tune`` (distinct images of the same distribution, for tuning loss weights and
other settings without looking at val). The split is part of each run's cache key, and a
``tune`` evaluation keeps all its runs and results under ``<work dir>/tune/``, so it never
touches the val numbers; both share the dataset in ``<work dir>/data``.

``--family`` picks the detector pair: ``faster-rcnn`` (default; the two-stage methods) or
``gfl`` (GFL R-34/2 -> R-18/4, for the one-stage methods CrossKD and LD), whose runs live
under ``<work dir>/gfl/``.
"""
import argparse
import glob
import os
import os.path as osp
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

from kd_det.analysis.curves import plot_curves  # noqa: E402
from kd_det.demo import report  # noqa: E402
from kd_det.demo.runs import Run, plan_jobs, run_all  # noqa: E402,F401 (plan_jobs: tests)
from kd_det.demo.synthetic_coco import generate_dataset  # noqa: E402

CONFIGS = osp.join(REPO, 'configs', 'demo')
SHIPPED_TEACHER = osp.join(REPO, 'checkpoints', 'demo_teacher_r34-half_shapes.pth')
# per detector family: its teacher config, its shipped teacher checkpoint (None: trained by
# the demo) and its students, by --methods name
FAMILIES = {
    'faster-rcnn': dict(teacher='faster-rcnn_r34-half_fpn_shapes.py', shipped=SHIPPED_TEACHER,
                        methods={
        'baseline': 'faster-rcnn_r18-tiny_fpn_shapes.py',
        'ssim': 'ssim_faster-rcnn_r34h-to-r18t_fpn_shapes.py',
        'rcka': 'rcka_faster-rcnn_r34h-to-r18t_fpn_shapes.py',
        'mse': 'mse_faster-rcnn_r34h-to-r18t_fpn_shapes.py',
        'pkd': 'pkd_faster-rcnn_r34h-to-r18t_fpn_shapes.py',
        'rrd': 'rrd_faster-rcnn_r34h-to-r18t_fpn_shapes.py',
        'rrd-kd': 'rrd-kd_faster-rcnn_r34h-to-r18t_fpn_shapes.py',
        'unikd': 'unikd-whole_faster-rcnn_r34h-to-r18t_fpn_shapes.py',
        'unikd-features': 'unikd_faster-rcnn_r34h-to-r18t_fpn_shapes.py',
        'ssim-rcka': 'ssim-rcka_faster-rcnn_r34h-to-r18t_fpn_shapes.py',
        'pkd-rrd': 'pkd-rrd_faster-rcnn_r34h-to-r18t_fpn_shapes.py',
        'kd': 'kd_faster-rcnn_r34h-to-r18t_fpn_shapes.py',
        'fgd': 'fgd_faster-rcnn_r34h-to-r18t_fpn_shapes.py',
        'mgd': 'mgd_faster-rcnn_r34h-to-r18t_fpn_shapes.py',
        'unikd-fusion': 'unikd-fusion-whole_faster-rcnn_r34h-to-r18t_fpn_shapes.py',
        'ssim-rrd': 'ssim-rrd_faster-rcnn_r34h-to-r18t_fpn_shapes.py'}),
    'gfl': dict(teacher='gfl_r34-half_fpn_shapes.py', shipped=None, methods={
        'baseline': 'gfl_r18-tiny_fpn_shapes.py',
        'crosskd': 'crosskd_gfl_r34h-to-r18t_fpn_shapes.py',
        'ld': 'ld_gfl_r34h-to-r18t_fpn_shapes.py'}),
}
DATA = dict(full=dict(num_train=600, num_val=150, num_tune=150, image_size=(192, 192)),
            quick=dict(num_train=32, num_val=16, num_tune=16, image_size=(192, 192)))
SPLITS = ('val', 'tune')
# named sets of --methods: the default is the student alone, SSIM and RCKA (the cheap,
# clearly-helping methods: a first run that fits in minutes); 'seed' adds the other two
# seed methods, RRD and UniKD whole (features and logits)
METHOD_SETS = {'default': ('baseline', 'ssim', 'rcka'),
               'seed': ('baseline', 'ssim', 'rcka', 'rrd', 'unikd')}
FAMILY_DEFAULTS = {'faster-rcnn': ['default'], 'gfl': ['baseline', 'crosskd', 'ld']}
# methods that distil neck features (the similarity figure shows the first one run)
FEATURE_METHODS = ('ssim', 'rcka', 'ssim-rcka', 'mse', 'pkd', 'pkd-rrd', 'fgd', 'mgd',
                   'ssim-rrd')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', help='default: work_dirs/kd_det_demo[_quick]')
    parser.add_argument('--quick', action='store_true',
                        help='smoke run: 32 train images, 1 epoch, teacher trained 1 epoch')
    parser.add_argument('--family', default='faster-rcnn', choices=sorted(FAMILIES),
                        help='the detector pair (default: faster-rcnn)')
    parser.add_argument('--methods', nargs='+',
                        help='students to train: ' + '; '.join(
                            f'{family}: {sorted(f["methods"])}'
                            for family, f in FAMILIES.items()) + '; each optionally '
                        'with config overrides, e.g. rcka[model.distill_losses.loss_rcka.'
                        'loss_weight=5,...] (a variant of its own in the table), or a named '
                        'set of faster-rcnn\'s: ' + '; '.join(f'{k} = {" ".join(v)}'
                                                            for k, v in METHOD_SETS.items())
                        + '. Default: ' + '; '.join(f'{k}: {" ".join(v)}'
                                                   for k, v in FAMILY_DEFAULTS.items()))
    parser.add_argument('--split', default='val', choices=SPLITS,
                        help='split every run is evaluated on (default: val); tune runs and '
                        'results go to <work dir>/tune/')
    parser.add_argument('--seeds', type=int, default=1, help='seeds per student (0..N-1)')
    parser.add_argument('--epochs', type=int, help='student epochs (default: the config\'s)')
    parser.add_argument('--teacher', default=None,
                        help="teacher checkpoint, or 'train' (default: the shipped one; "
                        "'train' with --quick and for a family without one)")
    parser.add_argument('--teacher-epochs', type=int,
                        help='epochs when training the teacher (default: its config\'s)')
    parser.add_argument('--jobs', type=int,
                        help='training runs at once, each with cpu_count / jobs threads '
                        '(default: all runs at once up to cpu_count + 1; see plan_jobs)')
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f'--seeds {args.seeds}: expected >= 1')
    if args.jobs is not None and args.jobs < 1:
        parser.error(f'--jobs {args.jobs}: expected >= 1')
    methods = FAMILIES[args.family]['methods']
    sets = METHOD_SETS if args.family == 'faster-rcnn' else {}
    args.methods = args.methods or FAMILY_DEFAULTS[args.family]
    for token in args.methods:
        if token not in sets and method_config(token)[0] not in methods:
            parser.error(f'--methods {token!r}: not a method of --family {args.family}; '
                         f'expected one of {sorted(methods)}, optionally followed by '
                         f'[key=value,...]' + (f', or a named set {sorted(sets)}' if sets
                                               else ''))
    args.methods = expand_methods(args.methods)
    if args.quick:
        args.epochs = args.epochs or 1
        args.teacher_epochs = args.teacher_epochs or 1
        args.teacher = args.teacher or 'train'
    args.teacher = args.teacher or FAMILIES[args.family]['shipped'] or 'train'
    if args.teacher != 'train' and not osp.isfile(args.teacher):
        parser.error(f'teacher checkpoint {args.teacher!r} not found; pass --teacher train '
                     'to train one')
    args.work_dir = args.work_dir or osp.join(
        'work_dirs', 'kd_det_demo_quick' if args.quick else 'kd_det_demo')
    return args


def expand_methods(tokens: List[str]) -> List[str]:
    """Named sets replaced by their methods, duplicates dropped, ``'baseline'`` first."""
    methods = ['baseline']
    for token in tokens:
        for method in METHOD_SETS.get(token, (token,)):
            if method not in methods:
                methods.append(method)
    return methods


def method_config(token: str) -> Tuple[str, List[str]]:
    """``'rrd'`` or ``'rrd[key=value,...]'`` -> (method, its extra --cfg-options)."""
    match = re.fullmatch(r'([\w-]+)(?:\[(.*)\])?', token)
    if match is None:
        return token, []
    return match.group(1), [o for o in (match.group(2) or '').split(',') if o]


def method_argv(token: str, family: str = 'faster-rcnn') -> List[str]:
    """The config path of a --methods token; its overrides go to --cfg-options."""
    return [osp.join(CONFIGS, FAMILIES[family]['methods'][method_config(token)[0]])]


def data_options(root: str, split: str) -> List[str]:
    """--cfg-options that train on ``root``'s train split and evaluate on ``split``."""
    ann_file = f'annotations/instances_{split}.json'
    return [f'{loader}.dataset.data_root={root}/'
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')] + [
        option for loader in ('val_dataloader', 'test_dataloader')
        for option in (f'{loader}.dataset.ann_file={ann_file}',
                       f'{loader}.dataset.data_prefix.img={split}/')] + [
        f'{ev}.ann_file={root}/{ann_file}' for ev in ('val_evaluator', 'test_evaluator')]


def epoch_options(epochs: Optional[int]) -> List[str]:
    if epochs is None:
        return []
    return [f'train_cfg.max_epochs={epochs}', f'train_cfg.val_interval={epochs}',
            f'param_scheduler.1.end={epochs}', f'default_hooks.checkpoint.interval={epochs}']


def similarity_figure(runs: Dict[str, List[Run]], family: str, teacher_ckpt: str,
                      img_dir: str, work_dir: str) -> Optional[str]:
    """Feature-similarity maps of the first distillation method's seed-0 student on the
    first image of ``img_dir`` (tools/analysis/vis_feature_similarity.py)."""
    method = next((m for m in runs if method_config(m)[0] in FEATURE_METHODS), None)
    if method is None:
        return None
    run = runs[method][0]
    ckpt = sorted(glob.glob(osp.join(run.work_dir, 'epoch_*.pth')), key=osp.getmtime)[-1]
    image = sorted(glob.glob(osp.join(img_dir, '*')))[0]
    proc = subprocess.run(
        [sys.executable, 'tools/analysis/vis_feature_similarity.py',
         *method_argv(method, family), image, '--checkpoint', ckpt, '--out-dir', work_dir,
         '--cfg-options', f'model.teacher_ckpt={teacher_ckpt}', *method_config(method)[1]],
        cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f'vis_feature_similarity failed:\n{proc.stderr[-3000:]}')
    out = osp.join(work_dir, f'{method}_similarity.png')
    os.replace(osp.join(work_dir, f'{osp.splitext(osp.basename(image))[0]}_similarity.png'), out)
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    data_dir = osp.join(osp.abspath(args.work_dir), 'data')
    split, family = args.split, args.family
    # the dataset is shared; a family's runs live in its own directory (faster-rcnn's in the
    # work dir itself), a tune evaluation's in that directory's tune/
    family_dir = osp.abspath(args.work_dir if family == 'faster-rcnn'
                             else osp.join(args.work_dir, family))
    work_dir = family_dir if split == 'val' else osp.join(family_dir, split)
    os.makedirs(work_dir, exist_ok=True)
    t0 = time.time()

    data = generate_dataset(data_dir, **DATA['quick' if args.quick else 'full'], seed=0)
    root = data['root']
    print(f'[data] {"reused" if data["reused"] else "generated"} {root}: '
          f'{data["num_train_images"]} train / {data["num_val_images"]} val / '
          f'{data["num_tune_images"]} tune images, {len(data["classes"])} classes; '
          f'evaluating on {split}', flush=True)
    common = data_options(root, split)

    teacher_config = osp.join(CONFIGS, FAMILIES[family]['teacher'])
    train_time = None
    if args.teacher == 'train':  # once per family, whichever split is evaluated
        teacher_dir = osp.join(family_dir, 'teacher')
        trained = Run('teacher', ['tools/train.py', teacher_config, '--work-dir', teacher_dir,
                                  '--cfg-options', *data_options(root, 'val'),
                                  *epoch_options(args.teacher_epochs)], teacher_dir, 'val')
        run_all([trained], 1)
        train_time = trained.result['time']
        teacher_ckpt = sorted(glob.glob(osp.join(teacher_dir, 'epoch_*.pth')),
                              key=osp.getmtime)[-1]
    else:
        teacher_ckpt = osp.abspath(args.teacher)
    teacher_run = Run('teacher', ['tools/test.py', teacher_config, teacher_ckpt,
                                  '--work-dir', osp.join(work_dir, 'teacher_eval'),
                                  '--cfg-options', *common],
                      osp.join(work_dir, 'teacher_eval'), split)
    run_all([teacher_run], 1)
    teacher = dict(metrics=teacher_run.result['metrics'], checkpoint=teacher_ckpt,
                   time=train_time)

    runs: Dict[str, List[Run]] = {m: [] for m in args.methods}
    for seed in range(args.seeds):
        for method in args.methods:
            options = [*common, *epoch_options(args.epochs), f'randomness.seed={seed}',
                       *method_config(method)[1]]
            if method != 'baseline':
                options.append(f'model.teacher_ckpt={teacher_ckpt}')
            run_dir = osp.join(work_dir, 'runs', re.sub(r'[^\w.-]+', '_', method)
                               + f'_seed{seed}')
            runs[method].append(Run(f'{method} seed {seed}', [
                'tools/train.py', *method_argv(method, family),
                '--work-dir', run_dir, '--cfg-options', *options], run_dir, split))
    # distillation runs cost more per step than the baseline: start them first, so that
    # runs that queue (more runs than --jobs) are the short ones
    order = [r for m in args.methods if m != 'baseline' for r in runs[m]] + runs['baseline']
    run_all(order, args.jobs)

    results = {m: [dict(seed=i, **r.result) for i, r in enumerate(rs)]
               for m, rs in runs.items()}
    summary = report.summarise(results, teacher)
    rows = report.table_rows(summary, teacher)
    machine = report.machine_description()
    title = (f'kd_det demo ({family}): COCO box AP on {data[f"num_{split}_images"]} {split} '
             f'images, {args.seeds} seed(s), {machine}')
    print('\n' + title + '\n' + report.format_text(rows))
    for method, row in summary.items():
        if method != 'baseline' and args.seeds > 1:
            margin = row['gain'] / max(summary['baseline']['AP']['std'], 1e-9)
            print(f'{method}: {row["gain"]:+.2f} AP over the baseline = {margin:.1f} baseline '
                  f'standard deviations')
    report.write_json(osp.join(work_dir, 'results.json'), dict(
        title=title, teacher=teacher, runs=results, summary=summary, table=rows,
        argv=sys.argv[1:] if argv is None else list(argv), machine=machine,
        wall_time_s=time.time() - t0))
    with open(osp.join(work_dir, 'results.md'), 'w') as f:
        f.write(f'{title}\n\n{report.format_markdown(rows)}\n')
    report.plot_ap_chart(summary, teacher, osp.join(work_dir, 'ap_chart.png'), title=(
        f'AP per method ({args.seeds} seed(s))'))
    plot_curves({m: rs[0].work_dir for m, rs in runs.items()},
                osp.join(work_dir, 'loss_curves.png'), title='seed 0 runs')
    similarity = similarity_figure(runs, family, teacher_ckpt, data[f'{split}_img_dir'], work_dir)
    print(f'\nwrote {work_dir}/results.json, results.md, ap_chart.png, loss_curves.png'
          f'{", " + osp.basename(similarity) if similarity else ""} '
          f'({time.time() - t0:.0f} s in all on {machine})')
    return summary


if __name__ == '__main__':
    main()
