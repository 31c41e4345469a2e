"""Tests of fedsim.dp.training: private local rounds (dp-naive, dp-flames), masking, noise calibration, accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fedsim.dp.training as dp_training
from fedsim.dp.accountant import ClientAccountant, PrivacyConfig
from fedsim.dp.clipping import ClippedGrads
from fedsim.dp.training import DPRoundResult, DPStepConfig, dp_train_round, steps_per_round
from fedsim.kg.models import make_interaction
from fedsim.kg.training import sample_negatives, self_adversarial_loss

N_ENT, N_REL, N_TRAIN, HIDDEN, NUM_NEG, TEMP = 30, 4, 50, 4, 6, 1.0


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead (and the engine pins threads the same way)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _problem(n_ent=N_ENT, n_rel=N_REL, n_train=N_TRAIN, hidden=HIDDEN, dtype=torch.float32, seed=0):
    """Random TransE tables (as Parameters) and random local-id train triples."""
    interaction = make_interaction("transe", hidden, gamma=2.0, epsilon=2.0)
    gen = torch.Generator().manual_seed(seed)
    entities = torch.nn.Parameter(torch.randn(n_ent, hidden, generator=gen, dtype=dtype))
    relations = torch.nn.Parameter(torch.randn(n_rel, hidden, generator=gen, dtype=dtype))
    triples = torch.stack(
        [
            torch.randint(0, n_ent, (n_train,), generator=gen),
            torch.randint(0, n_rel, (n_train,), generator=gen),
            torch.randint(0, n_ent, (n_train,), generator=gen),
        ],
        dim=1,
    )
    return interaction, entities, relations, triples


def _run(problem, cfg, optimizer=None, epochs=1, seed=1, accountant=None, lr=0.05):
    interaction, entities, relations, triples = problem
    if optimizer is None:
        optimizer = torch.optim.Adam([relations, entities], lr=lr, foreach=False)
    return dp_train_round(
        interaction,
        entities,
        relations,
        triples,
        optimizer,
        cfg,
        NUM_NEG,
        TEMP,
        epochs,
        torch.Generator().manual_seed(seed),
        np.random.default_rng(seed),
        accountant,
    )


def _flames(**kw):
    base = dict(mode="dp-flames", noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.2, selection_epsilon=1.0)
    base.update(kw)
    return DPStepConfig(**base)


def _naive(**kw):
    base = dict(mode="dp-naive", noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.2)
    base.update(kw)
    return DPStepConfig(**base)


def _changed_rows(before: torch.Tensor, after: torch.Tensor) -> np.ndarray:
    return np.flatnonzero((before != after.detach()).any(dim=1).numpy())


# -- masking / selected rows ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_flames_unselected_rows_bit_identical(weight_decay):
    problem = _problem()
    _, entities, relations, _ = problem
    e0, r0 = entities.detach().clone(), relations.detach().clone()
    opt = torch.optim.Adam([relations, entities], lr=0.05, weight_decay=weight_decay, foreach=False)
    res = _run(problem, _flames(k_max=3), optimizer=opt, epochs=1)
    assert isinstance(res, DPRoundResult)
    assert res.steps == 5 and res.selections == 5
    changed = _changed_rows(e0, entities)
    assert np.array_equal(changed, res.selected_rows)
    assert res.selected_rows.dtype == np.int64
    assert 1 <= len(changed) <= 15 < N_ENT  # at most k_max rows per step
    unchanged = np.setdiff1d(np.arange(N_ENT), changed)
    assert torch.equal(entities.detach()[unchanged], e0[unchanged])  # bit-identical
    assert (relations.detach() != r0).all()  # relations always noised


def test_flames_masks_each_step_against_adam_momentum():
    """One step per call (q = 1), one persistent Adam: rows selected earlier must not drift in later steps."""
    interaction, entities, relations, triples = _problem()
    opt = torch.optim.Adam([relations, entities], lr=0.05, foreach=False)
    cfg = _flames(sample_rate=1.0, k_min=2, k_max=4)
    union: set[int] = set()
    for seed in range(6):
        before = entities.detach().clone()
        part = triples[8 * seed : 8 * seed + 8]  # different triples per call, so different rows get selected
        res = _run((interaction, entities, relations, part), cfg, optimizer=opt, seed=seed)
        assert res.steps == 1
        assert np.array_equal(_changed_rows(before, entities), res.selected_rows)
        assert 2 <= len(res.selected_rows) <= 4
        union |= set(res.selected_rows.tolist())
    assert len(union) > 4  # different rows were picked over the calls, so momentum was there to leak


def test_flames_without_mask_reports_rows_moved_by_optimizer():
    problem = _problem()
    _, entities, _, _ = problem
    e0 = entities.detach().clone()
    opt = torch.optim.Adam([problem[2], entities], lr=0.05, weight_decay=0.1, foreach=False)
    res = _run(problem, _flames(k_max=3, mask_unselected=False), optimizer=opt)
    changed = _changed_rows(e0, entities)
    assert len(changed) == N_ENT  # weight decay moves every row when unmasked
    assert np.array_equal(changed, res.selected_rows)


def test_naive_changes_all_rows():
    problem = _problem()
    _, entities, relations, _ = problem
    e0, r0 = entities.detach().clone(), relations.detach().clone()
    res = _run(problem, _naive())
    assert res.selections == 0
    assert np.array_equal(res.selected_rows, np.arange(N_ENT))
    assert len(_changed_rows(e0, entities)) == N_ENT
    assert (relations.detach() != r0).all()


def test_zero_epochs_is_a_no_op():
    problem = _problem()
    _, entities, _, _ = problem
    e0 = entities.detach().clone()
    acc = ClientAccountant(PrivacyConfig(1.0, 1.0, 0.2, 1e-5, selection_epsilon=1.0))
    res = _run(problem, _flames(), epochs=0, accountant=acc)
    assert res.steps == 0 and res.selections == 0 and len(res.selected_rows) == 0 and math.isnan(res.mean_loss)
    assert torch.equal(entities.detach(), e0)
    assert acc.total_gaussian_steps == 0 and acc.epsilon() == 0.0


# -- accounting -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make_cfg", [_flames, _naive])
def test_accountant_receives_every_step(make_cfg):
    epsilons = []
    for epochs in (1, 3):
        acc = ClientAccountant(PrivacyConfig(2.0, 1.0, 0.2, 1e-5, selection_epsilon=0.3))
        cfg = make_cfg(noise_multiplier=1.5)  # the step's sigma wins over the accountant's default
        res = _run(_problem(), cfg, epochs=epochs, accountant=acc)
        assert res.steps == steps_per_round(0.2, epochs) == 5 * epochs
        assert acc.total_gaussian_steps == res.steps
        assert all(e["noise_multiplier"] == 1.5 for e in acc.spent()["events"] if e["kind"] == "gaussian")
        if cfg.mode == "dp-flames":
            assert acc.total_selections == res.steps == res.selections
            assert all(e["epsilon"] == 1.0 for e in acc.spent()["events"] if e["kind"] == "selection")
        else:
            assert acc.total_selections == 0
        epsilons.append(acc.epsilon())
    assert 0 < epsilons[0] < epsilons[1]


def test_accountant_sample_rate_must_match():
    acc = ClientAccountant(PrivacyConfig(1.0, 1.0, 0.1, 1e-5))
    problem = _problem()
    e0 = problem[1].detach().clone()
    with pytest.raises(ValueError, match="sample_rate"):
        _run(problem, _naive(sample_rate=0.2), accountant=acc)
    assert acc.total_gaussian_steps == 0 and torch.equal(problem[1].detach(), e0)


def test_steps_per_round():
    assert steps_per_round(64 / 2759, 1) == 43
    assert steps_per_round(1.0, 3) == 3
    assert steps_per_round(0.8, 2) == 2  # round(1.25) = 1
    assert steps_per_round(0.5, 0) == 0


# -- noise calibration ----------------------------------------------------------------------------------------------


def _zero_grads(interaction, entities, relations, batch, neg, neg_valid, max_grad_norm, temperature):
    """Stand-in for clipped_grad_sum with an exactly zero gradient (only the noise remains)."""
    return ClippedGrads(
        torch.zeros_like(entities).detach(),
        torch.zeros_like(relations).detach(),
        entities.new_zeros(batch.shape[0]),
        torch.zeros(0, dtype=torch.long),
    )


@pytest.mark.parametrize("mode", ["dp-naive", "dp-flames"])
def test_noise_calibration(monkeypatch, mode):
    monkeypatch.setattr(dp_training, "clipped_grad_sum", _zero_grads)
    n_ent, n_rel, hidden, n_train = 600, 50, 8, 50
    sigma, clip, q = 1.3, 0.7, 0.8  # round(1/q) = 1: one step per round
    k = 400
    problem = _problem(n_ent=n_ent, n_rel=n_rel, hidden=hidden, n_train=n_train, dtype=torch.float64)
    _, entities, relations, _ = problem
    e0, r0 = entities.detach().clone(), relations.detach().clone()
    shapes = []
    real_randn = torch.randn

    def recording_randn(*args, **kwargs):
        shapes.append(tuple(args[0]) if len(args) == 1 and isinstance(args[0], tuple) else args)
        return real_randn(*args, **kwargs)

    monkeypatch.setattr(torch, "randn", recording_randn)
    cfg = DPStepConfig(mode, sigma, clip, q, selection_epsilon=1.0, k_min=k, k_max=k)
    opt = torch.optim.SGD([relations, entities], lr=1.0)
    res = _run(problem, cfg, optimizer=opt)
    assert res.steps == 1
    expected = sigma * clip / (q * n_train)
    de = (entities.detach() - e0).numpy()
    dr = (relations.detach() - r0).numpy()
    if mode == "dp-naive":
        noisy = de
        assert shapes == [(n_rel, hidden), (n_ent, hidden)]
    else:
        rows = res.selected_rows
        assert len(rows) == k
        noisy = de[rows]
        assert np.all(np.delete(de, rows, axis=0) == 0.0)  # only selected rows carry noise
        assert (np.abs(noisy) > 0).all()
        assert shapes == [(n_rel, hidden), (k, hidden)]  # never a dense entity-table noise tensor
    assert abs(noisy.std() / expected - 1) < 6 / math.sqrt(2 * noisy.size)
    assert abs(noisy.mean()) < 6 * expected / math.sqrt(noisy.size)
    assert abs(dr.std() / expected - 1) < 6 / math.sqrt(2 * dr.size)  # ~6 standard errors of a sample std


def test_batches_are_poisson_and_negatives_unfiltered(monkeypatch):
    sizes = []
    real = dp_training.clipped_grad_sum

    def spy(interaction, entities, relations, batch, neg, neg_valid, max_grad_norm, temperature):
        sizes.append(batch.shape[0])
        assert neg.shape == (batch.shape[0], NUM_NEG)
        assert neg_valid.dtype == torch.bool and bool(neg_valid.all())
        assert max_grad_norm == 0.5 and temperature == TEMP
        return real(interaction, entities, relations, batch, neg, neg_valid, max_grad_norm, temperature)

    monkeypatch.setattr(dp_training, "clipped_grad_sum", spy)
    problem = _problem(n_train=200)
    q = 0.05
    res = _run(problem, _naive(sample_rate=q, max_grad_norm=0.5), epochs=10)
    assert res.steps == len(sizes) == 200
    # Binomial(200, 0.05) per step: mean 10, sd of the mean over 200 steps ~ 0.22
    assert abs(np.mean(sizes) - q * 200) < 1.0
    assert np.var(sizes) > 5  # not a fixed batch size


def test_empty_samples_still_step_and_charge():
    problem = _problem(n_train=2)
    _, entities, _, _ = problem
    e0 = entities.detach().clone()
    acc = ClientAccountant(PrivacyConfig(1.0, 1.0, 0.02, 1e-5))
    res = _run(problem, _naive(sample_rate=0.02), accountant=acc)
    assert res.steps == 50 == acc.total_gaussian_steps
    assert len(_changed_rows(e0, entities)) == N_ENT
    assert math.isnan(res.mean_loss) or res.mean_loss > 0


# -- determinism ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make_cfg", [_flames, _naive])
def test_deterministic(make_cfg):
    outs = []
    for seed in (3, 3, 4):
        problem = _problem()
        res = _run(problem, make_cfg(), epochs=2, seed=seed)
        outs.append((problem[1].detach().clone(), problem[2].detach().clone(), res))
    (e1, r1, a), (e2, r2, b), (e3, _, c) = outs
    assert torch.equal(e1, e2) and torch.equal(r1, r2)
    assert a.mean_loss == b.mean_loss and a.steps == b.steps
    assert np.array_equal(a.selected_rows, b.selected_rows)
    assert not torch.equal(e1, e3)


# -- config validation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(mode="dp-fancy"), "mode"),
        (dict(noise_multiplier=0.0), "noise_multiplier"),
        (dict(noise_multiplier=-1.0), "noise_multiplier"),
        (dict(noise_multiplier=math.nan), "noise_multiplier"),
        (dict(max_grad_norm=0.0), "max_grad_norm"),
        (dict(max_grad_norm=math.inf), "max_grad_norm"),
        (dict(sample_rate=0.0), "sample_rate"),
        (dict(sample_rate=1.5), "sample_rate"),
        (dict(selection_epsilon=None), "selection_epsilon"),
        (dict(selection_epsilon=-1.0), "selection_epsilon"),
        (dict(k_min=0), "k_min"),
        (dict(k_min=5, k_max=4), "k_max"),
        (dict(k_min=1.5), "k_min"),
        (dict(threshold=math.inf), "threshold"),
    ],
)
def test_bad_config_raises_naming_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        _flames(**kwargs)


def test_config_normalises():
    cfg = DPStepConfig("DP_Flames", 1, 2, 1, selection_epsilon=3)
    assert cfg.mode == "dp-flames" and cfg.noise_std == 2.0
    assert isinstance(cfg.noise_multiplier, float) and isinstance(cfg.selection_epsilon, float)
    assert DPStepConfig("dp_naive", 1.0, 1.0, 0.5).selection_epsilon is None  # not needed without selection


def test_bad_inputs_raise():
    problem = _problem()
    interaction, entities, relations, triples = problem
    with pytest.raises(ValueError, match="triples"):
        _run((interaction, entities, relations, triples[:0]), _naive())
    with pytest.raises(ValueError, match="epochs"):
        _run(problem, _naive(), epochs=-1)


# -- learning sanity on UMLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def umls_client():
    """PyKEEN's UMLS, `relation` split, client 0: (local-id train triples, number of local entities, relations)."""
    from fedsim.kg.datasets import load_dataset
    from fedsim.kg.partition import partition

    client = partition(load_dataset("umls"), "relation", 3, 0)[0]
    ids = client.entity_ids
    train = np.array(client.train, dtype=np.int64).reshape(-1, 3).copy()
    for col in (0, 2):
        train[:, col] = np.searchsorted(ids, train[:, col])
    assert np.array_equal(ids[train[:, 0]], client.train[:, 0])
    return torch.from_numpy(train), len(ids), client.num_relations


