"""The one table that turns what the body does and what a backend does into a verdict."""

import pytest

from parmagic.analysis.hidden_effects import HiddenEffect
from parmagic.analysis.policy import REFUSED, RULES, verdict_for
from parmagic.backends import REGISTRY, load_backend


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: f"{rule.fact}-{rule.refusal[:20]}")
def test_every_rule_says_its_sentences_from_a_facts_fields(rule):
    fact = HiddenEffect(rule.fact, 4, "the notebook function `f`", "changes `seen`", "seen", "f")
    fields = {**fact.fields(), "backend": "threads"}
    sentence = rule.refusal.format(**fields)  # a field it names that facts lack: KeyError
    assert any(said in sentence for said in ("line 4", "`seen`", "threads"))
    if rule.under_auto not in (None, REFUSED):
        assert rule.under_auto.format(**fields)


def test_what_auto_refuses_is_heard_before_any_reason_to_stay_in_the_kernel():
    refused_under_auto = [rule.under_auto == REFUSED for rule in RULES]
    first_other = refused_under_auto.index(False)
    assert not any(refused_under_auto[first_other:])


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: f"{rule.fact}-{rule.refusal[:20]}")
def test_the_plain_loop_is_refused_only_what_no_backend_runs(rule):
    """Serial runs the loop as the plain kernel does: a rule that breaks it breaks all."""
    serial = load_backend("serial")
    backends = [load_backend(name) for name in REGISTRY]
    assert not rule.breaks(serial) or all(rule.breaks(backend) for backend in backends)


def test_a_fact_no_rule_breaks_on_a_backend_runs_there():
    fact = HiddenEffect("unordered", 3, "", "`b.x = ...`", "b")
    assert verdict_for([fact], "serial", unordered=False, seed=None).refused is None
    assert verdict_for([fact], "threads", unordered=False, seed=None).refused
    assert not verdict_for([fact], "threads", unordered=True, seed=None)
