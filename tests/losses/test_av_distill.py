import torch

from espnet_omni_avsr.losses.av_distill import AudioToVideoDistill


def test_targets_average_audio_frames_to_the_video_rate():
    d = AudioToVideoDistill(4, 3, audio_frames_per_video_frame=2)
    audio = torch.arange(2 * 5 * 3, dtype=torch.float).view(2, 5, 3)
    target, lengths = d.targets(audio, torch.tensor([5, 3]))
    assert lengths.tolist() == [3, 2]
    assert torch.equal(target[0, 0], audio[0, :2].mean(0))
    assert torch.equal(target[0, 2], audio[0, 4])  # partial last window: its one valid frame
    assert torch.equal(target[1, 1], audio[1, 2])


def test_loss_is_zero_when_the_head_predicts_the_normalised_target():
    torch.manual_seed(0)
    d = AudioToVideoDistill(3, 3, audio_frames_per_video_frame=1).eval()
    with torch.no_grad():
        d.head.weight.copy_(torch.eye(3))
        d.head.bias.zero_()
    audio = torch.randn(2, 6, 3)
    loss = d.compute(audio, torch.tensor([6, 4]), audio, torch.tensor([6, 4]))  # eval: running stats 0/1
    assert loss.abs() < 1e-6
    other = d.compute(torch.randn(2, 6, 3), torch.tensor([6, 4]), audio, torch.tensor([6, 4]))
    assert other > 0.1


def test_only_frames_both_modalities_have_count_and_targets_get_no_gradient():
    torch.manual_seed(0)
    d = AudioToVideoDistill(4, 3)
    video = torch.randn(1, 5, 4, requires_grad=True)
    audio = torch.randn(1, 8, 3, requires_grad=True)
    d.compute(video, torch.tensor([5]), audio, torch.tensor([6])).backward()  # audio: 3 video frames
    assert video.grad[0, 3:].abs().sum() == 0 and video.grad[0, :3].abs().sum() > 0
    assert audio.grad is None
