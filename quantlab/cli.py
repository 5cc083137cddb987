"""The ``quantlab`` command: ``quantlab env``, ``compare``, ``sweep`` and ``support``."""

import argparse
import sys

from quantlab.errors import QuantlabError


def _env(args) -> None:
    from quantlab.env import report

    print(report())


def _compare(args) -> None:
    """Run the comparison; when a method failed, exit non-zero (after every result is written) naming why."""
    from quantlab.compare import run

    rows = run(model_id=args.model, methods_csv=args.methods, eval_source=args.eval_text, out_dir=args.out,
               quick=args.quick, compile_decode=args.compile)
    failed = [f"{row['method']} {row['status']}" for row in rows if row["status"].startswith("failed")]
    if failed:
        raise QuantlabError(f"{len(failed)} of {len(rows)} methods failed; every result, these included, is in "
                            f"{args.out}/results.md. " + " ".join(failed))


def _support(args) -> None:
    from quantlab import support

    if support.main(["--check"] if args.check else []):
        raise QuantlabError("README.md's support matrix is out of date: run `quantlab support`.")


def _sweep(args) -> None:
    from quantlab.sweep import run

    run(sizes=args.sizes, methods_csv=args.methods, engines=args.engines, batch=args.batch, out_dir=args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="versions, hardware and which methods can run here").set_defaults(func=_env)
    compare = sub.add_parser("compare", help="quantize and measure every method on one model")
    compare.add_argument("--model", default=None, help="hub id or local folder (default: SmolLM2-135M-Instruct)")
    compare.add_argument("--methods", default=None,
                         help="comma-separated method names (default: all; see `quantlab env`)")
    compare.add_argument("--eval-text", default="shakespeare",
                         help="evaluation text: shakespeare or python-docs (offline), wikitext2 or c4 (online)")
    compare.add_argument("--out", default="results", help="output folder for results.json/.md and plots")
    compare.add_argument("--quick", action="store_true", help="small evaluation, for tests and smoke runs")
    compare.add_argument("--compile", action="store_true",
                         help="also measure decode with a static KV cache and torch.compile (GPU)")
    compare.set_defaults(func=_compare)
    supported = sub.add_parser("support", help="write README.md's support matrix from the runs in docs/runs/")
    supported.add_argument("--check", action="store_true", help="write nothing; fail if README.md is not current")
    supported.set_defaults(func=_support)
    sweep = sub.add_parser("sweep", help="decode speed and memory of model size x method x engine x batch, "
                                         "with the bandwidth floor (notebook 11)")
    sweep.add_argument("--sizes", default=None, help="comma-separated shapes (default: those that fit here; "
                                                     "quantlab.shapes.SHAPES lists them)")
    sweep.add_argument("--methods", default=None,
                       help="comma-separated methods (default: CPU baseline,gguf-q8_0,gguf-q4_k_m; "
                            "GPU baseline,bnb-int8,bnb-nf4,gptq-int4,fp8)")
    sweep.add_argument("--engines", default=None,
                       help="comma-separated engines: eager, compiled, llama.cpp, vllm (default: CPU eager,llama.cpp; "
                            "GPU eager,compiled,vllm)")
    sweep.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default: 1,8)")
    sweep.add_argument("--out", default="sweep", help="output folder for results.json/.md and plots")
    sweep.set_defaults(func=_sweep)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except QuantlabError as err:
        print(f"quantlab: {err}", file=sys.stderr)
        return 2
    return 0
