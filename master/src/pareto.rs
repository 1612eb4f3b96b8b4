//! NSGA-II's two orderings of a population on maximised integer objectives: fast non-dominated
//! sorting (Deb et al. 2002) and crowding distance.
//!
//! Both are deterministic: fronts list indices in ascending order, and ties in crowding keep
//! the original order. Objectives are exact integers, so dominance never depends on rounding, and
//! crowding distances are exact rationals, so a tie in crowding is a real tie.

use std::cmp::Ordering;

use num_bigint::BigUint;

/// Whether `a` dominates `b`: at least as good in every objective and better in one (maximising).
pub fn dominates<const M: usize>(a: &[i128; M], b: &[i128; M]) -> bool {
    a.iter().zip(b).all(|(x, y)| x >= y) && a.iter().zip(b).any(|(x, y)| x > y)
}

/// Partitions `points` into non-dominated fronts, best first; each front lists indices ascending.
/// Equal points share a front.
pub fn non_dominated_sort<const M: usize>(points: &[[i128; M]]) -> Vec<Vec<usize>> {
    let n = points.len();
    let mut dominated_by_me: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut domination_count = vec![0usize; n];
    for i in 0..n {
        for j in 0..n {
            if i != j && dominates(&points[i], &points[j]) {
                dominated_by_me[i].push(j);
            } else if i != j && dominates(&points[j], &points[i]) {
                domination_count[i] += 1;
            }
        }
    }
    let mut fronts = Vec::new();
    let mut current: Vec<usize> = (0..n).filter(|&i| domination_count[i] == 0).collect();
    while !current.is_empty() {
        let mut next = Vec::new();
        for &i in &current {
            for &j in &dominated_by_me[i] {
                domination_count[j] -= 1;
                if domination_count[j] == 0 {
                    next.push(j);
                }
            }
        }
        next.sort_unstable();
        fronts.push(current);
        current = next;
    }
    fronts
}

/// An exact crowding distance: infinite, or the non-negative rational `numerator / denominator`.
///
/// Ordered by value (`Eq` is equality of the rationals, whatever their representation), so equal
/// distances are real ties, never an artefact of floating-point rounding.
#[derive(Debug, Clone)]
pub struct Crowding {
    /// `None` for infinity.
    finite: Option<(BigUint, BigUint)>,
}

impl Crowding {
    /// The distance of a front's extremes.
    pub const INFINITE: Crowding = Crowding { finite: None };

    fn zero() -> Crowding {
        Crowding {
            finite: Some((BigUint::ZERO, BigUint::from(1u8))),
        }
    }

    pub fn is_infinite(&self) -> bool {
        self.finite.is_none()
    }

    /// The nearest `f64` (ties to even), for reports. The quotient is rounded once, so equal
    /// distances map to the same `f64` whatever their representation; order by the `Crowding`
    /// itself, though, as distinct distances may map to the same `f64`.
    pub fn to_f64(&self) -> f64 {
        let Some((numerator, denominator)) = &self.finite else {
            return f64::INFINITY;
        };
        if numerator.bits() == 0 {
            return 0.0;
        }
        // Not `numerator.to_f64() / denominator.to_f64()`: that rounds three times, and
        // `ToPrimitive::to_f64` saturates to infinity from 2^1024, which a denominator (up to
        // 2^(128 M)) passes from M = 8. Instead, with `numerator / denominator` in
        // [2^(e - 1), 2^(e + 1)) for e the difference of their bit lengths, scale it by
        // 2^(66 - e) and divide in integers: the quotient has 66 or 67 bits, and setting its
        // lowest bit when the remainder is nonzero (a sticky bit) makes the one rounding to 53
        // bits, in `as f64`, correct. Multiplying by a power of two is then exact: a nonzero
        // distance is at least 1 / (2^128 - 1) (one gap of 1 over one range), far above the
        // subnormals.
        let exponent = numerator.bits() as i64 - denominator.bits() as i64 - 66;
        let shift = exponent.unsigned_abs();
        let (n, d) = if exponent < 0 {
            (numerator << shift, denominator.clone())
        } else {
            (numerator.clone(), denominator << shift)
        };
        let (quotient, remainder) = (&n / &d, &n % &d);
        let sticky = u128::from(remainder.bits() != 0);
        let quotient = u128::try_from(&quotient).expect("a quotient of at most 67 bits");
        (quotient | sticky) as f64 * 2f64.powi(exponent as i32)
    }
}

