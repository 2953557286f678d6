import pytest

from search.fptas import interval_candidates, w_coefficient


def test_w_on_hand_computed_cases():
    # half the size, a quarter of the cost, e = 2: (1/2) * (3/4) / 2
    assert w_coefficient(50, 25, 2.0, 100, 100) == pytest.approx(0.1875)
    assert w_coefficient(100, 10, 1.0, 100, 100) == 0.0  # as large as T
    assert w_coefficient(10, 1e9, 0.5, 40, 4e9) == pytest.approx(0.75 * 0.75 / 0.5)


@pytest.mark.parametrize("e", [0.0, -1.0, float("inf"), float("nan")])
def test_w_rejects_a_non_positive_or_non_finite_error(e):
    with pytest.raises(ValueError, match="error surrogate"):
        w_coefficient(1, 1, e, 10, 10)


def test_one_candidate_per_interval_of_sorted_sizes():
    sizes = [50, 10, 40, 20, 30, 60, 70]
    costs = [5, 1, 9, 2, 1, 6, 7]
    chosen = interval_candidates(sizes, costs, 3, p_max=100, i_max=10)
    # sorted by size: [10, 20, 30 | 40, 50, 60 | 70]; best (1-p/100)(1-i/10) per interval
    assert [sizes[k] for k in chosen] == [10, 50, 70]
    # 10 (0.9*0.9) beats 20 (0.8*0.8) and 30 (0.7*0.9); 50 (0.5*0.5) beats 40 (0.6*0.1) and 60 (0.4*0.4)


def test_epsilon_one_takes_everything_and_full_epsilon_one():
    sizes = [3, 1, 2]
    assert interval_candidates(sizes, [1, 1, 1], 1, 10, 10) == [1, 2, 0]
    assert len(interval_candidates(sizes, [1, 1, 1], 3, 10, 10)) == 1


@pytest.mark.parametrize("epsilon", [0, 4])
def test_epsilon_outside_one_to_space_size(epsilon):
    with pytest.raises(ValueError, match="epsilon must be between 1 and"):
        interval_candidates([1, 2, 3], [1, 2, 3], epsilon, 10, 10)


def test_ties_in_size_and_cost_go_to_the_smallest_tie_break():
    # three architectures equal in p and i (e.g. differing only in heads): the tie-break decides, not the order
    assert interval_candidates([5, 5, 5], [2, 2, 2], 3, 10, 10, tie_break=[0.7, 0.0, 0.3]) == [1]
    assert interval_candidates([5, 5, 5], [2, 2, 2], 3, 10, 10) == [0]
