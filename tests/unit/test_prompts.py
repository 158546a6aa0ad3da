"""What the model is fed: model.chat's rule (the reference's), and Countdown's golden prompts through a real
tokenizer with and without a chat template, in both prompt styles."""
from __future__ import annotations

from pathlib import Path

import pytest

from randopt_hpc.backends.base import BaseBackend, use_chat
from randopt_hpc.config import ConfigError
from randopt_hpc.tasks import countdown as cd

DEMO = Path(__file__).resolve().parents[2] / "models/demo"

# Qwen2.5-Instruct's ChatML rendering of a system and a user message (its template, cut to what these use).
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SYSTEM = ("You are a helpful assistant. You first think about the reasoning process in your mind and then provide "
          "the user with the answer.")
USER = ("Using the numbers [44, 19, 35], create an equation that equals 98. You can use basic arithmetic operations "
        "(+, -, *, /) and each number can only be used once. Show your work in <think> </think> tags. And return "
        "the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>.")
# The reference's prompts for this row, written out: randopt.py format_prompt on data_handlers/countdown.py's messages.
GOLDEN_PLAIN = SYSTEM + "\n" + USER + "\n"
GOLDEN_CHAT = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{USER}<|im_end|>\n<|im_start|>assistant\n"


class Prompts(BaseBackend):
    """A backend that only renders prompts: the real tokenizer of the demo model."""

    def __init__(self, template: str | None):
        super().__init__()
        from transformers import PreTrainedTokenizerFast

        self.tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(DEMO / "tokenizer.json"))
        self.tokenizer.chat_template = template


ROW = {"numbers": [44, 19, 35], "target": "98"}


@pytest.mark.parametrize("name,has_template,expected", [
    ("Qwen2.5-1.5B-Instruct", True, True), ("Llama-2-7b-chat-hf", True, True), ("gemma-2-2b-it", True, True),
    ("Qwen2.5-1.5B", True, False), ("OLMo-3-7B-Think", True, False), ("Qwen3-8B", True, False),
    ("Qwen2.5-1.5B-Instruct", False, False),          # no template: the plain prompt whatever the name
    ("mistral-7b-edit", True, True),                  # the rule is a substring test: "edit" holds "it"
])
def test_auto_follows_the_reference_rule(name, has_template, expected):
    assert use_chat("auto", name, has_template) is expected
    assert use_chat(False, name, has_template) is False
    assert use_chat(True, name, True) is True


def test_golden_prompts_plain_and_chat():
    ex = cd.examples_from_records([ROW])[0]
    plain, chat = Prompts(None), Prompts(CHATML)
    plain.set_chat("auto", "/models/Qwen2.5-1.5B-Instruct/")
    assert not plain.chat and plain.prompt_text(ex) == GOLDEN_PLAIN
    chat.set_chat("auto", "/models/Qwen2.5-1.5B-Instruct/")   # the folder's name, trailing slash or not
    assert chat.chat and chat.prompt_text(ex) == GOLDEN_CHAT
    chat.set_chat("auto", "/models/Qwen2.5-1.5B")             # a base model: the reference joins the messages
    assert chat.prompt_text(ex) == GOLDEN_PLAIN
    chat.set_chat(True, "/models/Qwen2.5-1.5B")
    assert chat.prompt_text(ex) == GOLDEN_CHAT
    chat.set_chat(False, "/models/Qwen2.5-1.5B-Instruct")
    assert chat.prompt_text(ex) == GOLDEN_PLAIN


def test_es_style_prefills_think_in_both_modes():
    ex = cd.examples_from_records([ROW], "es")[0]
    chat = Prompts(CHATML)
    chat.set_chat(True, "m")
    assert chat.prompt_text(ex) == GOLDEN_CHAT.replace("[44, 19, 35]", "[44 19 35]") + "<think>"
    chat.set_chat(False, "m")
    assert chat.prompt_text(ex) == SYSTEM + USER.replace("[44, 19, 35]", "[44 19 35]") + \
        "Let me solve this step by step.\n<think>"


def test_chat_true_without_a_template_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^model\.chat: true, but the tokenizer of /m/x has no chat template$"):
        Prompts(None).set_chat(True, "/m/x")
