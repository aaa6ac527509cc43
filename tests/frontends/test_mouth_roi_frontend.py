import torch

from espnet_omni_avsr.frontends.mouth_roi_frontend import MouthROIFrontend
from espnet_omni_avsr.frontends.mouth_roi_transform import MouthROITransform


def test_flattened_normalised_crops():
    fe = MouthROIFrontend(crop_size=88).eval()
    video = torch.randint(0, 256, (2, 5, 96, 96), dtype=torch.uint8)
    out, lens = fe(video, torch.tensor([5, 3]))
    assert fe.output_size() == 88 * 88 and out.shape == (2, 5, 88 * 88) and lens.tolist() == [5, 3]
    expected, _ = MouthROITransform(crop_size=88).eval()(video, torch.tensor([5, 3]))
    assert torch.equal(out, expected.flatten(2))
    assert torch.all(out[1, 3:] == 0) and not list(fe.parameters())
