"""ES core (randopt_hpc.es): candidates, fitness shaping, the update's terms; the backends' exact shift; config."""
from fractions import Fraction

import pytest
import torch

from randopt_hpc import es as E
from randopt_hpc import noise as N
from randopt_hpc.config import ConfigError, load_config

ES = ["algorithm=es", "population.sigmas=[0.01]", "population.size=8"]


def test_centered_ranks_are_exact_and_share_ties():
    assert E.centered_ranks([3, 1, 2]) == [Fraction(1, 2), Fraction(-1, 2), Fraction(0)]
    f = E.centered_ranks([0.5, 0.2, 0.5, 0.9, 0.2])
    assert f[0] == f[2] and f[1] == f[4] and f[3] == Fraction(1, 2) and f[1] == Fraction(-3, 8)
    assert sum(f) == 0 and all(-Fraction(1, 2) <= x <= Fraction(1, 2) for x in f)
    assert E.centered_ranks([7, 7, 7]) == [0, 0, 0] and E.centered_ranks([1]) == [0]


def test_candidates_pair_antithetically_and_differ_between_iterations():
    es = E.EsConfig(sigma_decay=0.5)
    c0, c1 = E.candidates(es, 11, 0.02, 6, 0), E.candidates(es, 11, 0.02, 6, 1)
    assert [c.index for c in c1] == list(range(6, 12))
    assert [c.sigma for c in c0] == [0.02, -0.02] * 3 and [c.sigma for c in c1] == [0.01, -0.01] * 3
    assert all(c0[2 * j].seed == c0[2 * j + 1].seed for j in range(3)) and len({c.seed for c in c0}) == 3
    assert not {c.seed for c in c0} & {c.seed for c in c1}
    plain = E.candidates(E.EsConfig(antithetic=False), 11, 0.02, 6, 0)
    assert len({c.seed for c in plain}) == 6 and all(c.sigma > 0 for c in plain)
    assert E.candidates(es, 11, 0.02, 6, 0) == c0   # a pure function of (seed, t)


def test_update_terms_are_the_formula():
    es = E.EsConfig(lr=0.1)
    cands = E.candidates(es, 5, 0.02, 4, 0)          # pairs (0, 1) and (2, 3)
    scores = [0.9, 0.1, 0.5, 0.5]                     # the second pair ties: it moves nothing
    terms = E.update_terms(es, cands, scores, 0.02)
    f = E.centered_ranks(scores)
    want = float(torch.tensor(float(Fraction(0.1) / (4 * Fraction(0.02)) * (f[0] - f[1])), dtype=torch.float32))
    assert terms == [(cands[0].seed, want)]
    plain = E.EsConfig(lr=0.1, antithetic=False)
    cands = E.candidates(plain, 5, 0.02, 3, 0)
    assert [s for s, _ in E.update_terms(plain, cands, [1, 2, 3], 0.02)] == [cands[0].seed, cands[2].seed]


@pytest.mark.parametrize("version", N.NOISE_VERSIONS)
def test_the_hf_backend_shifts_theta_by_the_formula(random_model, version):
    """θ_1 = cast(θ_0 + Σ c_j ε_j), summed in order in float32, from the flat buffer and the per-tensor path alike;
    perturbations then start from θ_1 and restore returns to it."""
    from randopt_hpc.backends.hf import HFBackend

    flat = HFBackend(str(random_model), max_new_tokens=2, batch_size=1, noise_version=version)
    per_tensor = HFBackend(str(random_model), max_new_tokens=2, batch_size=1, noise_version=version,
                           noise_impl="torch")
    assert flat.rewrites_all and not per_tensor.rewrites_all
    theta0 = {n: t.clone() for n, t in flat.base_tensors().items()}
    terms = [(3, 0.003), (2**40 + 1, -0.001), (9, 0.0005)]
    for b in (flat, per_tensor):
        b.shift(terms)
    for n in flat.names:
        acc = torch.zeros(theta0[n].numel())
        for seed, c in terms:
            acc += N.noise(seed, n, (theta0[n].numel(),), impl="torch", version=version) * c
        want = (theta0[n].reshape(-1) + acc).view(theta0[n].shape)
        assert torch.equal(flat.base_tensors()[n], want) and torch.equal(per_tensor.base_tensors()[n], want), n
        assert torch.equal(flat._params[n].detach(), want)
    flat.perturb(4, 0.01)
    n = flat.names[0]
    eps = N.noise(4, n, flat.base_tensors()[n].shape, impl="torch", version=version)
    assert torch.equal(flat._params[n].detach(), eps * 0.01 + flat.base_tensors()[n])
    with pytest.raises(RuntimeError, match="restore"):
        flat.shift(terms)
    flat.restore()
    assert torch.equal(flat._params[n].detach(), flat.base_tensors()[n])
    flat.load_base(theta0)
    assert all(torch.equal(flat._params[n].detach(), theta0[n]) for n in flat.names)


@pytest.mark.parametrize("override, field", [
    (["population.sigmas=[0.01,0.02]"], "population.sigmas"),
    (["population.size=7"], "population.size"),
    (["es.lr=0"], "es.lr"),
    (["es.lr=nan"], "es.lr"),
    (["es.iterations=0"], "es.iterations"),
    (["es.sigma_decay=0"], "es.sigma_decay"),
    (["es.sigma_decay=0.01", "es.iterations=40"], "es.sigma_decay"),
    (["population.sigmas=[1e-300]"], "population.sigmas"),
    (["backend=vllm", "population.noise=window"], "population.noise"),
    (["selection.schedule=halving"], "selection.schedule"),
    (["generation.samples=2"], "generation.samples"),
    (["es.eval_every=0"], "es.eval_every"),
    (["es.checkpoint_every=-1"], "es.checkpoint_every"),
    (["es.antithetic=maybe"], "es.antithetic"),
    (["es.iteration=3"], "es.iteration"),
    (["algorithm=ga"], "algorithm"),
])
def test_bad_es_configs_name_their_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config("configs/demo.yaml", ES + ["generation.samples=0"] + override)
    assert str(e.value).startswith(field + ":"), str(e.value)


def test_es_fields_do_not_touch_a_randopt_runs_fingerprint_and_iterations_may_grow():
    from randopt_hpc.fingerprint import fingerprint_hash, growth_refusal

    base = load_config("configs/demo.yaml")
    assert fingerprint_hash(base) == fingerprint_hash(load_config("configs/demo.yaml", ["es.lr=0.5"]))
    es = load_config("configs/demo.yaml", ES + ["generation.samples=0"])
    assert fingerprint_hash(es) != fingerprint_hash(load_config("configs/demo.yaml", ES + ["es.lr=0.02",
                                                                                            "generation.samples=0"]))
    assert growth_refusal(es, load_config("configs/demo.yaml", ES + ["es.iterations=20", "generation.samples=0"])) \
        is None
    refusal = growth_refusal(es, load_config("configs/demo.yaml", ES[:-1] + ["population.size=10",
                                                                             "generation.samples=0"]))
    assert refusal.startswith("population.size:")
