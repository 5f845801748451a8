"""The end-of-job check on hand-made records: it must catch every kind of loss."""
from evol.accounting import accounting, accounting_error, chain_problems


def _rec(root, rnd, status):
    return {"root_id": root, "round": rnd, "status": status}


def test_complete_chains_pass_and_every_kind_of_loss_is_caught():
    good = [_rec("a", 0, "kept"), _rec("a", 1, "kept"), _rec("a", 2, "eliminated"),
            _rec("b", 0, "kept"), _rec("b", 1, "error"),  # ended by an error: complete
            _rec("q", 0, "quarantined")]
    assert chain_problems(good, rounds=2) == []
    assert chain_problems([_rec("a", 0, "kept"), _rec("a", 1, "kept")], rounds=2) == [
        "a: chain stopped after round 1 of 2 without an error"]
    assert chain_problems([_rec("a", 0, "kept"), _rec("a", 2, "kept")], rounds=2) == ["a: rounds [2]"]
    assert chain_problems([_rec("a", 1, "kept")], rounds=1) == ["a: 0 round-0 records"]
    assert chain_problems([_rec("a", 0, "kept"), _rec("a", 0, "kept"), _rec("a", 1, "kept")], rounds=1) == [
        "a: 2 round-0 records"]
    assert chain_problems([_rec("q", 0, "quarantined"), _rec("q", 1, "kept")], rounds=1) == [
        "q: a quarantined seed has candidates"]


def test_the_check_fails_on_a_lost_row_or_an_unread_file():
    assert accounting(3, 3, [])["ok"]
    lost = accounting(4, 3, [])
    assert not lost["ok"] and "4 input rows read but 3 round-0 records" in accounting_error(lost)
    unread = accounting(3, 3, [], ["b.jsonl"])
    assert not unread["ok"] and accounting_error(unread).endswith("files never read: ['b.jsonl']")
    assert accounting_error(accounting(3, 3, [])) is None
