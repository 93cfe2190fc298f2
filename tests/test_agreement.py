"""Agreement figures checked against values worked out by hand (and against the published ones)."""

import pytest

from reviews.agreement import category_counts, cohen_kappa, fleiss_kappa, krippendorff_alpha

N = None


def test_cohen_kappa_on_a_two_by_two_table():
    # 50 items, two raters:        B yes  B no
    #                      A yes     20     5     (A says yes 25 times)
    #                      A no      10    15     (A says no  25 times)
    # p_o = (20 + 15) / 50 = 0.70
    # p_e = P(yes)·P(yes) + P(no)·P(no) = (25/50)(30/50) + (25/50)(20/50) = 0.30 + 0.20 = 0.50
    # κ = (0.70 - 0.50) / (1 - 0.50) = 0.40
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.40)


def test_cohen_kappa_is_one_for_full_agreement_and_undefined_without_variation():
    assert cohen_kappa([("a", "a"), ("b", "b")]) == pytest.approx(1.0)
    assert cohen_kappa([("a", "a"), ("a", "a")]) is None
    assert cohen_kappa([]) is None


def test_fleiss_kappa_on_the_classic_example():
    # The worked example of Fleiss' kappa (Wikipedia, "Fleiss' kappa"): 10 items, 14 raters, 5 categories.
    # P_i per row = (Σ n_ij² - 14) / (14·13); e.g. row 1: (196 - 14) / 182 = 1.000, row 2: (4+36+16+4-14)/182
    # = 0.253. P̄ = 3.780 / 10 = 0.378. p_j = column sums / 140 = 20, 28, 39, 21, 32 / 140 =
    # 0.143, 0.200, 0.279, 0.150, 0.229; P̄e = Σ p_j² = 0.213. κ = (0.378 - 0.213) / (1 - 0.213) = 0.210.
    table = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]  # fmt: skip
    assert fleiss_kappa(table) == pytest.approx(0.210, abs=0.0005)


def test_fleiss_kappa_on_a_small_table_by_hand():
    # 3 items, 3 raters, categories yes/no: (3,0), (0,3), (2,1).
    # P_i = (Σ n² - 3) / 6: 1, 1, (4+1-3)/6 = 1/3; P̄ = (7/3)/3 = 7/9.
    # p_yes = 5/9, p_no = 4/9; P̄e = 25/81 + 16/81 = 41/81.
    # κ = (7/9 - 41/81) / (1 - 41/81) = (63/81 - 41/81) / (40/81) = 22/40 = 0.55
    units = [["y", "y", "y"], ["n", "n", "n"], ["y", "y", "n"]]
    assert fleiss_kappa(category_counts(units, ["y", "n"])) == pytest.approx(0.55)
    with pytest.raises(ValueError):
        fleiss_kappa([[2, 0], [1, 0]])


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 coders, 12 units,
# missing values; unit 12 has one value only and is not pairable. Published: nominal 0.743,
# ordinal 0.815, interval 0.849.
RELIABILITY_DATA = list(
    zip(
        [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
        [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
        strict=True,
    )
)


def test_krippendorff_alpha_on_krippendorffs_worked_example():
    # Nominal by hand: the coincidence matrix has n = 40 pairable values (n_1=9, n_2=13, n_3=10, n_4=5,
    # n_5=3). Disagreeing pairs, weighted 1/(m_u - 1): unit 2 (2,3,2,2): 2·3/3 = 2; unit 6 (1,2,3,4):
    # 12/3 = 4; unit 8 (1,1,2,1): 2·3/3 = 2. D_o ∝ 8; D_e ∝ (n² - Σ n_c²) / (n - 1) = (1600 - 384) / 39
    # = 31.18; α = 1 - 8 / 31.18 = 0.743.
    assert krippendorff_alpha(RELIABILITY_DATA, "nominal") == pytest.approx(0.743, abs=0.0005)
    assert krippendorff_alpha(RELIABILITY_DATA, "ordinal") == pytest.approx(0.815, abs=0.0005)
    assert krippendorff_alpha(RELIABILITY_DATA, "interval") == pytest.approx(0.849, abs=0.0005)


def test_krippendorff_alpha_interval_on_a_small_table_by_hand():
    # Two raters, three items: (1, 2), (3, 3), (5, 4). Pairable values n = 6, mean 3.
    # D_o: each unit's two ordered pairs weigh 1/(2-1): 2·1² + 0 + 2·1² = 4.
    # D_e: Σ_c Σ_k n_c n_k (c-k)² / (n-1) = 2n·Σ(v - mean)² / (n-1) = 2·6·(4+1+0+0+4+1) / 5 = 24.
    # α = 1 - 4 / 24 = 0.8333
    units = [[1, 2], [3, 3], [5, 4]]
    assert krippendorff_alpha(units, "interval") == pytest.approx(1 - 4 / 24)
    # Missing values and single-value units leave the result unchanged.
    assert krippendorff_alpha([[1, 2, N], [N, 3, 3], [5, N, 4], [2, N, N]], "interval") == pytest.approx(
        1 - 4 / 24
    )


def test_krippendorff_alpha_is_undefined_without_pairs_or_variation():
    assert krippendorff_alpha([[1, N], [N, 2]]) is None
    assert krippendorff_alpha([[3, 3], [3, 3]]) is None
    with pytest.raises(ValueError):
        krippendorff_alpha([[1, 2]], "ratio")
