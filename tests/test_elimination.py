import pytest

from evol import elimination as rules

PARENT = "Name three rivers."


@pytest.mark.parametrize("text, leaked", [
    ("Write a poem about rain that rhymes.", False),
    ("#Rewritten Instruction#: Write a poem", True),
    ("# rewritten   instruction #\nWrite a poem", True),
    ("Here is the rewritten prompt: write a poem", True),
    ("#Created Prompt#\nWrite a limerick", True),
    ("Write a poem. #New Instruction#", True),
    ("Rewritten Instruction: Write a poem", True),
    ("**Rewritten Instruction**\nWrite a poem", True),
    ("Sure! New instruction: write a poem", True),
    ("Original instruction:\nName rivers.\n\nRewritten instruction:\nName 3 rivers.", True),
    ("The rewritten prompt is: write a poem", True),
    ("Promptly write a poem given a theme", False),
    ("Explain the original instruction set of the 8086 and how it grew.", False),
    ("Design a new instruction set for a stack machine.", False),
    ("Write a story for the given prompt.", False),
    ("As in the given prompt, write a poem", False),
    ("The original instruction is a bit vague; make it precise.", False),
])
def test_template_leak(text, leaked):
    assert rules.has_template_leak(text, PARENT) is leaked


@pytest.mark.parametrize("parent, candidate, leaked", [
    ("Explain what #Rewritten Instruction# means in Evol-Instruct.", "Explain what #rewritten instruction# means, "
                                                                     "with an example.", False),
    ("Explain what #Rewritten Instruction# means.", "#New Instruction# Explain it with an example.", True),
    ("Why did Intel keep the original instruction set?", "Original instruction: why did Intel keep it?", False),
    ("Why did Intel keep the 8086 opcodes?", "Original instruction: why did Intel keep it?", True),
])
def test_a_phrase_already_in_the_parent_is_not_a_leak(parent, candidate, leaked):
    assert rules.has_template_leak(candidate, parent) is leaked


def test_could_not_answer_needs_sorry_and_short():
    assert rules.could_not_answer("Sorry, I cannot help with that.")
    assert rules.could_not_answer("I'm SORRY but no.")
    assert not rules.could_not_answer("Here is the answer: 42.")
    long_sorry = "Sorry for the long answer. " + "word " * 80
    assert not rules.could_not_answer(long_sorry)
    assert rules.could_not_answer("sorry " + "word " * 78)  # 79 words


def test_could_not_answer_counts_words_of_scripts_without_spaces():
    # 100 ideographs are 100 words, not one "word" without spaces.
    assert not rules.could_not_answer("Sorry. " + "雨" * 100)
    assert rules.could_not_answer("Sorry. " + "雨" * 10)


@pytest.mark.parametrize("response, trivial", [
    ("", True), ("...!?", True), ("It is what it is.", True), ("Yes, of course; and so on!", False),
    ("The answer is 42.", False), ("Paris", False), ("   ", True), ("It’s what it’s.", True),
    ("长江、黄河和珠江。", False), ("Волга, Дон и Обь.", False), ("النيل", False), ("गंगा", False),
    ("。！？", True), ("«…»", True),
])
def test_trivial_response(response, trivial):
    assert rules.is_trivial_response(response) is trivial


@pytest.mark.parametrize("text, normal", [
    ("Name three rivers.", "name three rivers"),
    ("请写一首关于雨的诗。", "请 写 一 首 关 于 雨 的 诗"),
    ("请 写一首 关于雨的诗", "请 写 一 首 关 于 雨 的 诗"),  # spacing between ideographs cannot hide a copy
    ("Напишите стихотворение о дожде!", "напишите стихотворение о дожде"),
    ("اكتب قصيدةً عن المطر", "اكتب قصيدةً عن المطر"),  # the vowel mark stays inside its word
    ("हिन्दी में लिखो", "हिन्दी में लिखो"),              # Devanagari vowel signs and virama too
    ("ＡＢＣ It’s 42", "abc it's 42"),
    ("snake_case-word", "snake case word"),
])
def test_normalize_keeps_words_of_any_script(text, normal):
    assert rules.normalize(text) == normal


