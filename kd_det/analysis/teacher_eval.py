"""How well a distiller's teacher detects, fed exactly as a training step feeds it."""
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from mmdet.evaluation.functional import eval_map
from mmengine.evaluator import Evaluator
from torch import nn


@torch.no_grad()
def teacher_predictions(model: nn.Module, loader: Iterable,
                        num_batches: Optional[int] = None) -> Iterator[Tuple[dict, list]]:
    """``(preprocessed batch, teacher's predicted samples)`` per batch of ``loader``.

    The images go through the distiller's (student's) data preprocessor, then
    ``model.teacher_inputs`` (the teacher's normalisation), as in training.
    """
    for i, data in enumerate(loader):
        if num_batches is not None and i >= num_batches:
            return
        data = model.data_preprocessor(data, False)
        inputs = model.teacher_inputs(data['inputs'])
        yield data, model.teacher.predict(inputs, data['data_samples'])


def count_detections(samples: list, score_thr: float) -> Tuple[int, int, float]:
    """``(images, detections with score >= score_thr, highest score)`` of predicted samples."""
    kept, top = 0, 0.0
    for sample in samples:
        scores = sample.pred_instances.scores
        kept += int((scores >= score_thr).sum())
        top = max(top, float(scores.max()) if scores.numel() else 0.0)
    return len(samples), kept, top


def evaluate_teacher(model: nn.Module, loader: Iterable, evaluator: Evaluator,
                     num_classes: int, score_thr: float = 0.3) -> Dict[str, object]:
    """The teacher on every batch of ``loader``, scored by ``evaluator`` (the config's).

    Returns ``metrics`` (the evaluator's), ``images``, ``detections`` (score >=
    ``score_thr``), ``top_score``, and two IoU-0.5 APs (in %) on the ground truth the
    loader packs: ``ap50`` per class and ``ap50_agnostic`` with every class merged. A
    teacher that finds the objects but names them wrong (other dataset classes, another
    class order) has a high ``ap50_agnostic`` and a low ``ap50``.
    """
    images, kept, top = 0, 0, 0.0
    per_class, merged, annotations, img_ids = [], [], [], []
    for data, preds in teacher_predictions(model, loader):
        evaluator.process(data_samples=preds, data_batch=data)
        n, k, t = count_detections(preds, score_thr)
        images, kept, top = images + n, kept + k, max(top, t)
        for sample in preds:
            pred = sample.pred_instances
            scores = pred.scores.float().cpu()
            dets = torch.cat([pred.bboxes.float().cpu(), scores[:, None]], 1).numpy()
            labels = pred.labels.cpu().numpy()
            per_class.append([dets[labels == c] for c in range(num_classes)])
            merged.append([dets])
            annotations.append(_ground_truth(sample))
            img_ids.append(sample.metainfo.get('img_id'))
    if not images:
        raise ValueError('the validation loader yielded no images')
    _restrict_to(evaluator, img_ids)
    metrics = evaluator.evaluate(images)
    ap50 = _ap50(per_class, annotations)
    agnostic = _ap50(merged, [dict(a, labels=np.zeros_like(a['labels']),
                                   labels_ignore=np.zeros_like(a['labels_ignore']))
                              for a in annotations])
    return dict(metrics=metrics, images=images, detections=kept, top_score=top,
                ap50=ap50, ap50_agnostic=agnostic)


def primary_map(metrics: Dict[str, float]) -> Tuple[str, float]:
    """The evaluator's main box mAP, ``(key, AP in %)``: the first key ending in
    ``bbox_mAP`` (CocoMetric), else the first ending in ``mAP`` (VOCMetric)."""
    for suffix in ('bbox_mAP', 'mAP'):
        key = next((k for k in metrics if k.endswith(suffix)), None)
        if key is not None:
            return key, 100.0 * float(metrics[key])
    raise KeyError(f'no mAP among the evaluator\'s metrics {sorted(metrics)}')


def _ground_truth(sample) -> dict:
    """eval_map's annotation dict from a packed sample's gt_instances (+ ignored ones)."""
    def boxes(name):
        inst = sample.get(name)
        if inst is None or 'bboxes' not in inst:
            return np.zeros((0, 4), np.float32), np.zeros((0, ), np.int64)
        bboxes = inst.bboxes
        bboxes = getattr(bboxes, 'tensor', bboxes)  # mmdet box structures
        return bboxes.float().cpu().numpy(), inst.labels.cpu().numpy()
    gt, labels = boxes('gt_instances')
    ignore, labels_ignore = boxes('ignored_instances')
    return dict(bboxes=gt, labels=labels, bboxes_ignore=ignore, labels_ignore=labels_ignore)


def _ap50(det_results: List[list], annotations: List[dict]) -> float:
    """mmdet's VOC-style mean AP at IoU 0.5, in %, over the classes with ground truth."""
    _, per_class = eval_map(det_results, annotations, iou_thr=0.5, logger='silent', nproc=1)
    aps = [r['ap'] for r in per_class if r['num_gts'] > 0]
    return 100.0 * float(np.mean(aps)) if aps else 0.0


def _restrict_to(evaluator: Evaluator, img_ids: list) -> None:
    """Score COCO-style metrics on the evaluated images only.

    mmdet's CocoMetric scores every image of its ``ann_file`` unless ``img_ids`` is set,
    so images without predictions would count as missed.
    """
    if None in img_ids:
        return
    for metric in evaluator.metrics:
        if hasattr(metric, 'img_ids') and hasattr(metric, '_coco_api'):
            metric.img_ids = list(img_ids)
