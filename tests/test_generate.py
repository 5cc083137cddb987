"""quantlab.generate: prompts, chat messages, seeded sampling."""

from quantlab import generate


def test_chat_messages_use_the_chat_template(default_model):
    model, tokenizer = default_model
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = generate.encode(tokenizer, messages, model.device)
    assert "<|im_start|>assistant" in tokenizer.decode(inputs["input_ids"][0])
    assert "Paris" in generate.generate(model, tokenizer, messages, max_new_tokens=20)


def test_sampling_is_reproducible_with_a_seed(default_model):
    model, tokenizer = default_model
    first = generate.generate(model, tokenizer, "Once upon a time", max_new_tokens=12, do_sample=True, seed=7)
    again = generate.generate(model, tokenizer, "Once upon a time", max_new_tokens=12, do_sample=True, seed=7)
    assert first == again
