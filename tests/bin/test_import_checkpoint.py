"""Importing official Llama-AVSR / Omni-AVSR checkpoints (bin/import_checkpoint.py).

Each test writes a checkpoint in their layout from random weights around the tiny random LLM,
Whisper and AV-HuBERT (non-zero LoRA everywhere, a drifted BatchNorm statistic), imports it, loads
the archive with this project's recognizer and compares with a direct implementation of their
equations written here (the facts are listed in utils/official_checkpoints.py):

* LoRA: q = q_proj(h) + s * up_Q(down_Q(h)) (and v), s = ALPHA / RANK, RANK the reduction
  factor (dimension round(hidden / RANK)); Omni-AVSR-ST adds s * (task + shared).
* projector: Linear -> ReLU -> Linear [-> LayerNorm on the output] after AvgPool1d(k).
* prompt: [BOS] <audio> A </audio> <video> V </video> instruction transcript EOS, the delimiters
  being rows n, n+1, ... of their resized embedding table (<pad> first for Llama).

Tolerance: fp32 everywhere; LLM logits within atol 1e-5 / rtol 1e-5 (on this CPU they come out
bit-identical; the margin is for other kernels). With the LLM in bf16 (the importer's default
dtype, as they trained) the logits of these tiny models differ by about 2e-3.
"""
import json
import logging

import pytest
import torch
import torch.nn.functional as F

from espnet_omni_avsr.bin import import_checkpoint as cli

LOGIT_TOL = dict(atol=1e-5, rtol=1e-5)
THEIR_ADDED_LLAMA = ["<pad>", "<audio>", "</audio>", "<video>", "</video>"]
TASK_MODALITIES = {"asr": ["audio"], "vsr": ["video"], "avsr": ["audio", "video"]}
THEIR_TASK = {"asr": "audio", "vsr": "video", "avsr": "audiovisual"}


