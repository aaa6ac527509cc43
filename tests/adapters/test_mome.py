"""MoME inside the frozen LLM: routing, shared experts, one parameter set for every rate, the balance
loss, what trains, padding invariance, the zero start, token selection and cached decoding."""
import math
import shutil

import pytest
import torch

from espnet_omni_avsr.adapters.mome import MoME, balance_loss
from espnet_omni_avsr.adapters.mome_experts import MoMELayer
from espnet_omni_avsr.decoders.hf_causal_lm_decoder import HFCausalLMDecoder
from espnet_omni_avsr.decoders.prompt import TokenType
from tests.models.conftest import build, tiny_config
from tests.models.test_avsr_llm_model import make_batch, select, transcript_logits
from tests.models.test_matryoshka import _config as matryoshka_config
from tests.models.test_matryoshka import _single_job_loss

SMALL = dict(num_experts=4, top_k=2, num_shared_experts=1, bottleneck=3)


def _mome_config(llm, whisper, **conf):
    config = tiny_config(llm, whisper)
    config["llm_adapter"] = "mome"
    config["llm_adapter_conf"] = {**SMALL, **conf}
    return config


def _model(llm, whisper, seed=0, **conf):
    torch.manual_seed(seed)
    model, _ = build(_mome_config(llm, whisper, **conf))
    return model


def _mome_params(model):
    return {n: p for n, p in model.named_parameters() if ".mome." in n}


