"""Every model prompted as it was trained: the trained formats give the ids training gave the prompt
(BOS included), a chat format without a chat template is a config error, and the pipeline hands
train.data.template to the candidate's prompt format."""
import pytest

from common.config import ConfigError, UserError, load_config
from common.models import SMALL_MODEL_ALIAS
from common.tokenizer import load_tokenizer
from eval.config import EvaluateConfig
from eval.preflight import preflight
from generation.prompts import ALPACA_TEMPLATE, bos_ids, prompt_token_ids, render_prompt
from generation.types import GenerationError
from pipeline.config import PipelineConfig
from train.fixtures import make_llama_sp_tokenizer, make_tiny_model
from train.masking import IGNORE, hf_encoder, tokenize_row

INSTRUCTION = "Add 2 and 3, then explain the answer."


@pytest.fixture(scope="module")
def llama_model(tmp_path_factory):
    """A tiny model with a LLaMA-style SentencePiece tokenizer: BOS by itself, no chat template."""
    folder = tmp_path_factory.mktemp("llama")
    return make_tiny_model(folder / "model", tokenizer_path=make_llama_sp_tokenizer(folder / "tokenizer"))


def trained_prompt_ids(tokenizer, template: str) -> list[int]:
    """What the train job fed the model before its answer: the ids up to the first trained label."""
    example = tokenize_row({"instruction": INSTRUCTION, "response": "The answer is 5."}, template,
                           hf_encoder(tokenizer), 512, "truncate")
    start = next(i for i, label in enumerate(example.labels) if label != IGNORE)
    return example.input_ids[:start]


@pytest.mark.parametrize("template", ["wizardlm", "vicuna_v1.1"])
def test_trained_formats_prompt_the_ids_the_train_job_trained_bos_included(llama_model, template):
    for tokenizer in (load_tokenizer(llama_model), load_tokenizer(SMALL_MODEL_ALIAS)):
        ids = prompt_token_ids(INSTRUCTION, template, tokenizer)
        assert ids == trained_prompt_ids(tokenizer, template)
    llama = load_tokenizer(llama_model)
    assert bos_ids(llama) == [llama.bos_token_id] and prompt_token_ids(INSTRUCTION, "wizardlm", llama)[0] == 1
    assert prompt_token_ids(INSTRUCTION, "plain", llama)[0] != 1  # plain: the same text without BOS
    assert bos_ids(load_tokenizer(SMALL_MODEL_ALIAS)) == []  # SmolLM2's tokenizer adds none, nor does training


def test_alpaca_format_is_stanford_alpacas_prompt_after_a_bos(llama_model):
    llama = load_tokenizer(llama_model)
    assert render_prompt(f"  {INSTRUCTION} ", "alpaca") == ALPACA_TEMPLATE.format(prompt=INSTRUCTION)
    assert render_prompt(INSTRUCTION, "alpaca").endswith(f"### Instruction:\n{INSTRUCTION}\n\n### Response:")
    assert prompt_token_ids(INSTRUCTION, "alpaca", llama) == [1] + llama(
        ALPACA_TEMPLATE.format(prompt=INSTRUCTION), add_special_tokens=False)["input_ids"]


def test_chat_format_without_a_chat_template_is_an_error_not_another_format(llama_model, tmp_path):
    with pytest.raises(GenerationError, match="no_chat_template"):
        render_prompt(INSTRUCTION, "chat", load_tokenizer(llama_model))
    cfg = load_config(EvaluateConfig, "configs/evaluate_tiny.yaml", [
        "baseline.backend=hf", f"baseline.model={llama_model}", "baseline.prompt_format=chat",
        f"output.path={tmp_path / 'eval'}"])
    with pytest.raises(UserError, match=r"^baseline.prompt_format: chat, but the tokenizer of .* has no chat "
                                        r"template; set the format the model was trained with: wizardlm, "
                                        r"vicuna_v1.1, alpaca or plain$"):
        preflight(cfg)
    assert not (tmp_path / "eval").exists()  # refused before anything was written
    preflight(cfg.model_copy(update={"baseline": cfg.baseline.model_copy(update={"prompt_format": "vicuna_v1.1"})}))


@pytest.mark.parametrize("template, prompt_format", [("wizardlm", "wizardlm"), ("vicuna_v1.1", "vicuna_v1.1"),
                                                     ("chat_template", "chat")])
def test_pipeline_hands_the_train_template_to_the_candidates_prompt_format(template, prompt_format):
    cfg = load_config(PipelineConfig, "configs/pipeline_tiny.yaml", [f"train.data.template={template}"])
    assert cfg.evaluate.candidate.prompt_format == prompt_format
    assert load_config(PipelineConfig, "configs/pipeline_cloud_7b.yaml").evaluate.candidate.prompt_format == \
        "wizardlm"
    with pytest.raises(ConfigError, match="evaluate.candidate.prompt_format: set by the pipeline from "
                                          "train.data.template"):
        load_config(PipelineConfig, "configs/pipeline_tiny.yaml", ["evaluate.candidate.prompt_format=plain"])
