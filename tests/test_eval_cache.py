"""The answer cache: its key changes with what changes an answer, and only with that."""
import os

from eval.cache import answer_settings, best_answers, model_signature, settings_key
from generation.config import GenerationConfig, SamplingConfig

BASE = GenerationConfig(backend="hf", model="smollm2-135m-instruct")
SAMPLING = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=64)


def key(gen=BASE, sampling=SAMPLING):
    return settings_key(answer_settings(gen, sampling))


def test_key_changes_with_model_format_and_sampling_but_not_with_resources():
    assert key() == key()
    assert key(BASE.model_copy(update={"concurrency": (2, 4), "num_cpus": 2.0, "rows_per_call": 32})) == key()
    for change in ({"model": "other"}, {"prompt_format": "plain"}, {"backend": "vllm"}, {"dtype": "float32"}):
        assert key(BASE.model_copy(update=change)) != key(), change
    assert key(sampling=SAMPLING.model_copy(update={"max_tokens": 65})) != key()


def test_a_retrained_local_model_gets_a_new_key(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    gen = BASE.model_copy(update={"model": str(tmp_path)})
    before = key(gen)
    assert model_signature(str(tmp_path))[0][:2] == ["model.safetensors", 10]
    (tmp_path / "model.safetensors").write_bytes(b"y" * 11)
    os.utime(tmp_path / "model.safetensors", (1, 1))
    assert key(gen) != before
    assert model_signature("smollm2-135m-instruct") is None


def test_best_answers_prefers_a_good_row_and_drops_changed_instructions():
    items = [{"id": "a", "instruction": "A?"}, {"id": "b", "instruction": "B now?"}, {"id": "c", "instruction": "C?"}]
    cached = [{"id": "a", "instruction": "A?", "answer": "good", "error": None},
              {"id": "a", "instruction": "A?", "answer": None, "error": "generation_failed:x"},
              {"id": "b", "instruction": "B before?", "answer": "old", "error": None},
              {"id": "c", "instruction": "C?", "answer": None, "error": "generation_failed:x"},
              {"id": "z", "instruction": "Z?", "answer": "gone", "error": None}]
    found = best_answers(cached, items)
    assert {i: r["answer"] for i, r in found.items()} == {"a": "good", "c": None}
