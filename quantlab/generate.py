"""Generate text from a prompt or a chat conversation (introduced in notebooks/01_setup)."""

import torch


def encode(tokenizer, prompt, device) -> dict:
    """Token ids for a plain prompt (str) or chat messages (list of {"role", "content"} dicts).

    Chat messages go through the tokenizer's chat template when it has one, with the assistant's
    turn opened; a tokenizer without a template gets the message contents joined by newlines.
    """
    if isinstance(prompt, str):
        return tokenizer(prompt, return_tensors="pt").to(device)
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        ).to(device)
    return tokenizer("\n".join(m["content"] for m in prompt), return_tensors="pt").to(device)


@torch.inference_mode()
def generate(model, tokenizer, prompt, max_new_tokens: int = 50, do_sample: bool = False,
             seed: int = 0, **generate_kwargs) -> str:
    """Return only the newly generated text. Greedy by default; sampling is seeded with ``seed``."""
    inputs = encode(tokenizer, prompt, model.device)
    if do_sample:
        torch.manual_seed(seed)
    output = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=do_sample,
        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, **generate_kwargs,
    )
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    return tokenizer.decode(new_tokens, skip_special_tokens=True)
