"""Ground-truth box levels against mmdet's own RoI extractor."""
import pytest
import torch
from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor

from kd_det.losses.gt_boxes import map_boxes_to_levels


@pytest.mark.parametrize('finest_scale, num_levels', [(56., 5), (56., 4), (28., 4)])
def test_levels_match_mmdets_roi_extractor(finest_scale, num_levels):
    sides = torch.tensor([8., 16., 55., 56., 57., 111., 112., 224., 448., 2000.])
    boxes = torch.stack([torch.zeros(10), torch.zeros(10), sides, sides * 0.5 + 1], dim=1)
    extractor = SingleRoIExtractor(
        roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0), out_channels=4,
        featmap_strides=[4, 8, 16, 32][:num_levels], finest_scale=finest_scale)
    rois = torch.cat([torch.zeros(10, 1), boxes], dim=1)
    expected = extractor.map_roi_levels(rois, num_levels)
    assert map_boxes_to_levels(boxes, num_levels, finest_scale).tolist() == expected.tolist()
