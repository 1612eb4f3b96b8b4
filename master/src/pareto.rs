//! NSGA-II's two orderings of a population on maximised integer objectives: fast non-dominated
//! sorting (Deb et al. 2002) and crowding distance.
//!
//! Both are deterministic: fronts list indices in ascending order, and ties in crowding keep
//! the original order. Objectives are exact integers, so dominance never depends on rounding.

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

/// Crowding distance of each member of `front` (indices into `points`), in `front`'s order.
/// Per objective, the extremes get infinity and inner members the gap between their neighbours
/// divided by the objective's range; an objective with zero range adds nothing.
pub fn crowding_distance<const M: usize>(points: &[[i128; M]], front: &[usize]) -> Vec<f64> {
    let n = front.len();
    let mut distance = vec![0.0f64; n];
    if n <= 2 {
        return vec![f64::INFINITY; n];
    }
    // `m` selects one objective column across all points, not one point.
    #[allow(clippy::needless_range_loop)]
    for m in 0..M {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&k| (points[front[k]][m], k));
        let lo = points[front[order[0]]][m];
        let hi = points[front[order[n - 1]]][m];
        distance[order[0]] = f64::INFINITY;
        distance[order[n - 1]] = f64::INFINITY;
        if hi == lo {
            continue;
        }
        let range = (hi - lo) as f64;
        for w in 1..n - 1 {
            let gap = points[front[order[w + 1]]][m] - points[front[order[w - 1]]][m];
            distance[order[w]] += gap as f64 / range;
        }
    }
    distance
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
        let distance = crowding_distance(points, front);
        let mut order: Vec<usize> = (0..front.len()).collect();
        order.sort_by(|&a, &b| distance[b].total_cmp(&distance[a]).then(a.cmp(&b)));
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
        fn crowding_gives_every_objectives_extremes_infinity(p in points()) {
            for front in non_dominated_sort(&p) {
                let d = crowding_distance(&p, &front);
                prop_assert_eq!(d.len(), front.len());
                #[allow(clippy::needless_range_loop)]
                for m in 0..3 {
                    let lo = front.iter().map(|&i| p[i][m]).min().unwrap();
                    let hi = front.iter().map(|&i| p[i][m]).max().unwrap();
                    // Some member holding each extreme value is infinite.
                    prop_assert!(front.iter().zip(&d).any(|(&i, &x)| p[i][m] == lo && x.is_infinite()));
                    prop_assert!(front.iter().zip(&d).any(|(&i, &x)| p[i][m] == hi && x.is_infinite()));
                }
                prop_assert!(d.iter().all(|&x| x >= 0.0));
            }
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
}
