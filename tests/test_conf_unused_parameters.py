"""A config sets `unused_parameters: true` (ESPnet's option for DDP's find_unused_parameters)
exactly when one of its training steps can leave a trainable parameter without gradient.

Without it, multi-GPU training of such a config stops at its second step ("Expected to have
finished reduction in the prior iteration ..."): one_pair matryoshka training leaves the other
rates' projectors out of a step, and a warm-up without the LLM pass leaves the LoRA out. With it
where nothing is ever unused, every step pays for DDP's search of the autograd graph for nothing
(benchmarks/ddp_unused_parameters.py). Each config is built as the golden test builds it (tiny
pretrained folders, shrunk trainable encoders; the model type is the config's own) and trained
for a few steps on the golden batch.
"""
import pytest
import torch

from tests.models import golden

# the configs of the project (a YAML, or a YAML with its overlay), not the golden test's variants
# with changed keys
CASES = sorted(name for name, (_, overrides) in golden.variants().items() if not isinstance(overrides, dict)
               or not overrides)
STEPS = 2


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return golden.tiny_dirs(str(tmp_path_factory.mktemp("unused")))


def test_the_cases_include_the_configs_that_need_it():
    assert {"omni_avsr/omni_st_small", "omni_avsr/omni_st_paper", "variant/multitask_small_warmup"} <= set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_unused_parameters_is_set_exactly_when_a_step_leaves_a_parameter_out(name, dirs):
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask

    conf, overrides = golden.variants()[name]
    config = golden.tiny_config(conf, overrides, dirs)
    args = AVSRLLMTask.get_parser().parse_args([])
    for k, v in config.items():
        setattr(args, k, v)
    torch.manual_seed(0)
    model = AVSRLLMTask.build_model(args)
    batch = golden.make_batch(model.decoder.tokenizer)
    model.train()
    left_out = set()
    for seed in range(STEPS):
        torch.manual_seed(seed)
        model.zero_grad(set_to_none=True)
        loss, _, _ = model(**batch)
        loss.sum().backward()
        left_out |= {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    declared = bool(config.get("unused_parameters", False))
    if left_out:
        assert declared, f"{name}: steps leave {sorted(left_out)[:4]}... without gradient; set unused_parameters: true"
    else:
        assert not declared, f"{name}: every step uses every parameter; drop unused_parameters (it costs DDP time)"
