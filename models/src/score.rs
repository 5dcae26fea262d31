//! Scores and their explanation: which features carry an anomaly score.

/// The scores of a batch of rows, with each row's per-value contributions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scores {
    /// Values per row.
    pub width: usize,
    /// One score per row.
    pub scores: Vec<f32>,
    /// `scores.len() × width` non-negative terms; a row's terms are what its score is made of.
    pub terms: Vec<f32>,
}

impl Scores {
    /// Empty scores for rows of `width` values, with room for `n_rows`.
    pub fn with_capacity(width: usize, n_rows: usize) -> Self {
        Scores {
            width,
            scores: Vec::with_capacity(n_rows),
            terms: Vec::with_capacity(n_rows * width),
        }
    }

    /// Scores from per-value terms (`width` per row): each row's score is its mean term.
    pub fn from_terms(terms: Vec<f32>, width: usize) -> Self {
        let scores = terms
            .chunks_exact(width)
            .map(|row| row.iter().sum::<f32>() / width as f32)
            .collect();
        Scores {
            width,
            scores,
            terms,
        }
    }

    /// The terms of row `i`.
    pub fn row_terms(&self, i: usize) -> &[f32] {
        &self.terms[i * self.width..(i + 1) * self.width]
    }
}

/// A feature's share of a score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Contribution {
    /// Index of the feature in the schema.
    pub feature: usize,
    /// Fraction of the score, in [0, 1].
    pub share: f32,
}

/// The `k` features with the largest share of a row's score, largest first.
///
/// `terms` is one row (`window × n_features` values, reading-major); a feature's share sums
/// its terms over every reading of the window.
pub fn top_contributions(terms: &[f32], n_features: usize, k: usize) -> Vec<Contribution> {
    let mut per_feature = vec![0.0f32; n_features];
    for reading in terms.chunks_exact(n_features) {
        for (total, term) in per_feature.iter_mut().zip(reading) {
            *total += term;
        }
    }
    let sum: f32 = per_feature.iter().sum();
    if !(sum > 0.0 && sum.is_finite()) {
        return Vec::new();
    }
    // k is small (3 by default): keep the best k in order while scanning, no sort of all.
    let mut top: Vec<Contribution> = Vec::with_capacity(k + 1);
    for (feature, total) in per_feature.iter().enumerate() {
        let share = total / sum;
        if top.len() == k && top.last().is_none_or(|last| share <= last.share) {
            continue;
        }
        let at = top
            .iter()
            .position(|c| share > c.share)
            .unwrap_or(top.len());
        top.insert(at, Contribution { feature, share });
        top.truncate(k);
    }
    top
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contributions_sum_over_the_window_and_rank_largest_first() {
        // Two readings of three features.
        let terms = [1.0, 0.0, 3.0, 1.0, 0.0, 5.0];
        let top = top_contributions(&terms, 3, 2);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].feature, 2);
        assert!((top[0].share - 0.8).abs() < 1e-6);
        assert_eq!(top[1].feature, 0);
        assert!((top[1].share - 0.2).abs() < 1e-6);
    }

    #[test]
    fn a_zero_score_has_no_contributions() {
        assert!(top_contributions(&[0.0, 0.0], 2, 3).is_empty());
    }
}
