import pytest
import torch

from espnet_omni_avsr.compression.abs_compressor import AbsCompressor
from espnet_omni_avsr.compression.qformer_compressor import QFormerCompressor, resize_valid


def small(**kw) -> QFormerCompressor:
    conf = dict(input_size=6, hidden_size=16, num_layers=2, num_heads=4, dropout=0.1)
    conf.update(kw)
    torch.manual_seed(0)
    return QFormerCompressor(**conf).eval()


def counts(lengths, rates=None, **kw):
    rates = None if rates is None else torch.tensor(rates, dtype=torch.float64)
    return small(**kw).query_counts(torch.tensor(lengths), rates).tolist()


# ---- query counts: N = max(int(q), floor(T / 25 * q * clamp(r, 1, 2)))


def test_counts_without_rate_follow_duration():
    # 1 s, 2 s, 4 s at 3 q/s; 29 frames = 3.48 -> 3; 38 frames = 4.56 -> 4
    assert counts([25, 50, 100, 29, 38]) == [3, 6, 12, 3, 4]


def test_counts_rate_clamped_at_both_edges():
    T = [50] * 6  # 2 s: 6 queries at r = 1
    assert counts(T, [0.3, 0.999, 1.0, 1.5, 2.0, 3.7]) == [6, 6, 6, 9, 12, 12]
    assert counts(T, [-4.0, 0.0, 1.25, 1.75, 2.0001, 1e6]) == [6, 6, 7, 10, 12, 12]  # 7.5 -> 7, 10.5 -> 10


def test_very_short_utterance_gets_q():
    assert counts([1, 5, 24, 1], [1.0, 2.0, 1.0, 0.5]) == [3, 3, 3, 3]  # 2.88 at 24 frames, 1.2 at 5 frames x 2: both below q
    assert counts([20], [2.0]) == [4]  # 0.8 s * 3 * 2 = 4.8 -> 4 (above q)
    assert counts([1], queries_per_second=2.5) == [2]  # the floor is int(q)


def test_counts_truncate():
    # 13.5 -> 13, 15.0 -> 15 (exact), 9.12 -> 9, 6.6 -> 6
    assert counts([75, 100, 38, 50], [1.5, 1.25, 2.0, 1.1]) == [13, 15, 9, 6]
    # 375 / 25 * 3 * 1.4 is 62.99999999999999 in float64, 63 on paper: not truncated to 62
    assert counts([375], [1.4]) == [63]
    # a float32 rate is taken at its precision: float32(1.4) < 1.4 -> 62
    c = small().query_counts(torch.tensor([375]), torch.tensor([1.4], dtype=torch.float32))
    assert c.tolist() == [62]


def test_counts_other_settings():
    assert counts([100], [1.5], queries_per_second=4, frame_rate=50.0) == [12]  # 2 s * 4 * 1.5
    assert counts([50], [0.5], min_rate=0.5, max_rate=3.0) == [3]  # 3 * 0.5 -> max(3, 3)
    assert counts([50], [2.9], min_rate=0.5, max_rate=3.0) == [17]  # 17.4 -> 17


def test_count_above_max_queries_is_a_clear_error():
    comp = small(max_queries=12)
    assert comp.query_counts(torch.tensor([100])).tolist() == [12]  # exactly the pool is fine
    with pytest.raises(ValueError, match=r"utterance 1 needs 15 queries.*4\.04 s.*max_queries is 12.*raise max_queries"):
        comp.query_counts(torch.tensor([25, 101]), torch.tensor([1.0, 1.25]))
    with pytest.raises(ValueError, match="max_queries"):
        comp(torch.randn(1, 110, 6), torch.tensor([110]))


# ---- resize_valid


def test_resize_identity_when_length_unchanged():
    xs = torch.randn(2, 7, 3)
    ys = resize_valid(xs, torch.tensor([7, 4]), torch.tensor([7, 4]))
    assert ys.shape == (2, 7, 3)
    assert torch.equal(ys[0], xs[0]) and torch.equal(ys[1, :4], xs[1, :4])
    assert ys[1, 4:].abs().sum() == 0  # padding zeroed