# ------------------------------------------------------------------------------- their checkpoint
def their_state(llm_dir, whisper_dir=None, avhubert=None, *, lora_sets=("",), reduction=8, projectors=None,
                prompts=None, seed=0):
    """A state dict laid out as their AVSR_LLMs module's (after avg_checkpoints removed "model.").

    projectors: modality -> dict(in_dims=[...] (one per rate; a list of one and per_rate False:
    one nn.Sequential), per_rate=bool, hidden=int, norm=bool).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    cfg = AutoConfig.from_pretrained(llm_dir)
    llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32)
    n = len(AutoTokenizer.from_pretrained(llm_dir))
    H = cfg.hidden_size
    kv = cfg.num_key_value_heads * (H // cfg.num_attention_heads)
    r = round(H / reduction)
    state = {"llm." + k: v.clone() for k, v in llm.state_dict().items()}
    table = torch.cat([llm.get_input_embeddings().weight.detach(), rnd(len(THEIR_ADDED_LLAMA), H)])
    state["llm.model.embed_tokens.weight"] = table
    state["llm.lm_head.weight"] = table  # tied, resized with the tokenizer
    for i in range(cfg.num_hidden_layers):
        for s in lora_sets:
            sfx = "" if s == "" else "_shared" if s == "shared" else f".{s}"
            pre = f"llm.model.layers.{i}.self_attn.lora_"
            state[f"{pre}down_Q{sfx}.weight"], state[f"{pre}up_Q{sfx}.weight"] = rnd(r, H), rnd(H, r)
            state[f"{pre}down_V{sfx}.weight"], state[f"{pre}up_V{sfx}.weight"] = rnd(r, H), rnd(kv, r)
    for m, p in (projectors or {}).items():
        for k, d in enumerate(p["in_dims"]):
            pre = f"{m}_proj.{k}." if p["per_rate"] else f"{m}_proj."
            state[pre + "0.weight"], state[pre + "0.bias"] = rnd(p["hidden"], d), rnd(p["hidden"])
            state[pre + "2.weight"], state[pre + "2.bias"] = rnd(H, p["hidden"]), rnd(H)
            if p["norm"]:
                state[pre + "3.weight"], state[pre + "3.bias"] = 1 + rnd(H), rnd(H)
    if whisper_dir:
        from transformers import WhisperForConditionalGeneration

        enc = WhisperForConditionalGeneration.from_pretrained(whisper_dir).model.encoder
        state.update({"audio_encoder." + k: v.clone() for k, v in enc.state_dict().items()})
    if avhubert:
        avh = torch.load(avhubert, weights_only=True)["model"]
        state.update({"video_encoder." + k: v.clone() for k, v in avh.items()})
        bn = next(k for k in avh if k.endswith("running_mean"))
        state["video_encoder." + bn] = avh[bn] + 0.5  # their frozen AV-HuBERT trains in train mode: BN drifts
        D = avh["encoder.layers.0.self_attn.q_proj.weight"].shape[0]
        state["video_encoder.mask_emb"] = rnd(D)  # a pre-training head
        rv = round(D / 16)
        for i in range(1 + max(int(k.split(".")[2]) for k in avh if k.startswith("encoder.layers."))):
            pre = f"video_encoder.encoder.layers.{i}.self_attn.lora_"
            state[f"{pre}down_Q.weight"], state[f"{pre}up_Q.weight"] = rnd(rv, D), rnd(D, rv)
            state[f"{pre}down_V.weight"], state[f"{pre}up_V.weight"] = rnd(rv, D), rnd(D, rv)
    for m, ids in (prompts or {}).items():
        state[f"prompt_{m}"] = table[torch.tensor(ids)][None].clone()
    return state, n


def lora_hooks(module_layers, state, prefix, sets, scaling):
    """Their LoRA as forward hooks: q_proj(h) + s * sum_sets up(down(h)), likewise v."""
    handles = []
    for i, layer in enumerate(module_layers):
        for proj in ("q", "v"):
            pairs = []
            for s in sets:
                sfx = "" if s == "" else "_shared" if s == "shared" else f".{s}"
                P = proj.upper()
                pairs.append((state[f"{prefix}.{i}.self_attn.lora_down_{P}{sfx}.weight"],
                              state[f"{prefix}.{i}.self_attn.lora_up_{P}{sfx}.weight"]))

            def hook(mod, inputs, out, pairs=pairs):
                h = inputs[0]
                return out + scaling * sum(h @ down.T @ up.T for down, up in pairs)

            handles.append(getattr(layer.self_attn, f"{proj}_proj").register_forward_hook(hook))
    return handles


def their_projector(state, pre, x, norm):
    y = F.linear(torch.relu(F.linear(x, state[pre + "0.weight"], state[pre + "0.bias"])), state[pre + "2.weight"],
                 state[pre + "2.bias"])
    return F.layer_norm(y, (y.size(-1),), state[pre + "3.weight"], state[pre + "3.bias"], 1e-5) if norm else y


def their_logits(llm_dir, state, n, task, feats, rates, proj_prefix, norms, instruction_ids, text_ids, sets, scaling):
    """Their forward pass for one utterance: logits (N, V) of the base vocabulary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llm_dir)
    llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32).eval()
    table = state["llm.model.embed_tokens.weight"]
    ids = {t: n + i for i, t in enumerate(THEIR_ADDED_LLAMA)}
    pieces = [table[[tok.bos_token_id]]]
    for m in TASK_MODALITIES[task]:
        x = F.avg_pool1d(feats[m].transpose(1, 2), rates[m]).transpose(1, 2)[0]  # nn.AvgPool1d(k)
        pieces += [table[[ids[f"<{m}>"]]], their_projector(state, proj_prefix[m], x, norms[m]), table[[ids[f"</{m}>"]]]]
    pieces += [table[instruction_ids], table[text_ids], table[[tok.eos_token_id]]]
    embeds = torch.cat(pieces)[None]
    handles = lora_hooks(llm.model.layers, state, "llm.model.layers", sets, scaling)
    try:
        with torch.no_grad():
            logits = llm(inputs_embeds=embeds).logits[0]
    finally:
        for h in handles:
            h.remove()
    return logits, embeds.size(1)


