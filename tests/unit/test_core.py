"""Population, selection and vote: the pure core."""
import pytest

from randopt_hpc import population as pop
from randopt_hpc import select, vote


def test_candidate_is_its_index():
    a = pop.population(7, 50, (1e-3, 2e-3, 3e-3), "random")
    for i in (0, 13, 49):
        assert pop.candidate(7, i, 50, (1e-3, 2e-3, 3e-3), "random") == a[i]
    assert len({c.seed for c in a}) == 50
    assert all(0 <= c.seed < 2**63 for c in a)
    assert pop.population(8, 50, (1e-3,), "random")[0].seed != a[0].seed


def test_owned_partitions_for_any_size():
    for size in (1, 2, 3, 7):
        parts = [pop.owned(range(20), r, size) for r in range(size)]
        assert sorted(i for p in parts for i in p) == list(range(20))
        assert all(i % size == r for r, p in enumerate(parts) for i in p)


def test_sigma_assignment():
    sig = (1e-3, 2e-3, 3e-3)
    blocked = [c.sigma for c in pop.population(0, 9, sig, "blocked")]
    assert blocked == [1e-3] * 3 + [2e-3] * 3 + [3e-3] * 3
    rnd = [c.sigma for c in pop.population(0, 3000, sig, "random")]
    counts = [rnd.count(s) for s in sig]
    assert all(900 < c < 1100 for c in counts)          # uniform with replacement
    assert rnd[:20] != sorted(rnd[:20])


def test_ranking_ties_by_index_and_prefixes():
    order = select.ranking([5, 1, 3, 2, 4], [0.5, 0.9, 0.5, float("nan"), 0.9])
    assert order == [1, 4, 3, 5, 2]
    with pytest.raises(ValueError):
        select.ranking([1, 1], [0.0, 0.0])


def test_vote_majority_and_first_seen_tie_break():
    assert vote.vote_item(["a", "b", "b", None]) == ("b", 1)
    assert vote.vote_item(["a", "b", "b", "a"]) == ("a", 0)      # tie -> first in ranking order
    assert vote.vote_item([None, "", None]) == (None, -1)
    keys = [["6", None, "1"], ["7", None, "2"], ["7", None, "2"]]
    ok = [[True, False, False], [False, False, True], [False, False, True]]
    assert vote.vote(keys, ok, 1) == (["6", None, "1"], [True, False, False])
    voted, correct = vote.vote(keys, ok, 3)
    assert voted == ["7", None, "2"] and correct == [False, False, True]
    assert vote.accuracy(correct) == pytest.approx(1 / 3)


def test_rank_gpus_keeps_slurm_binding_and_splits_otherwise():
    from randopt_hpc.environment import Environment

    env = lambda **kw: Environment.from_os({k: str(v) for k, v in kw.items()})   # noqa: E731
    # srun --gpus-per-task=1: each task already sees only its GPU
    assert env(SLURM_PROCID=5, SLURM_NTASKS=8, SLURM_LOCALID=1, CUDA_VISIBLE_DEVICES="1").rank_gpus(1) is None
    # mpiexec on a 4-GPU node: local rank r takes the r-th visible device, never an empty list
    assert env(PMI_RANK=2, PMI_SIZE=4, MPI_LOCALRANKID=2, CUDA_VISIBLE_DEVICES="0,1,2,3").rank_gpus(1) == "2"
    assert env(PMI_RANK=1, PMI_SIZE=2, MPI_LOCALRANKID=1, CUDA_VISIBLE_DEVICES="4,5,6,7").rank_gpus(2) == "6,7"
    assert env(PMI_RANK=3, PMI_SIZE=4, MPI_LOCALRANKID=3).rank_gpus(1) == "3"
    with pytest.raises(RuntimeError, match="local rank 2 needs 2 GPU"):
        env(PMI_RANK=2, PMI_SIZE=3, MPI_LOCALRANKID=2, CUDA_VISIBLE_DEVICES="0,1,2,3").rank_gpus(2)


def test_ranks_on_this_node_from_the_launcher():
    from randopt_hpc.environment import Environment

    assert Environment.from_os({}).local_size == 1
    assert Environment.from_os({"MPI_LOCALNRANKS": "4"}).local_size == 4            # MPICH's hydra
    assert Environment.from_os({"OMPI_COMM_WORLD_LOCAL_SIZE": "2"}).local_size == 2  # Open MPI
    slurm = {"SLURM_TASKS_PER_NODE": "4(x2),3"}
    assert [Environment.from_os({**slurm, "SLURM_NODEID": str(n)}).local_size for n in range(3)] == [4, 4, 3]