def test_resize_ramp_hand_values():
    ramp = torch.arange(4.0).view(1, 4, 1)
    up = resize_valid(ramp, torch.tensor([4]), torch.tensor([8])).flatten().tolist()
    assert up == pytest.approx([0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0])
    down = resize_valid(ramp, torch.tensor([4]), torch.tensor([2])).flatten().tolist()
    assert down == pytest.approx([0.5, 2.5])
    one = resize_valid(ramp, torch.tensor([4]), torch.tensor([1])).flatten().tolist()
    assert one == pytest.approx([1.5])
    single = resize_valid(torch.full((1, 1, 2), 5.0), torch.tensor([1]), torch.tensor([3]))
    assert torch.equal(single, torch.full((1, 3, 2), 5.0))


def test_resize_ignores_padding_and_matches_interpolate_per_row():
    torch.manual_seed(1)
    xs = torch.randn(3, 9, 4)
    lengths, new = torch.tensor([9, 5, 2]), torch.tensor([13, 10, 3])
    xs_junk = xs.clone()
    for b, n in enumerate(lengths.tolist()):
        xs_junk[b, n:] = 1e4
    ys = resize_valid(xs_junk, lengths, new)
    assert ys.shape == (3, 13, 4)
    for b, (n, m) in enumerate(zip(lengths.tolist(), new.tolist())):
        ref = torch.nn.functional.interpolate(
            xs[b : b + 1, :n].transpose(1, 2), size=m, mode="linear", align_corners=False
        ).transpose(1, 2)[0]
        torch.testing.assert_close(ys[b, :m], ref)
        assert ys[b, m:].abs().sum() == 0


def test_resize_bad_arguments():
    xs = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        resize_valid(torch.randn(5, 3), torch.tensor([5]), torch.tensor([5]))
    with pytest.raises(ValueError, match=r"lengths: values \[6, 5\] are not within \[1, 5\]"):
        resize_valid(xs, torch.tensor([6, 5]), torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="new_lengths: values"):
        resize_valid(xs, torch.tensor([5, 5]), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="batch size 2"):
        resize_valid(xs, torch.tensor([5]), torch.tensor([5]))


# ---- forward


def test_forward_shapes_zero_past_counts_and_abs_contract():
    comp = small()
    assert isinstance(comp, AbsCompressor) and comp.output_size() == 16
    xs = torch.randn(3, 60, 6)
    ys, lens = comp(xs, torch.tensor([60, 30, 10]))  # the AbsCompressor call: no speech rate
    assert lens.tolist() == [7, 3, 3]  # 2.4 s -> 7, 1.2 s -> 3, 0.4 s -> q
    assert ys.shape == (3, 7, 16)
    for b, n in enumerate(lens.tolist()):
        assert ys[b, n:].abs().sum() == 0 and (ys[b, :n].abs().sum(-1) > 0).all()


def test_padding_invariance_with_speech_rates():
    comp = small()
    torch.manual_seed(2)
    lengths = [40, 75, 13, 52]
    rates = torch.tensor([1.6, 0.7, 2.5, 1.3], dtype=torch.float64)
    xs = torch.randn(4, 75, 6)
    for b, n in enumerate(lengths):
        xs[b, n:] = 50.0  # junk in the padding
    with torch.no_grad():
        ys, lens = comp(xs, torch.tensor(lengths), rates)
        assert lens.tolist() == [7, 9, 3, 8]  # 7.68, 9 (r 0.7 -> 1), 3.12, 8.112
        for b, n in enumerate(lengths):
            alone, alone_lens = comp(xs[b : b + 1, :n], torch.tensor([n]), rates[b : b + 1])
            m = alone_lens.item()
            assert m == lens[b].item() and alone.shape == (1, m, 16)
            torch.testing.assert_close(ys[b, :m], alone[0], atol=1e-5, rtol=0)
            assert ys[b, m:].abs().sum() == 0


