"""The model works with the transformers tools users already have: Seq2SeqTrainer and PEFT (LoRA)."""

from __future__ import annotations

import pytest
import torch
from transformer_helpers import multi30k_word_batch, tiny_config, trained_like
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


def test_seq2seq_trainer_trains_and_predicts_with_generate(multi30k, tmp_path):
    input_ids, attention_mask, labels, vocab = multi30k_word_batch(multi30k.parent, n_pairs=16)
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
    # Without generation the predictions are the model's outputs: one row per sample in each (the
    # per-batch nll_loss is not one of them, as the loss is not).
    trainer.args.predict_with_generate = False
    outputs = trainer.predict(dataset).predictions
    assert [array.shape[0] for array in outputs] == [len(dataset)] * len(outputs)


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


def test_a_lora_adapter_on_the_embeddings_trains_and_generates():
    peft = pytest.importorskip("peft", reason="peft is not installed")
    torch.manual_seed(0)
    model = FixupTransformerForConditionalGeneration(tiny_config())
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["embed_tokens", "qkv_proj"]))
    source = torch.randint(3, 97, (2, 6))
    peft_model(input_ids=source, labels=torch.randint(3, 97, (2, 5))).loss.backward()
    assert any(p.grad is not None for n, p in peft_model.named_parameters() if "embed_tokens.lora" in n)
    with pytest.raises(RuntimeError, match="outside the vocabulary"):  # read from the wrapped table
        peft_model(input_ids=torch.tensor([[97, 1]]), labels=torch.tensor([[3, 1]]))
    assert peft_model.generate(input_ids=source, max_new_tokens=3).shape[0] == 2


def test_lora_adapters_act_in_training_forwards_on_every_projection():
    """Training forwards fold Fixup's scalars into plain linears; an adapter-wrapped projection must still
    run its own forward (reading its base ``weight`` would silently train nothing)."""
    peft = pytest.importorskip("peft", reason="peft is not installed")
    torch.manual_seed(0)
    model = trained_like(FixupTransformerForConditionalGeneration(tiny_config()))
    targets = ["qkv_proj", "q_proj", "kv_proj", "out_proj", "fc1", "fc2"]
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    with torch.no_grad():  # LoRA starts as a no-op (B = 0); make every adapter change its layer
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)
    source, labels = torch.randint(3, 97, (2, 6)), torch.randint(3, 97, (2, 5))

    peft_model.train()
    train_loss = peft_model(input_ids=source, labels=labels).loss
    train_loss.backward()
    peft_model.eval()
    with torch.no_grad():
        eval_loss = peft_model(input_ids=source, labels=labels).loss
        with peft_model.disable_adapter():
            base_loss = peft_model(input_ids=source, labels=labels).loss

    assert torch.allclose(train_loss, eval_loss, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(eval_loss, base_loss, rtol=1e-3, atol=1e-3)
    no_gradient = [n for n, p in peft_model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_gradient, f"adapters bypassed in training: {no_gradient}"


def test_fold_scalars_refuses_adapter_wrapped_layers_and_changes_nothing():
    peft = pytest.importorskip("peft", reason="peft is not installed")
    model = trained_like(FixupTransformerForConditionalGeneration(tiny_config()))
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["fc1"]))
    peft_model.eval()
    before = {name: p.clone() for name, p in model.state_dict().items()}
    with pytest.raises(TypeError, match=r"model\.encoder\.layers\.0\.ffn\.fc1 is wrapped.*merge_and_unload"):
        model.fold_scalars()
    assert not model.config.scalars_folded
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())
    merged = peft_model.merge_and_unload()
    assert merged.fold_scalars().config.scalars_folded


def test_hooked_linears_run_their_own_forward_in_training():
    """Accelerate's device_map/offload hooks (``_hf_hook``) act in a module's forward: a training forward
    must call hooked projections and the output layer rather than read their weights (folding)."""
    from accelerate.hooks import ModelHook, add_hook_to_module

    class Counting(ModelHook):
        calls = 0

        def pre_forward(self, module, *args, **kwargs):
            Counting.calls += 1
            return args, kwargs

    torch.manual_seed(0)
    model = trained_like(FixupTransformerForConditionalGeneration(tiny_config())).train()
    source, labels = torch.randint(3, 97, (2, 6)), torch.randint(3, 97, (2, 5))
    expected = model(input_ids=source, labels=labels).loss
    layer = model.model.encoder.layers[0]
    hooked = [layer.self_attn.qkv_proj, layer.self_attn.out_proj, layer.ffn.fc1, layer.ffn.fc2, model.lm_head]
    for module in hooked:
        add_hook_to_module(module, Counting())
    loss = model(input_ids=source, labels=labels).loss
    assert Counting.calls == len(hooked)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