@pytest.mark.parametrize("parent, candidate", [
    ("请写一首关于雨的诗。", "请写一首关于雨的诗,要求押韵并且不少于八行。"),
    ("Напишите стихотворение о дожде.", "Напишите стихотворение о дожде в форме сонета."),
    ("اكتب قصيدة عن المطر", "اكتب قصيدة عن المطر في الصحراء"),
    ("हिन्दी में लिखो", "हिन्दी में एक कविता लिखो"),
])
def test_a_changed_instruction_in_any_script_is_not_a_copy(parent, candidate):
    assert rules.reason_before_response(parent, candidate) is None
    assert rules.reason_before_response(parent, " " + parent.replace(" ", "  ")) == rules.NO_INFORMATION_GAIN


@pytest.mark.parametrize("parent, candidate", [
    ("Compute 2+2.", "Compute 2*2."), ("Expand (a+b)^2.", "Expand (a-b)^2."), ("Prove `x >= y`.", "Prove `x <= y`."),
    ("Sort the list in C.", "Sort the list in C++."),
])
def test_a_rewrite_that_changes_only_symbols_is_not_a_copy(parent, candidate):
    assert rules.reason_before_response(parent, candidate) is None
    assert rules.reason_before_response(parent, f'"{parent.rstrip(".").lower()}"') == rules.NO_INFORMATION_GAIN


@pytest.mark.parametrize("answer", [
    "Equal", "equal.", "They are Equal", "**Equal**", "Answer: Equal", "Verdict: equal\n\nBoth ask for three rivers.",
    "The two instructions are equal.", "They're equal in constraints and depth.", "They are the same.",
    "Equal\n\nBoth instructions ask for the same thing, though worded differently.", "'Equal'",
    "I think they are equal.", "Are they equal? Yes, they are equal.",
    "Both instructions are identical.", "The instructions are, in my view, equal",
    "Both have the same constraints and requirements and the same depth and breadth. Equal.",
    "Neither is more complex; they are equal.", "Equal: yes", "Equal: true",
])
def test_parse_equality_equal(answer):
    assert rules.parse_equality(answer) == rules.EQUAL


@pytest.mark.parametrize("answer", [
    "Not Equal", "not equal.", "NOT EQUAL", "NOT_EQUAL", "Not-Equal", "**Not Equal**", "Unequal", "Different.",
    "Answer: Not Equal", "**Answer:** Not Equal\n\nThe second adds a constraint.",
    "not equal - the second adds a constraint", "They are not exactly equal", "They aren't equal",
    "They are not really equal.", "It isn't equal to the first.", "They are not the same.",
    "The two instructions are not identical.", "They differ in depth.", "Completely different.",
    "The second instruction is more complex, so they are not equal.", "I don't think they are equal.",
    "Not Equal. The second asks for the two halves to be equal.", "Are they equal? Not Equal.",
    "They are not equal, but they are similar.", "Divide the cake into equal parts. Not Equal.",
    "No, they are not equal.", "They are not equal because the second one requires a rhyme.",
    "The second is a more specific version of the first, so they're not equal.",
    "The two instructions are not equal. The first asks for rivers, while the second asks for long ones.",
    "They are by no means equal.", "They are in no way equal.", "They are nowhere near equal.",
    "They are no longer equal.", "Equal: No.", "Equal: false", "Not Equal: true",
])
def test_parse_equality_not_equal(answer):
    assert rules.parse_equality(answer) == rules.NOT_EQUAL


