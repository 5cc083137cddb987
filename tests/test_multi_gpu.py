"""Models that outgrow one GPU: ``device_map="auto"`` with a ``max_memory`` that forces a split over two GPUs
places layers on both and generates the same greedy text as one GPU (the recipe of notebooks/10). Runs only
where there are two GPUs (`tests/gpu_runner/README.md`: the two-GPU runner)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from quantlab import generate, models

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")

PROMPT = "The capital of France is"
CONFIGS = {
    "fp16": ({"dtype": torch.float16}, "150MiB"),
    "nf4": ({"dtype": torch.float16, "quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float16)}, "80MiB"),
}


NF4_KEPT_WHOLE = ("seen on 2 x H200 (2026-11-27): with GPU-0 budgets of 60, 80 and 100 MiB, device_map='auto' kept the "
                  "NF4 model on one GPU (no hf_device_map), with the same greedy text")


@pytest.mark.parametrize("name", ["fp16", pytest.param("nf4", marks=pytest.mark.xfail(strict=True,
                                                                                     reason=NF4_KEPT_WHOLE))])
def test_split_over_two_gpus_generates_the_same_text(name):
    kwargs, first_gpu_budget = CONFIGS[name]
    src = models.resolve()
    tokenizer = AutoTokenizer.from_pretrained(src.path)
    one = AutoModelForCausalLM.from_pretrained(src.path, device_map={"": 0}, **kwargs)
    expected = generate.generate(one, tokenizer, PROMPT, max_new_tokens=20)
    del one
    split = AutoModelForCausalLM.from_pretrained(
        src.path, device_map="auto", max_memory={0: first_gpu_budget, 1: "20GiB"}, **kwargs)
    text = generate.generate(split, tokenizer, PROMPT, max_new_tokens=20)
    placement = getattr(split, "hf_device_map", {})  # transformers sets it only for a split model
    print(f"{name}: {placement}\n{name}: one GPU {expected!r}, two GPUs {text!r}")
    assert sorted(set(placement.values()), key=str) == [0, 1]
    assert text == expected