def _full_loss(interaction, entities, relations, triples, num_neg):
    """Train loss over all triples with fixed (seeded, unfiltered) negatives."""
    neg = sample_negatives(triples.shape[0], num_neg, entities.shape[0], torch.Generator().manual_seed(123))
    with torch.no_grad():
        e, r = entities.detach(), relations.detach()
        eh, er = e[triples[:, 0]], r[triples[:, 1]]
        pos = interaction.score(eh, er, e[triples[:, 2]])
        negs = interaction.score(eh.unsqueeze(1), er.unsqueeze(1), e[neg])
        return float(self_adversarial_loss(pos, negs, torch.ones_like(neg, dtype=torch.bool), 1.0))


@pytest.mark.parametrize("mode", ["dp-naive", "dp-flames"])
def test_umls_learning_sanity(umls_client, mode):
    from fedsim.kg.models import init_table

    triples, n_ent, n_rel = umls_client
    n_train = triples.shape[0]
    interaction = make_interaction("transe", 64, 10.0, 2.0)
    rng = np.random.default_rng(0)
    entities = torch.nn.Parameter(torch.from_numpy(init_table(n_ent, 64, 64, 10.0, 2.0, rng)))
    relations = torch.nn.Parameter(torch.from_numpy(init_table(n_rel, 64, 64, 10.0, 2.0, rng)))
    q = 64 / n_train
    cfg = DPStepConfig(mode, 0.5, 1.0, q, selection_epsilon=1.0 if mode == "dp-flames" else None)
    acc = ClientAccountant(PrivacyConfig(0.5, 1.0, q, 1e-5, selection_epsilon=1.0))
    before = _full_loss(interaction, entities, relations, triples, 64)
    opt = torch.optim.Adam([relations, entities], lr=1e-2, foreach=False)
    gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    res = dp_train_round(interaction, entities, relations, triples, opt, cfg, 64, 1.0, 3, gen, rng, acc)
    after = _full_loss(interaction, entities, relations, triples, 64)
    assert res.steps == 3 * 43 == acc.total_gaussian_steps
    assert math.isfinite(res.mean_loss)
    assert torch.isfinite(entities).all() and torch.isfinite(relations).all()
    if mode == "dp-naive":
        assert after < before - 0.05, (before, after)
    else:
        assert res.selections == res.steps == acc.total_selections
        assert 0 < len(res.selected_rows) <= n_ent
        assert after < before - 0.05, (before, after)