@pytest.mark.parametrize("answer", [
    "", "   ", "The second one is harder.", "Equality holds", "Yes", "No", "Equal in topic, but not in depth.",
    "Reply with exactly one of: Equal, Not Equal.", "They are equal, although the second adds a year.",
    "Both are equal in depth; however the second adds a constraint.", "Are they equal?",
    "Both are about the same topic.", "Equal? Not equal? Hard to say.",
    "It is not clear whether they are equal.", "They might be equal.", "They are probably not equal.",
    "The instructions are equal in constraints, but the second one has more depth.",
    # a negation or doubt anywhere before an "equal" (not only next to it) is never read as equal
    "They are not, in my view, equal.", "They are not, strictly speaking, equal.", "They are not—in any sense—equal.",
    "They are far from equal.", "They are unlikely to be equal.", "No, they are equal.", "More or less equal.",
])
def test_parse_equality_unclear_is_unparsed(answer):
    assert rules.parse_equality(answer) == rules.UNPARSED


@pytest.mark.parametrize("answer", [
    # issue 23: each of these was read as Equal
    "They are almost equal.", "They are nearly equal.", "They are roughly equal.", "They are largely equal.",
    "They are equal only in topic.", "Equal in topic.", "Nobody would say they are equal.",
    "They are not different.", "They do not differ.", "Equal. Wait, no: Not Equal.", "Equal.\nNot Equal.",
    "Equal. Actually, the second adds a constraint.",
])
def test_parse_equality_reads_no_equal_from_a_hedge_a_double_negative_or_a_correction(answer):
    assert rules.parse_equality(answer) == rules.UNPARSED


@pytest.mark.parametrize("text, finished, verdict", [
    ("Equal", True, rules.EQUAL),
    ("Equal", False, rules.UNPARSED),           # could have gone on "... in topic, but not in depth"
    ("Equal.", False, rules.EQUAL),
    ("Not Equal\n", False, rules.NOT_EQUAL),
    ("Not Equal. The second adds", False, rules.NOT_EQUAL),
    ("Not Eq", False, rules.UNPARSED),
    ("Not", False, rules.UNPARSED),
    ("They are not equal. The second", False, rules.UNPARSED),  # the rest may have said otherwise
    ("They are not equal. The second adds a year.", True, rules.NOT_EQUAL),
])
def test_parse_equality_generation_counts_a_cut_verdict_only_when_complete(text, finished, verdict):
    assert rules.parse_equality_generation(text, finished) == verdict


def test_min_judge_tokens_fits_a_chatty_verdict():
    assert rules.MIN_JUDGE_TOKENS == 16 and len("Not Equal") < rules.MIN_JUDGE_TOKENS


def test_clean_evolved_instruction_strips_formatting_only():
    assert rules.clean_evolved_instruction('  "Write a poem."  ') == "Write a poem."
    assert rules.clean_evolved_instruction("“Write”") == "Write"
    assert rules.clean_evolved_instruction("Write 'a' poem") == "Write 'a' poem"
    assert rules.clean_evolved_instruction('"Write a poem" about "love"') == '"Write a poem" about "love"'
    assert rules.clean_evolved_instruction("'Write a \"poem\"'") == 'Write a "poem"'


