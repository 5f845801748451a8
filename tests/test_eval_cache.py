"""The result cache: its key changes with what changes a result, and only with that; a rerun asks
again only what is new or failed as a request."""
import os

from eval.cache import (best_rows, generation_settings, model_signature, must_ask_again, request_key,
                        resolve_engines, settings_key)
from generation.config import GenerationConfig, SamplingConfig
from generation.devices import resolve_dtype

BASE = GenerationConfig(backend="hf", model="smollm2-135m-instruct")
SAMPLING = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=64)


def key(gen=BASE, sampling=SAMPLING):
    return settings_key(generation_settings(gen, sampling))


def test_key_changes_with_model_format_and_sampling_but_not_with_resources():
    assert key() == key()
    assert key(BASE.model_copy(update={"concurrency": (2, 4), "num_cpus": 2.0, "rows_per_call": 32})) == key()
    for change in ({"model": "other"}, {"prompt_format": "plain"}, {"backend": "vllm"}, {"dtype": "float32"}):
        assert key(BASE.model_copy(update=change)) != key(), change
    assert key(sampling=SAMPLING.model_copy(update={"max_tokens": 65})) != key()
    endpoint = BASE.model_copy(update={"backend": "openai", "model": "gpt-4"})
    other = endpoint.model_copy(update={"openai": endpoint.openai.model_copy(update={"base_url": "http://h/v1"})})
    assert key(other) != key(endpoint)


def test_a_retrained_local_model_gets_a_new_key(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    gen = BASE.model_copy(update={"model": str(tmp_path)})
    before = key(gen)
    assert model_signature(str(tmp_path))[0][:2] == ["model.safetensors", 10]
    (tmp_path / "model.safetensors").write_bytes(b"y" * 11)
    os.utime(tmp_path / "model.safetensors", (1, 1))
    assert key(gen) != before
    assert model_signature("smollm2-135m-instruct") is None


def test_request_key_tells_every_part_apart():
    assert request_key("1", "cb", "prompt") == request_key("1", "cb", "prompt")
    assert len({request_key("1", "cb", "prompt"), request_key("1", "bc", "prompt"), request_key("1", "cb", "prompt!"),
                request_key("1c", "b", "prompt"), request_key("2", "cb", "prompt")}) == 5


def row(request, error=None):
    return {"request": request, "answer": None if error else f"good {request}", "error": error}


def test_best_rows_prefer_a_row_that_need_not_be_asked_again():
    cached = [row("a", "generation_failed:http_500"), row("a"), row("a", "generation_failed:timeout"),
              row("b", "malformed"),  # the judge wrote it, unreadable: kept, asked again would say the same
              row("c", "generation_failed:http_500"),
              row("z")]  # not asked now (a changed instruction or answer has another request key)
    found = best_rows(cached, {"a", "b", "c", "d"})
    assert {k: r["error"] for k, r in found.items()} == {"a": None, "b": "malformed", "c": "generation_failed:http_500"}
    assert [must_ask_again(found[k]) for k in "abc"] == [False, False, True]


def test_key_covers_engine_options_resolved_dtype_and_device_and_prompt_templates():
    vllm = BASE.model_copy(update={"backend": "vllm"})
    extra = vllm.model_copy(update={"vllm": vllm.vllm.model_copy(update={"extra": {"quantization": "fp8"}})})
    assert key(extra) != key(vllm)
    assert key(extra.model_copy(update={"vllm": extra.vllm.model_copy(update={"max_num_seqs": 8})})) == key(extra)

    def engine_key(engine, templates=()):
        return settings_key(generation_settings(BASE, SAMPLING, engine, templates))

    assert engine_key({"device": "cpu", "dtype": "float32"}) != engine_key({"device": "cpu", "dtype": "bfloat16"})
    assert engine_key({"device": "cpu", "dtype": "float32"}) != engine_key({"device": "cuda", "dtype": "float32"})
    assert engine_key({}, ("Rate this: {x}",)) != engine_key({}, ("Rate that: {x}",))
    wizardlm = BASE.model_copy(update={"prompt_format": "wizardlm"})
    assert generation_settings(wizardlm, SAMPLING)["templates"] != generation_settings(
        wizardlm.model_copy(update={"prompt_format": "alpaca"}), SAMPLING)["templates"]


def test_auto_dtype_and_device_are_resolved_as_the_actors_resolve_them(local_ray):
    roles = {"a": BASE.model_copy(update={"dtype": "auto", "device": "auto"}),
             "b": BASE.model_copy(update={"dtype": "float32", "device": "cpu"}),
             "c": BASE.model_copy(update={"backend": "vllm", "dtype": "bfloat16"}),
             "d": BASE.model_copy(update={"backend": "echo"})}
    engines = resolve_engines(roles)
    assert engines == {"a": {"device": "cpu", "dtype": resolve_dtype("auto", False)},
                       "b": {"device": "cpu", "dtype": "float32"}, "c": {"device": "cpu", "dtype": "bfloat16"}}