impl Ord for Crowding {
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.finite, &other.finite) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some((a, b)), Some((c, d))) if b == d => a.cmp(c),
            (Some((a, b)), Some((c, d))) => (a * d).cmp(&(c * b)),
        }
    }
}

impl PartialOrd for Crowding {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Crowding {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Crowding {}

/// Exact crowding distance of each member of `front` (indices into `points`), in `front`'s order,
/// by the rule of pymoo's `calc_crowding_distance` with `filter_out_duplicates=True` (its default
/// up to pymoo 0.5; pymoo 0.6's `RankAndCrowding` passes `False` for `"cd"`):
///
/// - a front of at most two members: all infinite;
/// - otherwise a member equal to an earlier member of the front (in `front`'s order) is a
///   duplicate and gets zero; the others (the first copies) are the front's unique points, and
///   the rest of the rule applies to them alone;
/// - per objective, sort the unique points from best to worst (ties by position in `front`, as
///   pymoo's stable sort of the minimised `-value` does); if the objective's range over them is
///   zero it adds nothing, else the first and last get infinity and every other one the gap
///   between its two neighbours' values divided by the range. So where several points share the
///   best value the first of them is infinite, where several share the worst value the last.
///
/// The distance is the sum over objectives. Exactly: with `r_m` the nonzero ranges and `g_m` a
/// member's gaps, it is `sum_m g_m * prod_{k != m} r_k / prod_k r_k`, in integers of any size,
/// so no range, product or sum can overflow, whatever the `i128` inputs (each range and gap is
/// below 2^128, the denominator below 2^(128 M), the numerator at most M times the denominator).
pub fn crowding<const M: usize>(points: &[[i128; M]], front: &[usize]) -> Vec<Crowding> {
    let n = front.len();
    if n <= 2 {
        return vec![Crowding::INFINITE; n];
    }
    let value = |k: usize| &points[front[k]];
    let unique: Vec<usize> = (0..n)
        .filter(|&k| (0..k).all(|j| value(j) != value(k)))
        .collect();
    let u = unique.len();
    let mut infinite = vec![false; n];
    let mut gaps = vec![[0u128; M]; n];
    let mut ranges = [0u128; M];
    // `m` selects one objective column across all points, not one point.
    #[allow(clippy::needless_range_loop)]
    for m in 0..M {
        // Descending, as pymoo sorts the minimised `-value` ascending (stably).
        let mut order = unique.clone();
        order.sort_by(|&a, &b| value(b)[m].cmp(&value(a)[m]).then(a.cmp(&b)));
        let (first, last) = (order[0], order[u - 1]);
        ranges[m] = value(last)[m].abs_diff(value(first)[m]);
        if ranges[m] == 0 {
            continue;
        }
        infinite[first] = true;
        infinite[last] = true;
        for w in order.windows(3) {
            gaps[w[1]][m] = value(w[2])[m].abs_diff(value(w[0])[m]);
        }
    }
    // weights[m] = the product of the nonzero ranges other than objective m's.
    let mut denominator = BigUint::from(1u8);
    let mut weights: [BigUint; M] = std::array::from_fn(|_| BigUint::from(1u8));
    for (m, &r) in ranges.iter().enumerate().filter(|(_, &r)| r != 0) {
        denominator *= r;
        for (k, w) in weights.iter_mut().enumerate() {
            if k != m {
                *w *= r;
            }
        }
    }
    let mut is_unique = vec![false; n];
    for &k in &unique {
        is_unique[k] = true;
    }
    (0..n)
        .map(|k| {
            if !is_unique[k] {
                Crowding::zero()
            } else if infinite[k] {
                Crowding::INFINITE
            } else {
                let numerator = gaps[k].iter().zip(&weights).map(|(&g, w)| w * g).sum();
                Crowding {
                    finite: Some((numerator, denominator.clone())),
                }
            }
        })
        .collect()
}

/// [`crowding`] as `f64`, for reports (see [`Crowding::to_f64`]); [`select`] orders by the exact
/// values.
pub fn crowding_distance<const M: usize>(points: &[[i128; M]], front: &[usize]) -> Vec<f64> {
    crowding(points, front)
        .iter()
        .map(Crowding::to_f64)
        .collect()
}

/// NSGA-II environmental selection: the indices of the `keep` best points, filling front by front
/// and cutting the last front by crowding distance (larger first, then lower index), in that rank
/// order. Also returns all fronts of `points`.
pub fn select<const M: usize>(points: &[[i128; M]], keep: usize) -> (Vec<usize>, Vec<Vec<usize>>) {
    let fronts = non_dominated_sort(points);
    let mut chosen = Vec::with_capacity(keep);
    for front in &fronts {
        if chosen.len() >= keep {
            break;
        }
        let distance = crowding(points, front);
        let mut order: Vec<usize> = (0..front.len()).collect();
        order.sort_by(|&a, &b| distance[b].cmp(&distance[a]).then(a.cmp(&b)));
        let room = keep - chosen.len();
        chosen.extend(order.into_iter().take(room).map(|k| front[k]));
    }
    (chosen, fronts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Fronts by definition: front k holds the points dominated only by points of fronts < k.
    fn brute_force_fronts(points: &[[i128; 3]]) -> Vec<Vec<usize>> {
        let mut rank: Vec<Option<usize>> = vec![None; points.len()];
        let mut k = 0;
        while rank.iter().any(|r| r.is_none()) {
            let front: Vec<usize> = (0..points.len())
                .filter(|&i| rank[i].is_none())
                .filter(|&i| {
                    !(0..points.len())
                        .any(|j| rank[j].is_none() && dominates(&points[j], &points[i]))
                })
                .collect();
            for &i in &front {
                rank[i] = Some(k);
            }
            k += 1;
        }
        (0..k)
            .map(|f| (0..points.len()).filter(|&i| rank[i] == Some(f)).collect())
            .collect()
    }

    fn points() -> impl Strategy<Value = Vec<[i128; 3]>> {
        // Small ranges force many ties and duplicates.
        prop::collection::vec(prop::array::uniform3(-3i128..4), 0..40)
    }

    proptest! {
        #[test]
        fn fast_sort_equals_the_brute_force_definition(p in points()) {
            prop_assert_eq!(non_dominated_sort(&p), brute_force_fronts(&p));
        }

        #[test]
        fn crowding_gives_every_varying_objectives_extremes_infinity(p in points()) {
            for front in non_dominated_sort(&p) {
                let d = crowding_distance(&p, &front);
                prop_assert_eq!(d.len(), front.len());
                #[allow(clippy::needless_range_loop)]
                for m in 0..3 {
                    let lo = front.iter().map(|&i| p[i][m]).min().unwrap();
                    let hi = front.iter().map(|&i| p[i][m]).max().unwrap();
                    if lo == hi {
                        continue;
                    }
                    // Some member holding each extreme value is infinite.
                    prop_assert!(front.iter().zip(&d).any(|(&i, &x)| p[i][m] == lo && x.is_infinite()));
                    prop_assert!(front.iter().zip(&d).any(|(&i, &x)| p[i][m] == hi && x.is_infinite()));
                }
                prop_assert!(d.iter().all(|&x| x >= 0.0));
            }
        }

        #[test]
        fn crowding_matches_a_floating_point_reference(p in points()) {
            for front in non_dominated_sort(&p) {
                let exact = crowding(&p, &front);
                let reference = float_crowding(&p, &front);
                for (a, (x, &rx)) in exact.iter().zip(&reference).enumerate() {
                    prop_assert_eq!(x.is_infinite(), rx.is_infinite());
                    if !rx.is_infinite() {
                        prop_assert!((x.to_f64() - rx).abs() < 1e-9);
                    }
                    for (y, &ry) in exact.iter().zip(&reference).skip(a + 1) {
                        if rx.is_finite() && ry.is_finite() && (rx - ry).abs() > 1e-9 {
                            prop_assert_eq!(x.cmp(y), rx.total_cmp(&ry));
                        }
                    }
                }
            }
        }

        #[test]
        fn later_copies_get_zero_and_never_outrank_the_first(p in points(), keep in 0usize..40) {
            for front in non_dominated_sort(&p) {
                let d = crowding(&p, &front);
                for k in 0..front.len() {
                    if front.len() > 2 && (0..k).any(|j| p[front[j]] == p[front[k]]) {
                        prop_assert_eq!(&d[k], &Crowding::zero());
                    }
                }
            }
            let (chosen, _) = select(&p, keep);
            for &i in &chosen {
                if let Some(first) = (0..i).find(|&j| p[j] == p[i]) {
                    prop_assert!(chosen.contains(&first));
                }
            }
        }

        #[test]
        fn a_constant_objective_changes_nothing(
            p in prop::collection::vec(prop::array::uniform2(-3i128..4), 0..40),
            constant in any::<i128>(),
        ) {
            let q: Vec<[i128; 3]> = p.iter().map(|&[a, b]| [a, b, constant]).collect();
            prop_assert_eq!(non_dominated_sort(&p), non_dominated_sort(&q));
            for front in non_dominated_sort(&p) {
                prop_assert_eq!(crowding(&p, &front), crowding(&q, &front));
            }
            prop_assert_eq!(select(&p, 5), select(&q, 5));
        }

        #[test]
        fn to_f64_is_the_correctly_rounded_quotient(
            a in 0u64..1 << 53,
            b in 1u64..1 << 53,
            k in 1u128..,
            shift in 0u32..1200,
        ) {
            // a and b are exact in f64, so `a as f64 / b as f64` is the quotient rounded once;
            // scaling both by k * 2^shift (past f64's range) changes the representation, not
            // the value.
            let c = |x: u64| (BigUint::from(x) * k) << shift;
            let x = Crowding { finite: Some((c(a), c(b))) };
            prop_assert_eq!(x.to_f64(), a as f64 / b as f64);
        }

        #[test]
        fn selection_keeps_whole_better_fronts_first(p in points(), keep in 0usize..40) {
            let (chosen, fronts) = select(&p, keep);
            prop_assert_eq!(chosen.len(), keep.min(p.len()));
            let rank = |i: usize| fronts.iter().position(|f| f.contains(&i)).unwrap();
            let worst_chosen = chosen.iter().map(|&i| rank(i)).max();
            if let Some(w) = worst_chosen {
                for i in 0..p.len() {
                    if rank(i) < w {
                        prop_assert!(chosen.contains(&i));
                    }
                }
            }
        }
    }

    #[test]
    fn inner_member_distance_is_the_normalised_neighbour_gap() {
        let p = [[0, 4, 0], [1, 2, 0], [4, 0, 0]];
        let d = crowding_distance(&p, &[0, 1, 2]);
        assert!(d[0].is_infinite() && d[2].is_infinite());
        assert_eq!(d[1], 4.0 / 4.0 + 4.0 / 4.0);
    }

    /// pymoo's rule in `f64`, for the property test against the exact version.
    fn float_crowding(points: &[[i128; 3]], front: &[usize]) -> Vec<f64> {
        let n = front.len();
        if n <= 2 {
            return vec![f64::INFINITY; n];
        }
        let value = |k: usize| points[front[k]];
        let unique: Vec<usize> = (0..n)
            .filter(|&k| (0..k).all(|j| value(j) != value(k)))
            .collect();
        let mut d = vec![0.0; n];
        for m in 0..3 {
            let mut order = unique.clone();
            order.sort_by_key(|&k| (-value(k)[m], k));
            let (first, last) = (order[0], order[order.len() - 1]);
            let range = (value(first)[m] - value(last)[m]) as f64;
            if range == 0.0 {
                continue;
            }
            d[first] = f64::INFINITY;
            d[last] = f64::INFINITY;
            for w in order.windows(3) {
                d[w[1]] += (value(w[0])[m] - value(w[2])[m]) as f64 / range;
            }
        }
        d
    }

    /// (clean, robust, MACs) as maximised objectives.
    fn objectives(fitness: &[(i128, i128, i128)]) -> Vec<[i128; 3]> {
        fitness.iter().map(|&(c, r, macs)| [c, r, -macs]).collect()
    }

    #[test]
    fn zero_range_objective_gives_no_infinite_distance() {
        // All at 3,000 MACs: that objective says nothing, the true extremes are (0, 3) and (3, 0).
        let p = objectives(&[(1, 2, 3000), (2, 1, 3000), (0, 3, 3000), (3, 0, 3000)]);
        let d = crowding(&p, &[0, 1, 2, 3]);
        assert!(!d[0].is_infinite() && !d[1].is_infinite());
        assert!(d[2].is_infinite() && d[3].is_infinite());
        // (3 - 1) / 3 + (2 - 0) / 3 each.
        assert_eq!(d[0], d[1]);
        assert_eq!(d[0].to_f64(), 4.0 / 3.0);
        assert_eq!(select(&p, 2).0, vec![2, 3]);
    }

    #[test]
    fn duplicate_points_count_once_for_crowding() {
        let p = objectives(&[(2, 2, 2000), (0, 2, 1000), (3, 3, 3000), (3, 3, 3000)]);
        let d = crowding(&p, &[0, 1, 2, 3]);
        // Over the unique points (0, 1, 2): 2 is the best in clean and robust and the worst in
        // MACs, 1 the worst in clean, the last of the two worst in robust and the best in MACs;
        // 0 is inner everywhere, with 3/3 + 1/1 + 2000/2000. The second copy of (3, 3, 3000)
        // gets zero. pymoo 0.6.2 (with the duplicate filter, minimising (-clean, -robust, MACs))
        // gives a third of these, dividing by the number of objectives: [1, inf, inf, 0].
        assert!(d[1].is_infinite() && d[2].is_infinite());
        assert_eq!(d[0].to_f64(), 3.0);
        assert_eq!(d[3], Crowding::zero());
        assert_eq!(select(&p, 2).0, vec![1, 2]);
        assert_eq!(select(&p, 3).0, vec![1, 2, 0]);

        // Two copies of an extreme used to both get infinity and crowd out a distinct point.
        let p = [[3, 0], [3, 0], [0, 3], [2, 1]];
        let d = crowding(&p, &[0, 1, 2, 3]);
        assert!(d[0].is_infinite() && d[2].is_infinite());
        assert_eq!(d[1], Crowding::zero());
        assert_eq!(d[3].to_f64(), 2.0);
        assert_eq!(select(&p, 3).0, vec![0, 2, 3]);
    }

    #[test]
    fn equal_crowding_is_an_exact_tie() {
        // Sorted by the first objective: (0, 10), (1, 8), (3, 4), (5, 3), (10, 0). The second
        // and third are inner with 3/10 + 6/10 and 4/10 + 5/10: 0.8999999999999999 and 0.9 in
        // f64, an exact tie, so the lower index (the second, at index 1) is kept.
        let p = [[5, 3], [1, 8], [0, 10], [3, 4], [10, 0]];
        let d = crowding(&p, &[0, 1, 2, 3, 4]);
        assert_eq!(d[1], d[3]);
        assert_eq!(d[1].to_f64(), 0.9);
        assert_eq!(crowding_distance(&p, &[0, 1, 2, 3, 4])[1], 0.9);
        assert_eq!(select(&p, 4).0, vec![2, 4, 0, 1]);
    }

    #[test]
    fn crowding_below_float_resolution_still_counts() {
        // Inner gaps (R/2, R/2), (R/2, R/2) and (R/2 + 1, R/2) over ranges R: 1, 1 and 1 + 1e-18,
        // all 1.0 in f64; the last (the highest index) is the most isolated.
        let r: i128 = 1_000_000_000_000_000_000;
        let p = [
            [r / 4, 3 * r / 4],
            [3 * r / 4 + 1, r / 4],
            [0, r],
            [r, 0],
            [r / 2, r / 2],
        ];
        let d = crowding(&p, &[0, 1, 2, 3, 4]);
        assert_eq!(d[0], d[1]);
        assert!(d[4] > d[0]);
        assert_eq!(d[4].to_f64(), d[0].to_f64());
        assert_eq!(select(&p, 3).0, vec![2, 3, 4]);
    }

    #[test]
    fn extreme_objective_values_do_not_overflow() {
        let (lo, hi) = (i128::MIN, i128::MAX);
        // 3 is inner in every objective with gaps 2^127 + 1, 2^127 and 2^127 + 1 over ranges
        // 2^128 - 1; 2 with 2^127 - 1, 2^127, 2^127 - 1: apart by 4 / (2^128 - 1).
        let p = [[lo, hi, lo], [hi, lo, hi], [1, -1, 1], [0, 0, 0]];
        assert_eq!(non_dominated_sort(&p), vec![vec![0, 1, 2, 3]]);
        let d = crowding(&p, &[0, 1, 2, 3]);
        assert!(d[0].is_infinite() && d[1].is_infinite());
        assert!(d[3] > d[2]);
        assert_eq!(d[2].to_f64(), 1.5);
        assert_eq!(d[3].to_f64(), 1.5);
        assert_eq!(select(&p, 3).0, vec![0, 1, 3]);
    }

    #[test]
    fn crowding_to_f64_rounds_once() {
        let c = |a: BigUint, b: BigUint| Crowding {
            finite: Some((a, b)),
        };
        let two = |e: u32| BigUint::from(1u8) << e;
        // 1 + 2^-53 + 2^-200: just above the midpoint between 1 and the next f64, 1 + 2^-52;
        // truncating the quotient without a sticky bit would make it a tie, rounded down to even.
        let x = c(two(200) + two(147) + 1u8, two(200));
        assert_eq!(x.to_f64(), 1.0 + f64::EPSILON);
        // The smallest nonzero distance, and ratios of integers beyond f64's range.
        assert_eq!(c(two(0), two(128) - 1u8).to_f64(), 2f64.powi(-128));
        assert_eq!(c(two(1100) * 3u8, two(1101)).to_f64(), 1.5);
        assert_eq!(c(BigUint::ZERO, two(2000)).to_f64(), 0.0);
        assert_eq!(Crowding::zero().to_f64(), 0.0);
        assert_eq!(Crowding::INFINITE.to_f64(), f64::INFINITY);
    }

    #[test]
    fn crowding_compares_as_rationals() {
        let c = |a: u128, b: u128| Crowding {
            finite: Some((BigUint::from(a), BigUint::from(b))),
        };
        assert_eq!(c(1, 2), c(2, 4));
        assert!(c(1, 3) < c(1, 2));
        assert!(c(u128::MAX, 1) < Crowding::INFINITE);
        assert_eq!(Crowding::zero(), c(0, 7));
        assert_eq!(
            c(u128::MAX - 1, u128::MAX).cmp(&c(u128::MAX - 2, u128::MAX - 1)),
            Ordering::Greater
        );
    }
}
