"""GPTQ against round-to-nearest, one matrix at a time, on the calibration tokens and on held-out tokens.

GPTQ minimises the output error on the calibration inputs; with few tokens per input dimension it fits
them and can do worse than RTN on text it did not see. This script measures that directly: for a few
matrices of the dense model it records their inputs on ``--nsamples`` calibration windows and on
``--heldout`` windows disjoint from them (same C4 sample, same sampling), quantises each weight with RTN and
with GPTQ (Hessian 2·XᵀX/n of the calibration inputs), and prints the relative output error
‖X(W − Q)ᵀ‖² / ‖XWᵀ‖² on both sets. Usage (2 CPU cores, no network, about a minute per setting)::

    HF_HUB_OFFLINE=1 python benchmarks/gptq_holdout.py --nsamples 16 128 --seqlen 512 --group-size 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ModelFactory, Session, markdown_table, print_report  # noqa: E402

DEFAULT_MATRICES = ("model.layers.3.self_attn.q_proj", "model.layers.3.mlp.down_proj",
                    "model.layers.15.mlp.up_proj", "model.layers.25.self_attn.o_proj")


def layer_inputs(model: torch.nn.Module, names: list[str], windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every token's input to each named Linear over ``windows`` (float64, (tokens, in))."""
    modules = dict(model.named_modules())
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def record(name: str) -> Any:
        def hook(module: torch.nn.Module, args: tuple) -> None:
            seen[name].append(args[0].detach().reshape(-1, args[0].shape[-1]).double())
        return hook

    handles = [modules[name].register_forward_pre_hook(record(name)) for name in names]
    try:
        with torch.no_grad():
            for window in windows:
                model(window[None].to(model.device))
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in seen.items()}


def relative_error(inputs: torch.Tensor, weight: torch.Tensor, approximation: torch.Tensor) -> float:
    x = inputs.float()
    return float((x @ (weight - approximation).T).pow(2).mean() / (x @ weight.T).pow(2).mean())


def main(argv: list[str] | None = None, factory: ModelFactory | None = None) -> str:
    from optimum_alpha.data import sample_calibration
    from optimum_alpha.quantization import QuantSpec, rtn
    from optimum_alpha.quantization.gptq import gptq

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--matrices", nargs="+", default=list(DEFAULT_MATRICES))
    parser.add_argument("--nsamples", nargs="+", type=int, default=[16, 128])
    parser.add_argument("--heldout", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--dataset", default="c4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--damp", type=float, default=0.1, help="GPTQ dampening (the library's quant_damp)")
    parser.add_argument("--no-act-order", dest="act_order", action="store_false",
                        help="GPTQ in the inputs' own order (the library's default is activation order)")
    args = parser.parse_args(argv)
    session = Session(args.model, factory=factory)
    model, spec = session.model, QuantSpec(args.bits, args.group_size)
    modules = dict(model.named_modules())
    rows = []
    for nsamples in args.nsamples:
        sample = sample_calibration(session.tokenizer, args.dataset, nsamples, args.seqlen, seed=args.seed,
                                    heldout=args.heldout)
        seen = layer_inputs(model, args.matrices, sample.ids)
        unseen = layer_inputs(model, args.matrices, sample.heldout)
        for name in args.matrices:
            weight = modules[name].weight.detach().float()
            inputs = seen[name]
            hessian = (2 * inputs.T @ inputs / inputs.shape[0]).float()
            rounded, solved = rtn(weight, spec).weight(), gptq(weight, hessian, spec, name=name, percdamp=args.damp,
                                                                act_order=args.act_order).weight()
            rows.append([nsamples, f"{inputs.shape[0]} ({inputs.shape[0] / weight.shape[1]:.1f}x in)", name,
                         f"{relative_error(inputs, weight, rounded):.5f}", f"{relative_error(inputs, weight, solved):.5f}",
                         f"{relative_error(unseen[name], weight, rounded):.5f}",
                         f"{relative_error(unseen[name], weight, solved):.5f}"])
    settings = (f"model {args.model}; W{args.bits}, groups of {args.group_size}, symmetric; calibration "
                f"{args.dataset} windows x {args.seqlen} tokens (seed {args.seed}, sampling "
                f"{sample.sampling}), held out: {args.heldout} windows disjoint from them; GPTQ dampening {args.damp}, "
                f"{'activation' if args.act_order else 'input'} order")
    body = markdown_table(["calibration windows", "tokens (per input)", "matrix", "RTN, calibration",
                           "GPTQ, calibration", "RTN, held out", "GPTQ, held out"], rows)
    return print_report("GPTQ vs RTN on calibration and held-out tokens", settings,
                        "relative output error ‖X(W - Q)ᵀ‖² / ‖XWᵀ‖² (lower is better)", body)


if __name__ == "__main__":
    main()
