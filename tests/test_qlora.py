"""The QLoRA recipe of notebooks/08_bnb_nf4_qlora lowers the training loss, on a 2-block cut of the default model."""

import pytest
import torch

pytest.importorskip("bitsandbytes")
peft = pytest.importorskip("peft")

from quantlab import data, models  # noqa: E402

SEED = 0
STEPS = 4


@pytest.fixture(scope="module")
def qlora_model():
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(models.resolve().path, num_hidden_layers=2, dtype=torch.float32,
                                                 quantization_config=config)
    model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    return peft.get_peft_model(model, lora)


def test_only_the_adapters_train(qlora_model):
    trainable = {name for name, p in qlora_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert len(trainable) == 2 * 7 * 2  # A and B, 7 Linear layers per block, 2 blocks


def test_training_lowers_the_loss(qlora_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models.resolve().path)
    batches = data.calibration_token_ids(tokenizer, n_samples=2 * STEPS, seq_len=32, seed=SEED).view(STEPS, 2, 32)
    optimizer = torch.optim.AdamW([p for p in qlora_model.parameters() if p.requires_grad], lr=1e-3)
    torch.manual_seed(SEED)
    qlora_model.train()
    losses = []
    for batch in [*batches, *batches]:  # two passes over the same batches
        batch = batch.to(qlora_model.device)  # bitsandbytes puts the model on the GPU when there is one
        loss = qlora_model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert sum(losses[STEPS:]) < sum(losses[:STEPS])  # the second pass over the same text scores better