@pytest.mark.parametrize("text, cleaned", [
    ("Sure! Here is the rewritten prompt:\nWrite a poem about rain.", "Write a poem about rain."),
    ("Sure! Here is the rewritten prompt: Write a poem about rain.", "Write a poem about rain."),
    ('Certainly, here\'s a more challenging version:\n\n"Write a sonnet about rain."', "Write a sonnet about rain."),
    ("**Sure! Here is the new version:**\n\nWrite a haiku.", "Write a haiku."),
    ("Sure!\nWrite a haiku.", "Write a haiku."),
    ("Here is my rewrite.\nWrite three haiku.", "Write three haiku."),
    ("Here is a table: | a | b |. Sum the columns.", "Here is a table: | a | b |. Sum the columns."),  # the seed's own words
    ("Sure, write a poem about rain", "Sure, write a poem about rain"),  # nothing introduced
    ("Sure: \nWrite a haiku.", "Write a haiku."),
    ("Of course! Here you go:\nWrite a haiku.", "Write a haiku."),
    # a rewrite that opens with a courtesy word as its own first word keeps every word (the constraint it added)
    ("Absolutely no libraries: implement quicksort in Python.", "Absolutely no libraries: implement quicksort in Python."),
    ("Great Expectations: summarize the themes of its first chapter.",
     "Great Expectations: summarize the themes of its first chapter."),
    ("Great Barrier Reef\nExplain three threats to the reef.", "Great Barrier Reef\nExplain three threats to the reef."),
    ("Okay Google vs Siri: compare their privacy policies.", "Okay Google vs Siri: compare their privacy policies."),
    ("Okay Google vs Siri\nCompare their privacy policies.", "Okay Google vs Siri\nCompare their privacy policies."),
])
def test_clean_evolved_instruction_strips_a_preamble(text, cleaned):
    assert rules.clean_evolved_instruction(text) == cleaned


@pytest.mark.parametrize("candidate, appended", [
    ("Name three rivers in Asia.\n\nAnswer: The Yangtze, the Ganges, the Mekong.", True),
    ("Name three rivers in Asia.\n### Response:\nThe Yangtze", True),
    ("Write a sorting function.\n**Solution:**\ndef sort(x): ...", True),
    ("Name three rivers in Asia.\n\nSure! Here are three rivers: the Yangtze, ...", True),
    ("Name three rivers in Asia. Answer with their lengths.", False),
    ("Name three rivers.\nInput: a map\nOutput: a list", False),
])
def test_an_answer_appended_to_the_rewrite_is_eliminated_with_its_own_reason(candidate, appended):
    reason = rules.reason_before_response(PARENT, candidate)
    assert reason == (rules.ANSWER_APPENDED if appended else None)
    # a seed that itself shows an answer line keeps that format
    assert rules.reason_before_response(candidate, candidate + " Give two.") is None


def test_reason_order_and_values():
    assert rules.RULES == (rules.EMPTY_EVOLUTION, rules.TRUNCATED_EVOLUTION, rules.TEMPLATE_LEAK,
                           rules.ANSWER_APPENDED, rules.NO_INFORMATION_GAIN, rules.COULD_NOT_ANSWER,
                           rules.TRIVIAL_RESPONSE)
    assert rules.TRUNCATED_EVOLUTION == "truncated_evolution"
    assert rules.reason_before_response(PARENT, "") == rules.EMPTY_EVOLUTION
    assert rules.reason_before_response(PARENT, "", truncated=True) == rules.EMPTY_EVOLUTION
    assert rules.reason_before_response(PARENT, "#Rewritten Instruction# Name", truncated=True) == \
        rules.TRUNCATED_EVOLUTION
    assert rules.reason_before_response(PARENT, "Name three rivers in Asia longer", truncated=True) == \
        rules.TRUNCATED_EVOLUTION
    assert rules.reason_before_response(PARENT, "#Rewritten Instruction# Name rivers") == rules.TEMPLATE_LEAK
    assert rules.reason_before_response(PARENT, "name three rivers") == rules.NO_INFORMATION_GAIN
    assert rules.reason_before_response(PARENT, "Name three rivers in Asia longer than 1000 km.") is None
    assert rules.reason_after_response("Sorry, no.") == rules.COULD_NOT_ANSWER
    assert rules.reason_after_response("the and of") == rules.TRIVIAL_RESPONSE
    assert rules.reason_after_response("The Yangtze, the Ganges and the Mekong.") is None
    assert rules.reason_after_response("长江、恒河和湄公河。") is None
    assert rules.reason_after_equality(rules.EQUAL) == rules.NO_INFORMATION_GAIN
    assert rules.reason_after_equality(rules.NOT_EQUAL) is None
    assert rules.reason_after_equality(rules.UNPARSED) is None
