"""Evaluate a checkpoint: mmdet's ``tools/test.py`` flags.

    python -m kd_det.test CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl]
                          [--show-dir DIR] [--cfg-options k=v ...] [--launcher ...]

CONFIG may be a distillation config (the student alone is built and evaluated:
no teacher is built and ``teacher_ckpt`` is never read) or a plain mmdet config
with a student exported by ``python -m kd_det.export`` or with the distillation
checkpoint itself (:class:`~kd_det.engine.StudentWeightsHook`); a file,
which may inherit kd_det's configs by package (``_base_ = 'kd_det::...'``), or a
package path itself (``kd_det::NAME``, ``mmdet::NAME``).
``tools/test.py`` and ``mim test kd_det`` run this same ``main``.
"""
import argparse
import copy
import os.path as osp

from mmdet.registry import MODELS
from mmengine.config import Config, ConfigDict

from kd_det.configs import read_config
from kd_det.engine.launcher import (apply_command_line, build_runner, parse_command_line,
                                     tool_parser)


def parse_args() -> argparse.Namespace:
    parser = tool_parser('Test (and eval) a model (kd_det)', 'test config file path',
                         'the dir to save the evaluation metrics')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='dump predictions to a pickle file (.pkl)')
    parser.add_argument('--show-dir', help='save painted predictions under work_dir/timestamp/DIR')
    return parse_command_line(parser)


def student_test_config(cfg: Config) -> Config:
    """``cfg`` to test with: a distiller's model replaced by its student alone (with the
    distiller's data preprocessor), and :class:`~kd_det.engine.StudentWeightsHook` added,
    which loads the student's weights of a distillation checkpoint."""
    from kd_det.models import FeatureDistillDetector
    model = cfg.model
    model_type = MODELS.get(model['type']) if isinstance(model['type'], str) else model['type']
    if isinstance(model_type, type) and issubclass(model_type, FeatureDistillDetector):
        student = ConfigDict(copy.deepcopy(model['student']))
        if model.get('data_preprocessor') is not None:
            student['data_preprocessor'] = copy.deepcopy(model['data_preprocessor'])
        cfg.model = student
    cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [dict(type='StudentWeightsHook')]
    return cfg


def main() -> None:
    """Parse the command line, build the Runner and test."""
    args = parse_args()
    if not osp.isfile(args.checkpoint) and '://' not in args.checkpoint:
        raise SystemExit(f'checkpoint not found: {args.checkpoint!r}')
    cfg = student_test_config(apply_command_line(read_config(args.config), args))
    cfg.load_from = args.checkpoint
    if args.show_dir:
        hooks = cfg.default_hooks
        if 'visualization' not in hooks:
            raise RuntimeError('--show-dir needs a `visualization` default hook in the config')
        hooks.visualization.draw = True
        hooks.visualization.test_out_dir = args.show_dir
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise SystemExit(f'--out {args.out!r}: expected a .pkl or .pickle file')
        cfg.test_evaluator = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) \
            else [cfg.test_evaluator]
        cfg.test_evaluator.append(dict(type='DumpDetResults', out_file_path=args.out))
    build_runner(cfg).test()


if __name__ == '__main__':
    main()
