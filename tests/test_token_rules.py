import pytest
import torch

from zerocap.config import ZeroCapConfig
from zerocap.token_rules import Rules, apply_token_rules

V, END = 10, 3


def recent(contexts):
    return torch.tensor([(c[-4:] * 4)[-4:] for c in contexts])


def rules(logits, context, step, forbidden=(), **cfg):
    mask = torch.zeros(V, dtype=torch.bool)
    mask[list(forbidden)] = True
    n = len(logits)
    return apply_token_rules(torch.tensor(logits), recent(context),
                             Rules.of([ZeroCapConfig(**cfg)] * n, [step] * n, [END] * n, "cpu"), mask)


def row(**values):
    out = [0.5] * V
    for k, v in values.items():
        out[int(k[1:])] = v
    return [out]


def test_forbidden_tokens_are_pushed_down_whatever_their_sign():
    out = rules(row(t5=2.0, t6=-2.0), [[0, 1]], step=2, forbidden=[5, 6], forbidden_factor=20.0)
    assert out[0, 5].item() == pytest.approx(0.1)  # positive / 20
    assert out[0, 6].item() == pytest.approx(-40.0)  # negative * 20
    assert out[0, 7].item() == 0.5  # untouched


def test_end_token_boost_from_its_step_on():
    before = rules(row(t3=2.0), [[0, 1]], step=0, end_factor=1.5, end_factor_from=1)
    at = rules(row(t3=2.0), [[0, 1]], step=1, end_factor=1.5, end_factor_from=1)
    neg = rules(row(t3=-2.0), [[0, 1]], step=1, end_factor=1.5, end_factor_from=1)
    assert at[0, END].item() == pytest.approx(3.0)  # positive * 1.5
    assert neg[0, END].item() == pytest.approx(-2.0 / 1.5)  # negative / 1.5
    assert before[0, END].item() == pytest.approx(2.0 / 1.6)  # step 0: only the start penalty


def test_step_zero_damps_the_end_token_after_any_boost():
    pos = rules(row(t3=2.0), [[0, 1]], step=0, end_factor=1.5, end_factor_from=0)
    neg = rules(row(t3=-2.0), [[0, 1]], step=0, end_factor=1.5, end_factor_from=0)
    assert pos[0, END].item() == pytest.approx(2.0 * 1.5 / 1.6)
    assert neg[0, END].item() == pytest.approx(-2.0 / 1.5 * 1.6)


def test_repetition_penalty_hits_each_of_the_last_four_tokens_once():
    logits = row(t0=2.0, t1=2.0, t2=-2.0, t4=2.0)
    out = rules(logits, [[0, 1, 2, 2, 4]], step=2, repetition_penalty=2.0)
    assert out[0, 0].item() == 2.0  # fifth from last: not penalised
    assert out[0, 1].item() == pytest.approx(1.0)  # positive / 2
    assert out[0, 2].item() == pytest.approx(-4.0)  # negative * 2, once although repeated
    assert out[0, 4].item() == pytest.approx(1.0)


def test_rules_apply_in_order_to_the_current_value():
    # the end token is also a recent and a forbidden token: all three rules compound
    out = rules(row(t3=8.0), [[3, 3]], step=1, forbidden=[END], repetition_penalty=2.0,
                end_factor=1.5, forbidden_factor=4.0)
    assert out[0, END].item() == pytest.approx(8.0 / 2 * 1.5 / 4)


def test_rows_are_independent():
    out = rules(row(t1=2.0) + row(t1=2.0), [[1, 0], [0, 0]], step=2, repetition_penalty=2.0)
    assert out[0, 1].item() == pytest.approx(1.0) and out[1, 1].item() == 2.0


def test_rows_of_requests_at_other_steps_with_other_knobs_get_their_own_rules():
    """Requests decoded together: each row's rules are those it gets alone, bit for bit."""
    cfgs = [ZeroCapConfig(end_factor=1.3, repetition_penalty=1.7, end_factor_from=2),
            ZeroCapConfig(end_factor=1.01, forbidden_factor=5.0), ZeroCapConfig(start_end_penalty=2.5)]
    steps, ends, contexts = [3, 1, 0], [3, 7, 2], [[3, 5, 1], [7, 7], [2]]
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, V, generator=g) * 4
    forbidden = torch.zeros(V, dtype=torch.bool)
    forbidden[[1, 6]] = True
    together = apply_token_rules(logits, recent(contexts), Rules.of(cfgs, steps, ends, "cpu"), forbidden)
    for i in range(3):
        alone = apply_token_rules(logits[i:i + 1], recent(contexts[i:i + 1]),
                                  Rules.of(cfgs[i:i + 1], steps[i:i + 1], ends[i:i + 1], "cpu"), forbidden)
        assert torch.equal(together[i], alone[0])


# --- forbidden tokens ------------------------------------------------------------------------
def gpt2_strings():
    from transformers import GPT2Tokenizer

    from tiny_models import FIXTURES

    tok = GPT2Tokenizer(f"{FIXTURES}/vocab.json", f"{FIXTURES}/merges.txt")
    return tok.batch_decode([[i] for i in range(len(tok))], clean_up_tokenization_spaces=False)


def test_the_rule_on_gpt2s_vocabulary_is_the_authors_list_plus_two():
    """The rule, applied to the real GPT-2 vocabulary, gives 919 ids: the authors' 917 (the list the
    package ships, copied from ../shared) and two long numbers their list lacks."""
    from zerocap.families import forbidden_by_rule, forbidden_ids, gpt2_forbidden_ids

    strings = gpt2_strings()
    rule, authors = set(forbidden_by_rule(strings)), set(gpt2_forbidden_ids())
    assert len(authors) == 917 and authors < rule
    assert sorted(strings[i] for i in rule - authors) == ["200000", "66666666"]
    assert sorted(forbidden_ids(strings)) == sorted(authors)  # GPT-2's vocabulary: the authors' list
    marks = {strings[i] for i in authors if not strings[i].isdigit()}
    assert marks == {"(", ")", ",", "!", ":", "\n"}
    assert all(not strings[i].startswith(" ") for i in authors)


def test_the_rule_on_another_vocabulary():
    from zerocap.families import forbidden_ids

    vocab = ["a", "0", "07", "12", " 12", "(", ":", "\n", "½", "٣", "x1", ")"]
    assert forbidden_ids(vocab) == [1, 3, 5, 6, 7, 11]  # no leading zero, no space, ASCII digits only


def test_the_engine_pushes_down_the_authors_list(engine):
    from zerocap.families import gpt2_forbidden_ids

    assert sorted(engine.forbidden.nonzero()[:, 0].tolist()) == sorted(gpt2_forbidden_ids())
