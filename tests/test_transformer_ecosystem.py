"""The model works with the transformers tools users already have: Seq2SeqTrainer and PEFT (LoRA)."""

from __future__ import annotations

import pytest
import torch
from transformer_helpers import multi30k_word_batch, tiny_config
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

from fixup_transformer import FixupTransformerForConditionalGeneration


class PairDataset(torch.utils.data.Dataset):
    def __init__(self, input_ids, attention_mask, labels):
        self.rows = list(zip(input_ids, attention_mask, labels, strict=True))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        input_ids, attention_mask, labels = self.rows[index]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def test_seq2seq_trainer_trains_and_predicts_with_generate(shared_data_dir, tmp_path):
    input_ids, attention_mask, labels, vocab = multi30k_word_batch(shared_data_dir, n_pairs=16)
    torch.manual_seed(0)
    model = FixupTransformerForConditionalGeneration(tiny_config(vocab_size=vocab, label_smoothing=0.1))
    dataset = PairDataset(input_ids, attention_mask, labels)
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        gradient_accumulation_steps=2,
        learning_rate=3e-3,
        max_steps=12,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        predict_with_generate=True,
        generation_max_length=12,
        use_cpu=True,
        seed=0,
    )
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]
    prediction = trainer.predict(dataset)
    assert prediction.predictions.shape[0] == len(dataset)


def test_lora_adapters_attach_to_the_attention_and_ffn_projections():
    peft = pytest.importorskip("peft", reason="peft is not installed")
    torch.manual_seed(0)
    model = FixupTransformerForConditionalGeneration(tiny_config())
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv_proj", "q_proj", "kv_proj", "fc1"])
    peft_model = peft.get_peft_model(model, lora)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    source = torch.randint(3, 97, (2, 6))
    loss = peft_model(input_ids=source, labels=torch.randint(3, 97, (2, 5))).loss
    loss.backward()
    generated = peft_model.generate(input_ids=source, max_new_tokens=4)
    assert generated.shape[0] == 2
