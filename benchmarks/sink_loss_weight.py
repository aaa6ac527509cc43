"""Does the sink decorrelation loss at weight w leave room for the LLM cross entropy?

    cd egs2/avgrid/avsr1 && python ../../../benchmarks/sink_loss_weight.py --model exp/multitask_small \\
        --data dump/train --weights 0 10 1e4 --steps 9

Trains a copy of the model on one fixed batch (AdamW, lr 1e-3, gradient clipping at 10, as the
recipe) with the loss terms replaced by the LLM cross entropy + w x sink decorrelation, and prints
the cross entropy and the (unweighted) sink loss per step for each weight. A weight that makes the
cross entropy rise while the w = 0 run's falls starves the recognition objective.
"""
import argparse
import copy

import torch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exp dir or packed archive")
    p.add_argument("--data", required=True, help="a dump set dir")
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 10.0, 1e4])
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    a = p.parse_args()

    from espnet_omni_avsr.losses.llm_cross_entropy import LLMCrossEntropy
    from espnet_omni_avsr.losses.sink_decorrelation import SinkDecorrelation
    from espnet_omni_avsr.names import data_triples
    from espnet_omni_avsr.recognizer import AVSRRecognizer
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask

    rec = AVSRRecognizer.from_pretrained(a.model)
    model = rec.model
    loader = AVSRLLMTask.build_streaming_iterator(
        data_triples(a.data, None, text=True), preprocess_fn=rec.preprocess, collate_fn=rec.collate,
        dtype="float32", batch_size=a.batch_size, num_workers=0, allow_variable_data_keys=True, inference=True,
    )
    _, batch = next(iter(loader))
    # the two terms have no weights of their own: the state to restore is the same for every w
    model.losses = torch.nn.ModuleDict({"llm": LLMCrossEntropy("llm"), "sink": SinkDecorrelation(weight=1.0)})
    start = copy.deepcopy(model.state_dict())
    for w in a.weights:
        model.load_state_dict(start)
        model.losses["sink"].weight = w
        model.train()
        params = [q for q in model.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=a.lr)
        torch.manual_seed(0)
        for step in range(a.steps):
            loss, stats, _ = model(**batch)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            ce = sum(float(v) for k, v in stats.items() if k.startswith("loss_")) / max(
                1, sum(k.startswith("loss_") for k in stats))
            print(f"weight {w:g} step {step}: LLM cross entropy (mean over tasks) {ce:.3f}, "
                  f"sink decorrelation {float(stats['sink_decorrelation']):.4f}", flush=True)


if __name__ == "__main__":
    main()