def our_logits(model, task, feats, rates, text_ids):
    """This project's forward on the same encoder features: logits (K, V) at the scored positions."""
    tokens = {}
    for m in TASK_MODALITIES[task]:
        x = feats[m]
        tokens[m] = model.branches[m].tokenize(x, torch.tensor([x.size(1)]), rates[m])
    text = torch.tensor([text_ids])
    prompt = model.prompt.build(model.decoder.embed, task, tokens, text, torch.tensor([len(text_ids)]),
                                conditions={m: rates[m] for m in tokens})
    with torch.no_grad():
        return model.decoder(prompt).logits


def save_lightning(path, state, hparams, monkeypatch):
    """A Lightning .ckpt: hyper_parameters is Lightning's AttributeDict (pickled by class name; a
    stand-in module is used to write it, so weights_only loading refuses the file as for a real one)."""
    import sys
    import types

    names = ["pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    attribute_dict = type("AttributeDict", (dict,), {"__module__": names[-1]})
    sys.modules[names[-1]].AttributeDict = attribute_dict
    torch.save({"state_dict": {"model." + k: v for k, v in state.items()}, "hyper_parameters": attribute_dict(hparams),
                "epoch": 7, "pytorch-lightning_version": "2.4.0"}, path)
    for name in names:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)


def run_import(tmp_path, name, argv):
    out = tmp_path / f"{name}.tar"
    code = cli.main([*argv, "--out", str(out), "--dtype", "float32", "--log_level", "WARNING"])
    return code, out


def load_archive(out, tmp_path):
    from espnet_omni_avsr.recognizer import AVSRRecognizer

    rec = AVSRRecognizer.from_pretrained(out, cache_dir=tmp_path / (out.stem + "_unpacked"), max_new_tokens=3)
    return rec, json.loads((out.parent / f"{out.stem}_import" / "import_report.json").read_text())


