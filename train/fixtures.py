"""Test and benchmark fixtures: a tiny random Llama and a synthetic evolve-style parquet folder.

Used by tests/test_train*.py and benchmarks/bench_train*.py; nothing is downloaded (the
tokenizer is the bundled small model's, so the tiny model speaks the same vocabulary).
"""
from __future__ import annotations

import random
from pathlib import Path

WORDS = ("data model train ray cluster token sequence answer question explain write list compare "
         "python table reason step first second because therefore example code function value result "
         "simple complex describe analyze summary history science music water energy market").split()


def make_tiny_model(folder: str | Path, layers: int = 2, hidden: int = 64, seed: int = 0) -> str:
    """A random LlamaConfig model (2 layers, 64 dims) + the small model's tokenizer, saved to `folder`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from common.models import SMALL_MODEL_ALIAS, resolve_model

    folder = Path(folder)
    if (folder / "config.json").exists():
        return str(folder)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(SMALL_MODEL_ALIAS))
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows with the evolve job's training columns and a long-tailed length mix like evolved data.

    Responses repeat a per-row pattern, so a model can learn them (loss goes down quickly).
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        instruction = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 60))).capitalize() + "?"
        extra = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) if i % 5 == 0 else ""
        n_words = min(int(rng.lognormvariate(4.0, 0.9)), 600)
        pattern = [rng.choice(WORDS) for _ in range(3)]
        response = " ".join(pattern[j % 3] for j in range(max(n_words, 1))).capitalize() + "."
        user = instruction + ("\n\n" + extra if extra else "")
        rows.append({"id": f"row-{i:05d}", "root_id": f"seed-{i // 4:05d}", "round": i % 4, "op": "deepening",
                     "instruction": instruction, "input": extra, "response": response,
                     "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": response}]})
    return rows


def write_evolved_parquet(folder: str | Path, rows: list[dict], files: int = 2) -> str:
    """Write rows as `files` parquet files in `folder` (the evolve job's training/parquet layout)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    per = (len(rows) + files - 1) // files
    for f in range(files):
        chunk = rows[f * per: (f + 1) * per]
        if chunk:
            pq.write_table(pa.Table.from_pylist(chunk), folder / f"part-{f:03d}.parquet")
    return str(folder)
