"""When to use which method: the guide's five decision rules as one tested function (notebooks/10).

The guide's rules, in the order :func:`recommend` applies them:

4. fine-tuning a model      -> bitsandbytes NF4 + LoRA (QLoRA)
3. CPU / edge deployment    -> GGUF (llama.cpp): Q8_0 if it fits and quality comes first, else Q4_K_M
   (added) the 16-bit model fits and quality comes first -> don't quantize
   (added) serving on a GPU with FP8 (compute capability >= 8.9) where FP8 fits -> FP8 W8A8 (notebooks/13)
2. GPU inference serving    -> GPTQ or AWQ, whichever lost less quality in *your* measurements
5. maximum quality at 4 bit -> the 4-bit method with the smallest measured perplexity increase
1. quick experimentation    -> bitsandbytes (8-bit if it fits, else NF4)

``measured`` is the ``results`` list of ``quantlab compare`` (results.json); when given, rules 2 and 5
pick by measured Δppl instead of the guide's claim that AWQ always wins.

Besides the method, a recommendation names a quantized KV cache (``kv-int8`` or ``kv-int4``, notebooks/13) when
the situation's 16-bit KV cache (``kv_cache_gb``) would not fit beside the weights.
"""

import math
from dataclasses import dataclass

from quantlab import memory

HEADROOM = 1.2  # weights may use at most 1/1.2 of the budget: the KV cache and activations need the rest

CONFIGS = {
    "baseline": 'AutoModelForCausalLM.from_pretrained(model_id, dtype="auto", device_map="auto")',
    "bnb-int8": ("AutoModelForCausalLM.from_pretrained(model_id, device_map=\"auto\",\n"
                 "    quantization_config=BitsAndBytesConfig(load_in_8bit=True))"),
    "bnb-nf4": ("AutoModelForCausalLM.from_pretrained(model_id, device_map=\"auto\",\n"
                "    quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=\"nf4\",\n"
                "        bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16))  # float16 on a T4"),
    "gptq-int4": ("AutoModelForCausalLM.from_pretrained(model_id, device_map=\"auto\",\n"
                  "    quantization_config=GPTQConfig(bits=4, group_size=128, dataset=texts, tokenizer=tok))"),
    "awq-int4": ("model = GPTQModel.load(model_id, AWQConfig(bits=4, group_size=128, sym=False))  # zero point\n"
                 "model.quantize(calibration_texts); model.save(out_dir)  # then from_pretrained(out_dir)"),
    "fp8-w8a8": ("AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.bfloat16, device_map=\"auto\",\n"
                 "    quantization_config=TorchAoConfig(\n"
                 "        Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())))"),
    "fp8-wo": ("AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.bfloat16, device_map=\"auto\",\n"
               "    quantization_config=TorchAoConfig(Float8WeightOnlyConfig()))"),
    "hqq-int4": ("model = AutoModelForCausalLM.from_pretrained(model_id, dtype=\"auto\", device_map=\"auto\")\n"
                 "AutoHQQHFModel.quantize_model(model, compute_dtype=model.dtype, device=model.device,\n"
                 "    quant_config=BaseQuantizeConfig(nbits=4, group_size=64, axis=1))  # no calibration data\n"
                 "# (hqq's own API: transformers 5.17's HqqConfig cannot quantize on load)"),
    "kv-int8": 'model.generate(**inputs, past_key_values=QuantizedCache(backend="hqq", config=model.config, nbits=8))',
    "kv-int4": 'model.generate(**inputs, past_key_values=QuantizedCache(backend="hqq", config=model.config, nbits=4))',
    "gguf-q8_0": 'AutoModelForCausalLM.from_pretrained(folder, gguf_file="model-Q8_0.gguf")  # or llama.cpp',
    "gguf-q4_0": 'AutoModelForCausalLM.from_pretrained(folder, gguf_file="model-Q4_0.gguf")  # or llama.cpp',
    "gguf-q4_k_m": ("# llama.cpp: llama-quantize model-F16.gguf model-Q4_K_M.gguf Q4_K_M (or download a Q4_K_M file)\n"
                    "llm = llama_cpp.Llama(model_path=\"model-Q4_K_M.gguf\", n_ctx=4096)\n"
                    "# or, dequantized to float: AutoModelForCausalLM.from_pretrained(folder, "
                    "gguf_file=\"model-Q4_K_M.gguf\")"),
}
FOUR_BIT = ("gptq-int4", "awq-int4", "bnb-nf4", "gguf-q4_0", "gguf-q4_k_m", "hqq-int4")
FP8_CAPABILITY = 8.9  # FP8 tensor cores (quantlab.methods.FP8_CAPABILITY)
FP8 = memory.WeightFormat("FP8 E4M3 per row", 8, None, scale_bits=32)


@dataclass(frozen=True)
class Situation:
    device: str = "cuda"  # "cuda", "cpu" or "mps"
    memory_budget_gb: float = 16.0  # GPU memory (or RAM on CPU) you can give the model
    model_params_b: float = 7.0  # billions of parameters
    fine_tune: bool = False
    target: str = "experiment"  # "experiment", "serving" or "edge"
    priority: str = "quality"  # "quality", "speed" or "size"
    compute_capability: float | None = None  # the GPU's, e.g. 9.0 for an H100; None: unknown or no GPU
    kv_cache_gb: float = 0.0  # the 16-bit KV cache of your context and batch (notebooks/13's arithmetic)


