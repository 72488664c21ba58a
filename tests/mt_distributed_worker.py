"""Run under ``accelerate launch`` by tests/test_train_mt_e2e.py (not collected: no ``test_`` prefix).

Trains the tiny config with the given ``--key value`` overrides, then every process writes its own
weights (to compare ranks) and the corpus translation it got back from ``translate_corpus`` with an
echo model (to check order across processes).
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from fixup_transformer.evaluation import GenerationSettings, translate_corpus
from fixup_transformer.training.config import parse_config
from fixup_transformer.training.mt import MTTrainer
from fixup_transformer.training.mt_config import MTConfig
from fixup_transformer.training.process import exit_process


class EchoModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def generate(self, input_ids, attention_mask, **kwargs):
        return input_ids


def main() -> None:
    cfg = parse_config(MTConfig, sys.argv[1:])
    trainer = MTTrainer(cfg)
    trainer.fit()
    acc = trainer.accelerator
    rank = acc.process_index
    out = Path(cfg.output_dir)
    state = {
        k: v.detach().contiguous().clone() for k, v in acc.unwrap_model(trainer.model).state_dict().items()
    }
    save_file({k: v for k, v in state.items() if k != "lm_head.weight"}, str(out / f"rank{rank}.safetensors"))
    sources = [s for s, _ in trainer.data.valid_pairs]
    hyps = translate_corpus(
        EchoModel(), trainer.data.tokenizer, sources, GenerationSettings(batch_tokens=64), accelerator=acc
    )
    (out / f"echo_rank{rank}.json").write_text(json.dumps({"world": acc.num_processes, "hyps": hyps}))
    acc.end_training()
    exit_process(0)  # before `trainer` goes out of scope: see fixup_transformer/training/process.py


if __name__ == "__main__":
    main()