def test_speech_rate_stretches_features():
    comp = small()
    xs = torch.randn(1, 50, 6)
    with torch.no_grad():
        plain, _ = comp(xs, torch.tensor([50]))
        fast, n = comp(xs, torch.tensor([50]), torch.tensor([1.0], dtype=torch.float64))
        torch.testing.assert_close(fast, plain)  # r = 1 is the same as no rate
        fast, n = comp(xs, torch.tensor([50]), torch.tensor([2.0], dtype=torch.float64))
    assert n.tolist() == [12] and not torch.allclose(fast[0, :6], plain[0])


def test_gradients_reach_queries_and_features_not_padding():
    comp = small()
    comp.train()
    xs = torch.randn(2, 30, 6, requires_grad=True)
    ys, lens = comp(xs, torch.tensor([30, 20]), torch.tensor([1.5, 1.0]))
    ys.sum().backward()
    assert lens.tolist() == [5, 3]
    g = comp.queries.grad
    assert g[:5].abs().sum(-1).gt(0).all() and g[5:].abs().sum() == 0  # only used queries learn
    assert xs.grad[0].abs().sum() > 0 and xs.grad[1, 20:].abs().sum() == 0
    assert all(p.grad is not None for p in comp.qformer.parameters())


def test_defaults_and_query_init():
    comp = QFormerCompressor(input_size=8)
    assert comp.output_size() == 256 and comp.queries.shape == (120, 256)
    assert abs(comp.queries.std().item() - 0.02) < 0.002 and abs(comp.queries.mean().item()) < 0.002
    cfg = comp.qformer.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (2, 4, 1024)
    assert cfg.cross_attention_frequency == 1 and cfg.encoder_hidden_size == 8
    assert all(layer.has_cross_attention for layer in comp.qformer.encoder.layer)
    assert QFormerCompressor(input_size=8, hidden_size=32, intermediate_size=40).qformer.config.intermediate_size == 40


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(input_size=0), "input_size"),
        (dict(hidden_size=10, num_heads=4), "multiple of num_heads"),
        (dict(num_layers=0), "num_layers"),
        (dict(intermediate_size=0), "intermediate_size"),
        (dict(queries_per_second=0.5), "queries_per_second"),
        (dict(queries_per_second=True), "queries_per_second"),
        (dict(frame_rate=0), "frame_rate"),
        (dict(max_queries=2), "max_queries"),
        (dict(min_rate=0.0), "min_rate"),
        (dict(min_rate=1.5, max_rate=1.0), "max_rate"),
        (dict(dropout=1.0), "dropout"),
        (dict(rate=4), "takes no rate"),
    ],
)
def test_bad_constructor_arguments(kw, match):
    conf = dict(input_size=6, hidden_size=16, num_heads=4)
    conf.update(kw)
    with pytest.raises(ValueError, match=match):
        QFormerCompressor(**conf)


def test_bad_forward_arguments():
    comp = small()
    with pytest.raises(ValueError, match=r"\(B, T, 6\)"):
        comp(torch.randn(1, 10, 5), torch.tensor([10]))
    with pytest.raises(ValueError, match=r"not within \[1, 10\]"):
        comp(torch.randn(2, 10, 6), torch.tensor([10, 0]))
    with pytest.raises(ValueError, match="batch of 2"):
        comp(torch.randn(2, 10, 6), torch.tensor([10]))
    with pytest.raises(ValueError, match=r"speech_rate must have shape \(2,\)"):
        comp(torch.randn(2, 10, 6), torch.tensor([10, 5]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="finite"):
        comp.query_counts(torch.tensor([10]), torch.tensor([float("nan")]))


def test_registered_in_task():
    from espnet_omni_avsr.tasks.avsr_llm_task import COMPRESSORS

    assert COMPRESSORS["qformer"] is QFormerCompressor