def tokens(llm_dir, text):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llm_dir)(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------- tests
def test_llama_avsr_avsr_matches_their_equations(tmp_path, tiny_llm_dir, tiny_whisper_dir, tiny_avhubert_checkpoint):
    """Llama-AVSR AVSR, avg-pooling audio 4 / video 2, LayerNorm after the video projector,
    LoRA reduction 8 (dimension 4), alpha 2 (scaling 0.25), AV-HuBERT LoRA and drifted BatchNorm."""
    projectors = {"audio": dict(in_dims=[32], per_rate=False, hidden=24, norm=False),
                  "video": dict(in_dims=[32], per_rate=False, hidden=24, norm=True)}
    state, n = their_state(tiny_llm_dir, tiny_whisper_dir, tiny_avhubert_checkpoint, projectors=projectors)
    ckpt = tmp_path / "AVSR_tiny.pth"
    torch.save(state, ckpt)
    code, out = run_import(tmp_path, "avsr", ["--format", "llama_avsr", "--checkpoint", str(ckpt), "--llm_dir", tiny_llm_dir,
                                              "--whisper_dir", tiny_whisper_dir, "--avhubert", tiny_avhubert_checkpoint,
                                              "--audio_rates", "4", "--video_rates", "2", "--lora_alpha", "2",
                                              "--lora_reduction", "8", "--crop_size", "32"])
    assert code == 0
    rec, report = load_archive(out, tmp_path)
    model = rec.model

    # every key is accounted for, by name
    assert sum(report["keys"].values()) == len(state) and report["keys"]["unknown"] == 0
    assert report["unused"]["video_encoder.mask_emb"].startswith("AV-HuBERT pre-training head")
    assert "llm.model.layers.1.self_attn.lora_up_V.weight" in report["mapped"]
    assert report["lora"]["scaling"] == pytest.approx(0.25) and report["lora"]["peft_r"] == 4
    assert report["added_tokens"]["<audio>"]["their_id"] == n + 1
    assert report["added_tokens"]["<audio>"]["our_id"] == model.decoder.tokenizer.convert_tokens_to_ids("<audio>")
    assert rec.args.video_projector == "mlp_out_norm" and rec.args.audio_projector == "mlp"

    # LLM logits on a prompt with their layout and special tokens
    torch.manual_seed(1)
    feats = {"audio": torch.randn(1, 16, 32), "video": torch.randn(1, 8, 32)}
    rates = {"audio": 4, "video": 2}
    instr = tokens(tiny_llm_dir, "Transcribe speech and video to text.")
    text = tokens(tiny_llm_dir, "bin blue at f two now")
    their_ids = [0] + instr + [1]  # their template: BOS text EOS, then [1:-1]
    ref, N = their_logits(tiny_llm_dir, state, n, "avsr", feats, rates, {"audio": "audio_proj.", "video": "video_proj."},
                          {"audio": False, "video": True}, their_ids[1:-1], text, [""], 0.25)
    ours = our_logits(model, "avsr", feats, rates, text)
    V = ours.size(1)
    prefix = N - len(text) - 1
    torch.testing.assert_close(ours, ref[prefix - 1: N - 1, :V], **LOGIT_TOL)
    # without the LoRA scaling the logits would differ (the check is not vacuous)
    wrong, _ = their_logits(tiny_llm_dir, state, n, "avsr", feats, rates, {"audio": "audio_proj.", "video": "video_proj."},
                            {"audio": False, "video": True}, their_ids[1:-1], text, [""], 0.125)
    assert (wrong[prefix - 1: N - 1, :V] - ours).abs().max() > 1e-3

    # AV-HuBERT: the checkpoint's BatchNorm statistics and their LoRA (scaling 2) on q / v
    from espnet_omni_avsr.encoders.avhubert_checkpoint import read_avhubert_checkpoint
    from espnet_omni_avsr.encoders.avhubert_modules import AVHubertModel

    arch = read_avhubert_checkpoint(tiny_avhubert_checkpoint).arch
    ref_enc = AVHubertModel(arch)
    ref_enc.load_state_dict({k: state["video_encoder." + k] for k in ref_enc.state_dict()})
    ref_enc.eval()
    frames = torch.randn(1, 6, 32, 32)
    handles = lora_hooks(ref_enc.encoder.layers, state, "video_encoder.encoder.layers", [""], 2.0)
    with torch.no_grad():
        expected = ref_enc(frames, None, torch.zeros(1, 6, dtype=torch.bool))
        got, _, _ = model.video.encoder(frames, torch.tensor([6]))
    for h in handles:
        h.remove()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

    # the archive decodes raw inputs with the project's tools
    hyp = rec.transcribe([dict(speech=torch.randn(16000).numpy() * 0.1,
                               video=torch.randint(0, 256, (25, 40, 40), dtype=torch.uint8).numpy())])
    assert len(hyp) == 1 and isinstance(hyp[0], str)


def test_omni_avsr_st_lightning_matches_their_equations(tmp_path, tiny_llm_dir, tiny_whisper_dir, tiny_avhubert_checkpoint,
                                                        monkeypatch):
    """Omni-AVSR-ST from a Lightning .ckpt: task + shared LoRA summed, per-rate projectors in the
    order of --downsample-ratio-* (audio [4, 2], video [2, 1], read from hyper_parameters), stored
    prompts decoded into the instructions."""
    projectors = {"audio": dict(in_dims=[32, 32], per_rate=True, hidden=24, norm=False),
                  "video": dict(in_dims=[32, 32], per_rate=True, hidden=24, norm=False)}
    prompts_text = {"audio": "transcribe speech to text.", "video": "transcribe video to text.",
                    "audiovisual": "transcribe speech and video to text."}
    prompts = {m: tokens(tiny_llm_dir, t) for m, t in prompts_text.items()}
    state, n = their_state(tiny_llm_dir, tiny_whisper_dir, tiny_avhubert_checkpoint, projectors=projectors,
                           lora_sets=("audio", "video", "audiovisual", "shared"), reduction=16, prompts=prompts, seed=3)
    ckpt = tmp_path / "epoch=7.ckpt"
    save_lightning(ckpt, state, dict(rank=16, alpha=4, downsample_ratio_audio=[4, 2], downsample_ratio_video=[2, 1],
                                     compression_mode="avg-pooling", matry_weights=[1.0, 1.5, 1.0]), monkeypatch)
    code, out = run_import(tmp_path, "omni", ["--format", "omni_avsr", "--checkpoint", str(ckpt), "--llm_dir", tiny_llm_dir,
                                              "--whisper_dir", tiny_whisper_dir, "--avhubert", tiny_avhubert_checkpoint,
                                              "--crop_size", "32"])
    assert code == 0
    rec, report = load_archive(out, tmp_path)
    model = rec.model
    assert report["checkpoint_kind"] == "lightning" and sum(report["keys"].values()) == len(state)
    assert rec.args.llm_adapter == "shared_task_lora" and report["lora"]["scaling"] == pytest.approx(0.25)
    assert rec.args.audio_rates == [4, 2] and rec.args.video_rates == [2, 1]
    assert rec.args.model_conf["instructions"] == {t: prompts_text[THEIR_TASK[t]] for t in ("avsr", "asr", "vsr")}
    assert report["mapped"]["audio_proj.1.0.weight"] == "audio.projectors.2.fc1.weight"

    torch.manual_seed(2)
    feats = {"audio": torch.randn(1, 16, 32), "video": torch.randn(1, 8, 32)}
    text = tokens(tiny_llm_dir, "set green by a nine soon")
    for task, rates, index in (("asr", {"audio": 2}, {"audio": 1}), ("vsr", {"video": 2}, {"video": 0}),
                               ("avsr", {"audio": 4, "video": 1}, {"audio": 0, "video": 1})):
        prefix_keys = {m: f"{m}_proj.{index[m]}." for m in rates}
        ref, N = their_logits(tiny_llm_dir, state, n, task, feats, rates, prefix_keys, {m: False for m in rates},
                              prompts[THEIR_TASK[task]], text, [THEIR_TASK[task], "shared"], 0.25)
        ours = our_logits(model, task, feats, rates, text)
        torch.testing.assert_close(ours, ref[N - len(text) - 2: N - 1, :ours.size(1)], **LOGIT_TOL)


def test_unknown_key_and_wrong_format_are_named(tmp_path, tiny_llm_dir, tiny_whisper_dir, caplog):
    """An extra key stops the import naming it (or is listed with --allow_unknown_keys); task-specific
    LoRA keys under --format llama_avsr point to omni_avsr. The ASR model stacks 2 frames: its
    rate comes from the projector's input size (64 = 2 x 32)."""
    projectors = {"audio": dict(in_dims=[64], per_rate=False, hidden=16, norm=False)}
    state, n = their_state(tiny_llm_dir, tiny_whisper_dir, projectors=projectors, seed=5)
    state["decoder_extra.weight"] = torch.zeros(3)
    ckpt = tmp_path / "ASR_tiny.pth"
    torch.save(state, ckpt)
    argv = ["--format", "llama_avsr", "--checkpoint", str(ckpt), "--llm_dir", tiny_llm_dir, "--whisper_dir", tiny_whisper_dir]
    with caplog.at_level(logging.ERROR):
        code, _ = run_import(tmp_path, "asr", argv)
    assert code == 1 and "decoder_extra.weight" in caplog.text and "--allow_unknown_keys" in caplog.text

    code, out = run_import(tmp_path, "asr", argv + ["--allow_unknown_keys"])
    assert code == 0
    rec, report = load_archive(out, tmp_path)
    assert list(report["unknown"]) == ["decoder_extra.weight"] and sum(report["keys"].values()) == len(state)
    assert rec.args.audio_compressor == "stack" and rec.args.audio_compressor_conf == {"rate": 2}
    assert report["lora"]["scaling"] == 0.125  # not stored in a .pth: the released checkpoints' value

    # a stacked ASR model: their stacking (frames t*2, t*2+1 concatenated) then the projector
    feats = {"audio": torch.randn(1, 12, 32)}
    text = tokens(tiny_llm_dir, "please soon")
    instr = tokens(tiny_llm_dir, "Transcribe speech to text.")
    stacked = feats["audio"].reshape(1, 6, 64)
    table = state["llm.model.embed_tokens.weight"]
    proj = their_projector(state, "audio_proj.", stacked[0], False)
    embeds = torch.cat([table[[0]], table[[n + 1]], proj, table[[n + 2]], table[instr], table[text], table[[1]]])[None]
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(tiny_llm_dir, dtype=torch.float32).eval()
    handles = lora_hooks(llm.model.layers, state, "llm.model.layers", [""], 0.125)
    with torch.no_grad():
        ref = llm(inputs_embeds=embeds).logits[0]
    for h in handles:
        h.remove()
    ours = our_logits(rec.model, "asr", feats, {"audio": 2}, text)
    N = embeds.size(1)
    torch.testing.assert_close(ours, ref[N - len(text) - 2: N - 1, :ours.size(1)], **LOGIT_TOL)

    # Omni-AVSR task-specific LoRA keys given as llama_avsr
    omni = {k.replace("lora_down_Q.weight", "lora_down_Q.audio.weight"): v for k, v in state.items()
            if k != "decoder_extra.weight"}
    torch.save(omni, tmp_path / "omni_as_llama.pth")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        code, _ = run_import(tmp_path, "wrong_format", ["--format", "llama_avsr", "--checkpoint",
                                                        str(tmp_path / "omni_as_llama.pth"), "--llm_dir", tiny_llm_dir,
                                                        "--whisper_dir", tiny_whisper_dir])
    assert code == 1
    assert "llm.model.layers.0.self_attn.lora_down_Q.audio.weight" in caplog.text and "--format omni_avsr" in caplog.text


def test_wrong_llm_size_names_keys_and_the_likely_llm(tmp_path, tiny_llm_dir, tiny_whisper_dir, caplog):
    from espnet_omni_avsr.pretrained.tiny_random import build_tiny_llama
    from espnet_omni_avsr.utils.official_checkpoints import CheckpointImportError, OfficialLayout, check_llm, likely_llms

    other = tmp_path / "tiny_llama_48"
    build_tiny_llama(str(other), hidden_size=48)
    state, _ = their_state(tiny_llm_dir, projectors={"audio": dict(in_dims=[32], per_rate=False, hidden=16, norm=False)})
    torch.save(state, tmp_path / "asr32.pth")
    with caplog.at_level(logging.ERROR):
        code, _ = run_import(tmp_path, "wrong_llm", ["--format", "llama_avsr", "--checkpoint", str(tmp_path / "asr32.pth"),
                                                     "--llm_dir", str(other), "--whisper_dir", tiny_whisper_dir,
                                                     "--audio_rates", "4"])
    assert code == 1
    assert "llm.model.layers.0.self_attn.lora_down_Q.weight" in caplog.text and "hidden 32" in caplog.text
    assert "--llm_dir" in caplog.text and "hidden 48" in caplog.text

    # the released sizes are named: hidden 2048, 16 layers, v_proj 512 -> a Llama 3.2-1B folder
    assert likely_llms(2048, 16, 512) == ["Llama-3.2-1B"]
    assert likely_llms(2048) == ["TinyLlama_v1.1", "Llama-3.2-1B", "Qwen2.5-3B"]
    lay = OfficialLayout(fmt="omni_avsr", hidden=2048, lora_layers=16, kv_dim=512, lora_dim=64,
                         hidden_keys=["llm.model.layers.0.self_attn.lora_down_Q.audio.weight (64, 2048)"])

    class Qwen05:  # Qwen2.5-0.5B's config.json sizes
        hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, model_type = 896, 24, 14, 2, "qwen2"

    with pytest.raises(CheckpointImportError) as e:
        check_llm(lay, Qwen05, 151665, "pretrained/Qwen2.5-0.5B")
    msg = str(e.value)
    assert "lora_down_Q.audio.weight (64, 2048)" in msg and "Llama-3.2-1B" in msg and "--llm_dir" in msg
