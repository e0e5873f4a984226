import torch

from zerocap.beam_search import Beams, first_step, next_step

END = 2


def lp(rows):
    return torch.tensor(rows).log()


def test_first_step_takes_the_top_tokens_of_the_prompt_row():
    beams = first_step(lp([[0.1, 0.5, 0.3, 0.1]]), beam_size=2, end_id=END)
    assert beams.tokens[0, :, 0].tolist() == [1, 2]
    assert beams.stopped[0].tolist() == [False, True]  # token 2 is the end token
    assert beams.lengths[0].tolist() == [1.0, 1.0]


def test_length_normalisation_ranks_by_mean_log_prob():
    beams = Beams(tokens=torch.tensor([[[0], [1]]]), scores=torch.tensor([[-1.0, -3.0]]),
                  lengths=torch.tensor([[1.0, 1.0]]), stopped=torch.tensor([[False, False]]))
    probs = lp([[0.25, 0.25, 0.25, 0.25], [0.97, 0.01, 0.01, 0.01]])[None]
    new, source = next_step(beams, probs, END)
    # beam 0: (-1 + log .25) / 2 = -1.19; beam 1 + token 0: (-3 + log .97) / 2 = -1.515
    assert source[0].tolist() == [0, 0]
    assert new.scores[0, 0].item() == (torch.tensor(-1.0) + torch.tensor(0.25).log()) / 2 * 2
    assert new.lengths[0].tolist() == [2.0, 2.0]


def test_stopped_beam_appends_token_zero_for_free_and_keeps_its_length():
    beams = Beams(tokens=torch.tensor([[[2], [1]]]), scores=torch.tensor([[-0.5, -4.0]]),
                  lengths=torch.tensor([[1.0, 1.0]]), stopped=torch.tensor([[True, False]]))
    probs = lp([[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]])[None]
    new, source = next_step(beams, probs, END)
    assert source[0, 0].item() == 0 and new.tokens[0, 0].tolist() == [2, 0]
    assert new.scores[0, 0].item() == -0.5 and new.lengths[0, 0].item() == 1.0
    assert bool(new.stopped[0, 0])
    # the live beam's best continuation grows by one
    assert new.lengths[0, 1].item() == 2.0 and new.tokens[0, 1].tolist() == [1, 3]


def test_end_token_stops_a_beam_and_done_needs_all():
    beams = Beams(tokens=torch.tensor([[[0], [1]]]), scores=torch.tensor([[-1.0, -2.0]]),
                  lengths=torch.tensor([[1.0, 1.0]]), stopped=torch.tensor([[False, False]]))
    probs = lp([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]])[None]
    assert not bool(Beams(beams.tokens, beams.scores, beams.lengths, torch.tensor([[True, False]])).done[0])
    new, source = next_step(beams, probs, END)
    assert new.stopped.all() and bool(new.done[0])
    assert source[0].tolist() == [0, 1] and new.tokens[0].tolist() == [[0, END], [1, END]]
    assert new.ranked()[0].tolist() == [0, 1]  # -1/2 before -2/2


def test_images_are_searched_independently():
    one = Beams(tokens=torch.tensor([[[0], [1]]]), scores=torch.tensor([[-1.0, -2.0]]),
                lengths=torch.ones(1, 2), stopped=torch.zeros(1, 2, dtype=torch.bool))
    two = Beams(tokens=torch.cat([one.tokens, one.tokens.flip(1)]), scores=torch.cat([one.scores, one.scores.flip(1)]),
                lengths=torch.ones(2, 2), stopped=torch.zeros(2, 2, dtype=torch.bool))
    probs = lp([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    a, _ = next_step(one, probs[None], END)
    b, _ = next_step(two, torch.stack([probs, probs.flip(0)]), END)
    assert torch.equal(b.tokens[0], a.tokens[0]) and torch.equal(b.scores[0], a.scores[0])
    assert torch.equal(b.scores[1], a.scores[0]) and torch.equal(b.tokens[1], a.tokens[0])


def test_advance_moves_only_the_active_images():
    """Done images keep their beams (their rows grow by a token 0); active ones step as if alone."""
    one = Beams(tokens=torch.tensor([[[0], [1]]]), scores=torch.tensor([[-1.0, -2.0]]),
                lengths=torch.ones(1, 2), stopped=torch.zeros(1, 2, dtype=torch.bool))
    done = Beams(tokens=torch.tensor([[[2], [2]]]), scores=torch.tensor([[-0.5, -0.7]]),
                 lengths=torch.ones(1, 2), stopped=torch.ones(1, 2, dtype=torch.bool))
    both = Beams(*(torch.cat([getattr(done, f), getattr(one, f)]) for f in ("tokens", "scores", "lengths", "stopped")))
    assert both.active().tolist() == [1]
    probs = lp([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])[None]
    both.advance(both.active(), probs, END)
    alone, _ = next_step(one, probs, END)
    assert torch.equal(both.tokens[1], alone.tokens[0]) and torch.equal(both.scores[1], alone.scores[0])
    assert both.tokens[0].tolist() == [[2, 0], [2, 0]] and torch.equal(both.scores[0], done.scores[0])
    assert both.take(torch.tensor([1])).tokens.shape == (1, 2, 2)
