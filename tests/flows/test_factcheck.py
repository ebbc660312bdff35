"""The demo's fact check: the bar it holds, and that a model deaf to its neighbours cannot pass it."""

import pytest

from beam_jobs.sample.world import SampleWorld
from flows._factcheck import FactAnswer, FactCheck, fact_context, plot_facts, report_markdown
from model.contracts.tokenizer import RetroTokenizer


def _answer(i, *, prefers_new: bool, writes: str) -> FactAnswer:
    old, new = f"Old Name{i}", f"New Name{i}"
    return FactAnswer(fact=f"Entity{i} ceo", old=old, new=new, index_version="v", retrieval=True,
                      logp_old=-1.0 if not prefers_new else -5.0, logp_new=-5.0 if not prefers_new else -1.0,
                      generated={"new": f" {new}.", "old": f" {old}.", "other": " nobody"}[writes])


def test_a_model_that_follows_its_index_passes():
    before = [_answer(i, prefers_new=False, writes="old") for i in range(6)]
    after = [_answer(i, prefers_new=i != 0, writes="new" if i < 4 else "other") for i in range(6)]  # 5/6 and 4/6
    check = FactCheck(before, after)
    assert check.passed, check.failures()
    assert check.counts() | {} == {**check.counts(), "prefer_old_before": 6, "prefer_new_after": 5, "generated_new_after": 4}


@pytest.mark.parametrize("case, expected", [
    ("deaf", "after the refresh only 0/6 facts preferred the new value"),
    ("few_generated", "greedy generation wrote the new value for 3/6"),
    ("knew_before", "before the refresh greedy generation already wrote the new value for 1/6"),
    ("preferred_new_before", "before the refresh only 4/6 facts preferred the old value"),
])
def test_each_part_of_the_bar_can_fail(case, expected):
    before = [_answer(i, prefers_new=False, writes="old") for i in range(6)]
    after = [_answer(i, prefers_new=True, writes="new") for i in range(6)]
    if case == "deaf":  # answers the same with the fresh index as with the stale one
        after = before
    elif case == "few_generated":
        after = [_answer(i, prefers_new=True, writes="new" if i < 3 else "old") for i in range(6)]
    elif case == "knew_before":
        before[0] = _answer(0, prefers_new=False, writes="new")
    else:
        before[0] = before[1] = _answer(0, prefers_new=True, writes="old")
    check = FactCheck(before, after)
    assert not check.passed
    assert any(expected in failure for failure in check.failures()), check.failures()


def test_the_context_is_over_one_chunk_and_states_no_value_an_edition_changes():
    world, tokenizer = SampleWorld(seed=0, size=2), RetroTokenizer.load(None)
    changes = world.changed_facts(1) + world.changed_facts(2)
    assert changes
    for change in changes:
        context = fact_context(world, change)
        assert context.endswith(change.prompt)
        tokens = len(tokenizer.encode(world.describe(change.entity_key)))
        assert 64 <= tokens  # the prompt attends to neighbours retrieved for the description
        # The value lands inside the second chunk, before it completes: it is never in a query.
        assert len(tokenizer.encode(f"{context} {change.new}.")) < 128
        own_values = {v for e in range(3) for (key, _), v in world.edition(e).facts.items() if key == change.entity_key}
        assert not [v for v in own_values if v in world.describe(change.entity_key)]


def test_report_and_plot_are_written():
    check = FactCheck([_answer(i, prefers_new=False, writes="old") for i in range(3)],
                      [_answer(i, prefers_new=True, writes="new") for i in range(3)],
                      [_answer(i, prefers_new=False, writes="old") for i in range(3)])
    text = report_markdown(check, lag_s=4.2, versions=("v1", "v2"))
    assert "3/3" in text and "4.2 s" in text and "passed" in text and text.count("| Entity") == 3
    assert plot_facts(check).startswith(b"\x89PNG")