def _perturb_experts(model, seed=1, scale=0.5, bias_scale=None):
    """Give every up-projection random values (they start at zero), so MoME changes the LLM."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in _mome_params(model).items():
            if n.endswith(".up") or n.endswith(".up_bias"):
                s = scale if n.endswith(".up") or bias_scale is None else bias_scale
                p.copy_(torch.randn(p.shape, generator=g) * s)


def _set_expert_outputs(layer: MoMELayer, outputs: torch.Tensor, experts="routed"):
    """Make expert e output the constant vector outputs[e], whatever its input: down-projection 0,
    its bias 1, so the bottleneck holds gelu(1) everywhere, and up = outputs[e] / (b * gelu(1))."""
    bank = getattr(layer, experts)
    b = bank.down.size(2)
    with torch.no_grad():
        bank.down.zero_()
        bank.down_bias.fill_(1.0)
        gelu1 = torch.nn.functional.gelu(torch.tensor(1.0))
        bank.up.copy_((outputs / (b * gelu1))[:, None, :].expand_as(bank.up))
        bank.up_bias.zero_()


# ------------------------------------------------------------------------------------- the module
@pytest.mark.parametrize("dispatch", ["sparse", "dense"])
@pytest.mark.parametrize("renormalize", [True, False])
def test_top_k_picks_the_known_experts_with_their_weights(dispatch, renormalize):
    layer = MoMELayer(4, num_experts=4, top_k=2, num_shared_experts=0, bottleneck=2,
                      renormalize=renormalize, dispatch=dispatch)
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(4))  # logits = x
    _set_expert_outputs(layer, torch.eye(4))  # expert e adds the unit vector e
    x = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, -1.0, 3.0, 0.5], [-2.0, 0.05, 0.0, 0.1]])
    routing = layer(x)
    assert routing.index.tolist() == [[0, 1], [2, 3], [3, 1]]  # topk: descending weight
    probs = torch.softmax(x, -1)
    assert torch.allclose(routing.probs, probs)
    expected = torch.zeros(3, 4)
    for t, chosen in enumerate([[0, 1], [2, 3], [3, 1]]):
        w = probs[t, chosen]
        w = w / w.sum() if renormalize else w
        expected[t, chosen] = w
    assert torch.allclose(routing.weights.sum(-1), expected.sum(-1))
    assert torch.allclose(routing.out, expected, atol=1e-6)
    if renormalize:
        e2, e1 = math.exp(2), math.exp(1)
        assert routing.out[0, :2].tolist() == pytest.approx([e2 / (e2 + e1), e1 / (e2 + e1)], abs=1e-6)


def test_shared_experts_are_used_by_every_token():
    layer = MoMELayer(4, num_experts=4, top_k=1, num_shared_experts=2, bottleneck=3)
    torch.manual_seed(0)
    shared = torch.randn(2, 4)
    _set_expert_outputs(layer, shared, experts="shared")
    x = torch.randn(7, 4) * 3  # the router sends these to various experts, whose outputs are still zero
    routing = layer(x)
    assert len(set(routing.index[:, 0].tolist())) > 1
    assert torch.allclose(routing.out, shared.sum(0).expand(7, 4), atol=1e-6)


def test_sparse_and_dense_dispatch_agree_with_a_loop_over_tokens():
    torch.manual_seed(0)
    sparse = MoMELayer(8, num_experts=5, top_k=3, num_shared_experts=1, bottleneck=2, dispatch="sparse")
    dense = MoMELayer(8, num_experts=5, top_k=3, num_shared_experts=1, bottleneck=2, dispatch="dense")
    with torch.no_grad():
        for p in sparse.parameters():
            p.copy_(torch.randn_like(p))
    dense.load_state_dict(sparse.state_dict())
    x = torch.randn(11, 8)
    out_s, out_d = sparse(x).out, dense(x).out
    routing = sparse(x)
    loop = torch.stack([
        sparse.shared.expert(0, x[t:t + 1])[0]
        + sum(routing.weights[t, j] * sparse.routed.expert(int(routing.index[t, j]), x[t:t + 1])[0] for j in range(3))
        for t in range(11)
    ])
    assert torch.allclose(out_s, loop, atol=1e-5) and torch.allclose(out_d, loop, atol=1e-5)
    assert sparse(x[:0]).out.shape == (0, 8)


# --------------------------------------------------------------------------------- the balance loss
def _balance(layer, x):
    routing = layer(x)
    hits = torch.bincount(routing.index.reshape(-1), minlength=layer.num_experts).float()
    return float(balance_loss(routing.probs.sum(0), hits, x.size(0), layer.top_k)), routing


@pytest.mark.parametrize("k", [1, 2])
def test_balance_loss_hand_examples(k):
    """N = 4 experts, router = identity, a = 5. Even: token t sends probability p = e^a / (e^a + 3)
    (k = 1) to expert t, so f_i = P_i = 1/4 and the loss is 4 * 4 * 1/16 = 1. Collapsed: every token
    prefers the same experts; k = 1: f_0 = 1, P_0 = p, loss 4p; k = 2 (tokens a(e_0 + e_1)):
    f_0 = f_1 = 1/2, P_0 = P_1 = q = e^a / (2 e^a + 2), loss 4q (both -> N / k as a grows)."""
    a = 5.0
    layer = MoMELayer(4, num_experts=4, top_k=k, num_shared_experts=0, bottleneck=1)
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(4))
    eye = torch.eye(4)
    even = a * (eye + (eye.roll(1, 1) if k == 2 else 0))  # token t: experts t (and t + 1)
    loss, routing = _balance(layer, even)
    assert sorted(routing.index.reshape(-1).tolist()) == sorted(list(range(4)) * k)
    assert loss == pytest.approx(1.0, abs=1e-6)
    collapsed = a * (eye[0] + (eye[1] if k == 2 else 0)).expand(4, 4)
    loss, _ = _balance(layer, collapsed)
    if k == 1:
        expected = 4 * math.exp(a) / (math.exp(a) + 3)
    else:
        expected = 4 * math.exp(a) / (2 * math.exp(a) + 2)
    assert loss == pytest.approx(expected, rel=1e-6)
    assert expected > 1.0


def test_uniform_router_gives_balance_one_in_the_model(tiny_llm_dir, tiny_whisper_dir):
    """With all routers zero every P_i = 1/N, and N * sum_i f_i / N = 1 whatever the tie-breaking."""
    model = _model(tiny_llm_dir, tiny_whisper_dir)
    with torch.no_grad():
        for n, p in _mome_params(model).items():
            if "router" in n:
                p.zero_()
    model.eval()
    with torch.no_grad():
        _, stats, _ = model(**make_batch(model.decoder.tokenizer))
    assert stats["balance"] == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------------------- parameters, training
def test_parameters_live_in_the_llm_and_are_counted(tiny_llm_dir, tiny_whisper_dir):
    model = _model(tiny_llm_dir, tiny_whisper_dir)
    adapter = model.decoder.adapter
    params = _mome_params(model)
    assert params and all(n.startswith("decoder.llm.model.layers.") and p.requires_grad for n, p in params.items())
    assert all(p.dtype == torch.float32 for p in params.values())
    assert set(params) <= set(model.state_dict())  # checkpoints hold them
    # D = 32, 2 layers: router 32 * 4, each expert 2 * 32 * 3 + 3 + 32 = 227; active = shared + top-2
    expert = 2 * 32 * 3 + 3 + 32
    assert adapter.active_parameters == 2 * (32 * 4 + (1 + 2) * expert)
    assert adapter.total_parameters == 2 * (32 * 4 + (1 + 4) * expert) == sum(p.numel() for p in params.values())
    assert len(model.losses) == 2 and model.losses["balance"].weight == 0.01


def test_one_router_and_expert_set_for_every_rate_pair(tiny_llm_dir, tiny_whisper_dir):
    config = matryoshka_config(tiny_llm_dir, tiny_whisper_dir, rate_sampling="all_pairs")
    config["llm_adapter"], config["llm_adapter_conf"] = "mome", dict(SMALL)
    torch.manual_seed(0)
    model, _ = build(config)
    single = _model(tiny_llm_dir, tiny_whisper_dir)  # one rate per modality
    params = _mome_params(model)
    assert {n: p.shape for n, p in params.items()} == {n: p.shape for n, p in _mome_params(single).items()}
    _perturb_experts(model)
    batch = make_batch(model.decoder.tokenizer)
    grads = {}
    for pair in ({"audio": 2, "video": 1}, {"audio": 4, "video": 2}):
        model.zero_grad()
        _single_job_loss(model, batch, "avsr", pair).backward()
        grads[pair["audio"]] = {n: p.grad.clone() for n, p in params.items() if p.grad is not None and p.grad.any()}
    assert set(grads[2]) == set(grads[4]) == set(params)  # both rate pairs train every MoME tensor
    assert any(not torch.allclose(grads[2][n], grads[4][n]) for n in params)


def test_a_step_trains_experts_and_routers_and_leaves_the_llm(tiny_llm_dir, tiny_whisper_dir):
    model = _model(tiny_llm_dir, tiny_whisper_dir)
    model.train()
    llm = {n: p.detach().clone() for n, p in model.decoder.llm.named_parameters() if ".mome." not in n}
    before = {n: p.detach().clone() for n, p in _mome_params(model).items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    batch = make_batch(model.decoder.tokenizer)
    for _ in range(2):  # the down-projections get a gradient once the up-projections are not zero
        opt.zero_grad()
        loss, _, _ = model(**batch)
        loss.backward()
        opt.step()
    for n, p in model.decoder.llm.named_parameters():
        if n in llm:
            assert not p.requires_grad and torch.equal(p, llm[n]), n
    changed = [n for n, p in _mome_params(model).items() if not torch.equal(p, before[n])]
    assert sorted(changed) == sorted(before)


# ------------------------------------------------------------------------------------ equivalences
@pytest.mark.parametrize("placement", ["mhsa", "ffn", "layer"])
def test_zero_initialised_up_projections_leave_the_llm_unchanged(tiny_llm_dir, tiny_whisper_dir, placement):
    model = _model(tiny_llm_dir, tiny_whisper_dir, placement=placement)
    bare = HFCausalLMDecoder(model_dir=tiny_llm_dir)
    model.eval()
    batch = make_batch(model.decoder.tokenizer)
    tokens = model.modality_tokens(["avsr"], batch)
    prompt = model.prompt.build(model.decoder.embed, "avsr", tokens, batch["text"], batch["text_lengths"])
    with torch.no_grad():
        got, want = model.decoder(prompt, output_hidden_states=True), bare(prompt, output_hidden_states=True)
        assert torch.equal(got.logits, want.logits) and torch.equal(got.last_hidden_state, want.last_hidden_state)
        _perturb_experts(model)  # ... and non-zero ones change it, at every placement
        moved = model.decoder(prompt, output_hidden_states=True)
    assert not torch.allclose(moved.logits, want.logits, atol=1e-3)
    # the recorded hidden states are those the next layer reads (MoME's hooks run first)
    assert not torch.allclose(moved.hidden_states[1], want.hidden_states[1], atol=1e-4)


@pytest.mark.parametrize("tokens", ["all", "modality_text"])
@pytest.mark.parametrize("dispatch", ["sparse", "dense"])
def test_padding_invariance(tiny_llm_dir, tiny_whisper_dir, tokens, dispatch):
    model = _model(tiny_llm_dir, tiny_whisper_dir, tokens=tokens, dispatch=dispatch)
    _perturb_experts(model)
    model.eval()
    batch = make_batch(model.decoder.tokenizer, n=3)
    with torch.no_grad():
        together = transcript_logits(model, batch)
        for b in range(3):
            alone = transcript_logits(model, select(batch, b))[0]
            assert torch.allclose(alone, together[b], atol=1e-4), b


@pytest.mark.parametrize("tokens", ["all", "modality_text"])
def test_token_selection_flag(tiny_llm_dir, tiny_whisper_dir, tokens):
    model = _model(tiny_llm_dir, tiny_whisper_dir, tokens=tokens)
    adapter = model.decoder.adapter
    _perturb_experts(model)
    bare = HFCausalLMDecoder(model_dir=tiny_llm_dir)
    model.eval()
    batch = make_batch(model.decoder.tokenizer)
    tokens_ = model.modality_tokens(["avsr"], batch)
    prompt = model.prompt.build(model.decoder.embed, "avsr", tokens_, batch["text"], batch["text_lengths"])
    adapter.track_usage()
    with torch.no_grad():
        got, want = model.decoder(prompt).last_hidden_state, bare(prompt).last_hidden_state
    counts = adapter.usage()["tokens"]  # (layers, token types)
    types = prompt.token_types
    n_of = {t: int((types == t).sum()) for t in TokenType}
    routed = {TokenType(i) for i in range(len(TokenType)) if counts[0, i] > 0}
    if tokens == "all":
        assert routed == {t for t in TokenType if t != TokenType.PAD and n_of[t]}
    else:
        assert routed == {TokenType.AUDIO, TokenType.VIDEO, TokenType.INSTRUCTION, TokenType.TRANSCRIPT,
                          TokenType.EOS}
    assert all(int(counts[0, t]) == n_of[t] for t in routed) and torch.equal(counts[0], counts[1])
    # BOS (position 0) reads only itself: changed only when it goes through the experts
    bos_same = torch.allclose(got[:, 0], want[:, 0], atol=1e-6)
    assert bos_same == (tokens == "modality_text")
    assert not torch.allclose(got[0], want[0], atol=1e-4)


# --------------------------------------------------------------------------------------- decoding
@pytest.fixture(scope="module")
def sharp_llm_dir(tiny_llm_dir, tmp_path_factory):
    """The tiny LLM with an untied random output layer (tests/models/golden.py's `_sharpen`), so that
    greedy hypotheses depend on the input instead of repeating one token."""
    from tests.models.golden import _sharpen

    out = tmp_path_factory.mktemp("sharp_llm") / "llm"
    shutil.copytree(tiny_llm_dir, out)
    _sharpen(str(out))
    return str(out)


def _inputs(batch):
    return {k: v for k, v in batch.items() if not k.startswith("text")}


def _generate(model, batch, **kwargs):
    """New token ids (B, n) of the AVSR task, decoded as `recognize` does (a left-padded prompt)."""
    return model.generate_ids(**_inputs(batch), task="avsr", **kwargs)[0]


def _assert_batch_decodes_as_rows(model, batch, n, **kwargs):
    """A batch decodes as each of its rows alone: the same tokens, and the same scores (greedy: the
    logits of every step; beam search: the final beams' scores)."""
    kwargs.update(return_dict_in_generate=True, output_scores=True)
    together = _generate(model, batch, **kwargs)
    beams = kwargs.get("num_beams", 1) > 1
    for b in range(n):
        alone = _generate(model, select(batch, b), **kwargs)
        tokens = alone.sequences[0]
        assert together.sequences[b, : tokens.numel()].tolist() == tokens.tolist(), b
        if beams:
            assert torch.allclose(together.sequences_scores[b], alone.sequences_scores[0], atol=1e-4), b
        else:
            for step, scores in enumerate(alone.scores):
                assert torch.allclose(together.scores[step][b], scores[0], atol=1e-4), (b, step)
    return together.sequences


@pytest.mark.parametrize("tokens", ["all", "modality_text"])
def test_batched_greedy_equals_one_at_a_time(sharp_llm_dir, tiny_whisper_dir, tokens):
    model = _model(sharp_llm_dir, tiny_whisper_dir, tokens=tokens)
    model.eval()
    batch = make_batch(model.decoder.tokenizer, n=3)
    plain = _generate(model, batch, max_new_tokens=6)
    _perturb_experts(model, scale=0.1, bias_scale=0.0)
    together = _assert_batch_decodes_as_rows(model, batch, 3, max_new_tokens=6)
    assert not torch.equal(together, plain)  # the experts steer decoding
    assert len({tuple(r) for r in together.tolist()}) == 3  # the hypotheses depend on the input
    hyps, _ = model.recognize(**_inputs(batch), max_new_tokens=6)  # the model's own decoding path
    assert hyps == [t.strip() for t in model.decoder.tokenizer.batch_decode(together, skip_special_tokens=True)]


def test_cached_decoding_steps_route_their_new_tokens(sharp_llm_dir, tiny_whisper_dir):
    model = _model(sharp_llm_dir, tiny_whisper_dir, tokens="modality_text")
    adapter = model.decoder.adapter
    _perturb_experts(model, scale=0.1, bias_scale=0.0)
    model.eval()
    batch = make_batch(model.decoder.tokenizer, n=2)
    adapter.track_usage()
    model.recognize(**_inputs(batch), max_new_tokens=5, min_new_tokens=5)
    counts = adapter.usage()["tokens"][0]
    # the prompt has no transcript: every TRANSCRIPT count is one of the 4 cached steps x 2 utterances
    assert int(counts[TokenType.TRANSCRIPT]) == 2 * 4
    assert int(counts[TokenType.BOS]) == 0 and int(counts[TokenType.PAD]) == 0
    # beam search repeats each prompt row num_beams times: a batch still decodes as its rows alone
    _assert_batch_decodes_as_rows(model, batch, 2, max_new_tokens=4, num_beams=2)


# ----------------------------------------------------------------------------------------- config
def test_bfloat16_llm_float32_experts(tiny_llm_dir, tiny_whisper_dir):
    config = _mome_config(tiny_llm_dir, tiny_whisper_dir)
    config["decoder_conf"] = dict(model_dir=tiny_llm_dir, dtype="bfloat16")
    torch.manual_seed(0)
    model, _ = build(config)
    _perturb_experts(model)
    assert model.decoder.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in _mome_params(model).values())
    loss, stats, _ = model(**make_batch(model.decoder.tokenizer))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in _mome_params(model).values())


def test_bad_arguments_are_refused(tiny_llm_dir):
    with pytest.raises(ValueError, match="top_k"):
        MoME(num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="placement"):
        MoME(placement="attention")
    with pytest.raises(ValueError, match="tokens"):
        MoME(tokens="audio")
    with pytest.raises(ValueError, match="dispatch"):
        MoME(dispatch="grouped")


def test_one_pass_group_and_a_clear_error_without_prepare(tiny_llm_dir):
    adapter = MoME(**SMALL)
    decoder = HFCausalLMDecoder(model_dir=tiny_llm_dir, adapter=adapter)
    assert decoder.pass_groups(["asr", "vsr", "avsr", "asr"]) == [[0, 1, 2, 3]]
    with pytest.raises(RuntimeError, match="prepare"):
        decoder.base_model(input_ids=torch.tensor([[1, 2, 3]]))
