import pytest

from evol import elimination as rules


@pytest.mark.parametrize("text, leaked", [
    ("Write a poem about rain that rhymes.", False),
    ("#Rewritten Instruction#: Write a poem", True),
    ("Here is the rewritten prompt: write a poem", True),
    ("As in the given prompt, write a poem", True),
    ("#Created Prompt#\nWrite a limerick", True),
    ("Write a poem. #New Instruction#", True),
    ("Promptly write a poem given a theme", False),
])
def test_template_leak(text, leaked):
    assert rules.has_template_leak(text) is leaked


def test_could_not_answer_needs_sorry_and_short():
    assert rules.could_not_answer("Sorry, I cannot help with that.")
    assert rules.could_not_answer("I'm SORRY but no.")
    assert not rules.could_not_answer("Here is the answer: 42.")
    long_sorry = "Sorry for the long answer. " + "word " * 80
    assert not rules.could_not_answer(long_sorry)
    assert rules.could_not_answer("sorry " + "word " * 78)  # 79 words


@pytest.mark.parametrize("response, trivial", [
    ("", True), ("...!?", True), ("It is what it is.", True), ("Yes, of course; and so on!", False),
    ("The answer is 42.", False), ("Paris", False), ("   ", True),
])
def test_trivial_response(response, trivial):
    assert rules.is_trivial_response(response) is trivial


@pytest.mark.parametrize("answer, verdict", [
    ("Equal", rules.EQUAL), ("equal.", rules.EQUAL), ("They are Equal", rules.EQUAL),
    ("Not Equal", rules.NOT_EQUAL), ("not equal - the second adds a constraint", rules.NOT_EQUAL),
    ("NOT EQUAL", rules.NOT_EQUAL), ("Unequal", rules.NOT_EQUAL), ("", rules.UNPARSED),
    ("The second one is harder.", rules.UNPARSED), ("Equality holds", rules.UNPARSED),
])
def test_parse_equality(answer, verdict):
    assert rules.parse_equality(answer) == verdict


def test_clean_evolved_instruction_strips_formatting_only():
    assert rules.clean_evolved_instruction('  "Write a poem."  ') == "Write a poem."
    assert rules.clean_evolved_instruction("“Write”") == "Write"
    assert rules.clean_evolved_instruction("Write 'a' poem") == "Write 'a' poem"


def test_reason_order_and_values():
    parent = "Name three rivers."
    assert rules.reason_before_response(parent, "") == rules.EMPTY_EVOLUTION
    assert rules.reason_before_response(parent, "#Rewritten Instruction# Name rivers") == rules.TEMPLATE_LEAK
    assert rules.reason_before_response(parent, "name three rivers") == rules.NO_INFORMATION_GAIN
    assert rules.reason_before_response(parent, "Name three rivers in Asia longer than 1000 km.") is None
    assert rules.reason_after_response("Sorry, no.") == rules.COULD_NOT_ANSWER
    assert rules.reason_after_response("the and of") == rules.TRIVIAL_RESPONSE
    assert rules.reason_after_response("The Yangtze, the Ganges and the Mekong.") is None
    assert rules.reason_after_equality(rules.EQUAL) == rules.NO_INFORMATION_GAIN
    assert rules.reason_after_equality(rules.NOT_EQUAL) is None
    assert rules.reason_after_equality(rules.UNPARSED) is None