# -- per-round selection --------------------------------------------------------------------------------------------


def test_per_round_selection_selects_once_and_keeps_its_rows_all_round():
    from fedsim.dp.accountant import ClientAccountant, PrivacyConfig

    problem = _problem()
    _, entities, _, _ = problem
    e0 = entities.detach().clone()
    acc = ClientAccountant(PrivacyConfig(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.2, delta=1e-5,
                                         selection_epsilon=1.0))
    res = _run(problem, _flames(k_max=3, selection="per-round"), epochs=2, accountant=acc)
    assert res.steps == 10 and res.selections == 1
    assert acc.total_gaussian_steps == 10 and acc.total_selections == 1
    changed = _changed_rows(e0, entities)
    assert 1 <= len(changed) <= 3  # one selection of at most k_max rows for the whole round
    assert np.array_equal(changed, res.selected_rows)
    per_step = _run(_problem(), _flames(k_max=3, selection="per-step"), epochs=2)
    assert per_step.selections == 10


def test_per_round_selection_costs_less_epsilon_than_per_step():
    from fedsim.dp.accountant import ClientAccountant, PrivacyConfig

    eps = {}
    for selection in ("per-round", "per-step"):
        acc = ClientAccountant(PrivacyConfig(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.2, delta=1e-5,
                                             selection_epsilon=1.0))
        _run(_problem(), _flames(selection=selection), epochs=2, accountant=acc)
        eps[selection] = acc.epsilon()
    assert eps["per-round"] < eps["per-step"]


def test_unknown_selection_granularity_is_an_error():
    with pytest.raises(ValueError, match="DPStepConfig.selection"):
        _flames(selection="per-epoch")