@dataclass(frozen=True)
class Recommendation:
    method: str  # a quantlab.methods registry name
    rule: str  # which rule decided
    reason: str
    config: str  # the library call to copy
    kv_cache: str | None = None  # "kv-int8" or "kv-int4" when the 16-bit KV cache would not fit beside the weights


def weight_gb(params_b: float, fmt: memory.WeightFormat) -> float:
    """Weights of a ``params_b``-billion-parameter model stored in ``fmt`` (all of it, a slight overestimate)."""
    return params_b * fmt.bits_per_weight(4096) / 8


def fits(situation: Situation, fmt: memory.WeightFormat) -> bool:
    return weight_gb(situation.model_params_b, fmt) * HEADROOM <= situation.memory_budget_gb


def kv_cache_choice(situation: Situation, method_format: memory.WeightFormat) -> str | None:
    """None when the 16-bit KV cache fits beside the weights in ``method_format``; else the quantized cache that
    does, 8-bit if it is enough (nearly free, notebooks/13), else 4-bit."""
    left = situation.memory_budget_gb - weight_gb(situation.model_params_b, method_format) * HEADROOM
    if situation.kv_cache_gb <= left:
        return None
    return "kv-int8" if situation.kv_cache_gb / 2 <= left else "kv-int4"


def _measured_best(candidates: tuple[str, ...], measured: list[dict] | None) -> str | None:
    ok = [r for r in measured or [] if r.get("method") in candidates and r.get("delta_ppl_pct") is not None
          and math.isfinite(r["delta_ppl_pct"])]  # a failed method (NaN perplexity) is no candidate
    return min(ok, key=lambda r: r["delta_ppl_pct"])["method"] if ok else None


def _pick(method: str, rule: str, reason: str) -> Recommendation:
    return Recommendation(method, rule, reason, CONFIGS[method])


def recommend(situation: Situation, measured: list[dict] | None = None) -> Recommendation:
    """The method to use in ``situation``, the rule that decided, why, the config to copy, and the quantized KV
    cache to add when the 16-bit one would not fit beside the weights."""
    from dataclasses import replace

    from quantlab import methods

    choice = _recommend_method(situation, measured)
    fmt = methods.get(choice.method).weight_format(methods.Settings(dtype="bfloat16", group_size=128))
    return replace(choice, kv_cache=kv_cache_choice(situation, fmt))


def _recommend_method(situation: Situation, measured: list[dict] | None) -> Recommendation:
    s = situation
    size = f"{s.model_params_b:g}B parameters"
    if s.fine_tune:
        return _pick("bnb-nf4", "rule 4: fine-tuning",
                     f"QLoRA: train LoRA adapters on a frozen NF4 base; {size} take about "
                     f"{weight_gb(s.model_params_b, memory.NF4_DOUBLE_QUANT):.1f} GB in NF4.")
    if s.target == "edge" or s.device != "cuda" and s.target == "serving":
        q8 = memory.gguf_format("Q8_0")
        method = "gguf-q8_0" if fits(s, q8) and s.priority == "quality" else "gguf-q4_k_m"
        return _pick(method, "rule 3: CPU / edge",
                     "llama.cpp runs GGUF on CPUs and small devices; Q8_0 is near-lossless, Q4_K_M (llama.cpp's "
                     "usual 4-bit choice) about half its size and better than Q4_0 at a similar size.")
    if s.priority == "quality" and fits(s, memory.FLOAT_FORMATS["bf16"]):
        return _pick("baseline", "fits in 16 bit",
                     f"{weight_gb(s.model_params_b, memory.FLOAT_FORMATS['bf16']):.1f} GB of 16-bit weights fit in "
                     f"{s.memory_budget_gb:g} GB: quantization would only cost quality.")
    if s.target == "serving" and s.device == "cuda" and (s.compute_capability or 0) >= FP8_CAPABILITY and fits(s, FP8):
        return _pick("fp8-w8a8", "FP8 serving (added)",
                     f"this GPU ({s.compute_capability:g}) has FP8 tensor cores and FP8 weights fit "
                     f"({weight_gb(s.model_params_b, FP8):.1f} GB): near-lossless in large evaluations "
                     "(Kurtic et al., ACL 2025) and the matmul runs in FP8.")
    if s.target == "serving":
        best = _measured_best(("gptq-int4", "awq-int4"), measured) or "awq-int4"
        source = "lower measured Δppl" if measured else "the guide's default (no measurements given)"
        return _pick(best, "rule 2: GPU serving", f"pre-quantized int4 with fast GPU kernels; {best} by {source}.")
    if s.priority == "quality":
        best = _measured_best(FOUR_BIT, measured) or "awq-int4"
        return _pick(best, "rule 5: best quality at 4 bit",
                     f"{best} lost the least perplexity" + (" in your run." if measured else " per the guide."))
    method = "bnb-int8" if fits(s, memory.LLM_INT8) and s.priority != "size" else "bnb-nf4"
    return _pick(method, "rule 1: quick experiment",
                 "bitsandbytes quantizes while loading: no calibration, one config line.")
