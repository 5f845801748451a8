from collections import Counter

from evol.operations import IN_BREADTH, IN_DEPTH, OPERATIONS, choose_operation
from evol.records import candidate_id
from evol.templates import LEAK_LABELS, LEAK_MARKERS, equality_prompt, evolve_prompt, template_overheads, user_turn


def test_six_operations_five_in_depth_one_in_breadth():
    assert len(IN_DEPTH) == 5 and IN_BREADTH == ("in_breadth",) and len(set(OPERATIONS)) == 6


def test_choice_is_reproducible_and_depends_on_seed_row_and_round():
    first = [choose_operation(0, f"row{i}", 1) for i in range(200)]
    assert first == [choose_operation(0, f"row{i}", 1) for i in range(200)]
    assert first != [choose_operation(1, f"row{i}", 1) for i in range(200)]
    assert first != [choose_operation(0, f"row{i}", 2) for i in range(200)]


def test_choice_is_uniform_over_the_six_operations():
    counts = Counter(choose_operation(7, f"row{i}", r) for i in range(3000) for r in (1, 2))
    assert set(counts) == set(OPERATIONS)
    expected = 6000 / 6
    for op, n in counts.items():
        assert abs(n - expected) < 0.1 * expected, (op, n)


def test_choice_respects_a_subset():
    assert {choose_operation(0, f"r{i}", 1, ("deepening",)) for i in range(50)} == {"deepening"}


def test_candidate_ids_are_stable_and_distinct():
    a = candidate_id("seed_1", 1, "deepening")
    assert a == candidate_id("seed_1", 1, "deepening")
    assert len({a, candidate_id("seed_1", 2, "deepening"), candidate_id("seed_1", 1, "concretizing"),
                candidate_id("seed_2", 1, "deepening")}) == 4
    assert a.startswith("r1-")


def test_each_operation_has_its_own_prompt_containing_the_instruction():
    prompts = {op: evolve_prompt(op, "Name three rivers.") for op in OPERATIONS}
    assert len(set(prompts.values())) == 6
    assert all("Name three rivers." in p for p in prompts.values())
    assert "rarer" in prompts["in_breadth"]
    assert "constraint" in prompts["add_constraints"]


def test_templates_markers_are_in_the_leak_list():
    # Whatever marker a template shows the model must count as a leak if copied back.
    for op in OPERATIONS:
        markers = [line for line in evolve_prompt(op, "x").splitlines() if line.startswith("#")]
        assert markers and all(m in LEAK_MARKERS for m in markers)


def test_leak_labels_are_the_markers_words():
    assert LEAK_LABELS == ("original instruction", "rewritten instruction", "new instruction", "given prompt",
                           "rewritten prompt", "created prompt")


def test_template_overheads_are_every_prompt_with_empty_slots():
    overheads = template_overheads()
    assert overheads == [evolve_prompt(op, "") for op in OPERATIONS] + [equality_prompt("", "")]
    assert len(overheads) == 7
    # Each slot is empty: filling it adds exactly the instruction, the equality prompt has two.
    assert all(len(evolve_prompt(op, "Name three rivers.")) == len(o) + 18 for op, o in zip(OPERATIONS, overheads))
    assert len(equality_prompt("Name rivers.", "Name lakes.")) == len(overheads[-1]) + 12 + 11


def test_equality_prompt_and_user_turn():
    prompt = equality_prompt("A", "B")
    assert "A" in prompt and "B" in prompt and "Not Equal" in prompt
    assert user_turn("Sum these.", "1, 2") == "Sum these.\n\n1, 2"
    assert user_turn("Sum these.", None) == "Sum these."
