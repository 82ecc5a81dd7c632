//! Metrics with bootstrap intervals, and agreement statistics between a
//! judge and human labels.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use super::rng::{seed_of, SplitMix64};

/// A mean with its 95% bootstrap percentile interval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Estimate {
    pub n: usize,
    pub value: f64,
    pub ci95: [f64; 2],
}

pub const BOOTSTRAP_RESAMPLES: usize = 1000;

/// Mean of `xs` with a percentile bootstrap interval (1000 resamples).
pub fn mean_ci(xs: &[f64], seed: u64) -> Option<Estimate> {
    let n = xs.len();
    if n == 0 {
        return None;
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let mut rng = SplitMix64::new(seed);
    let mut means: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| (0..n).map(|_| xs[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        means
            [((p * (BOOTSTRAP_RESAMPLES - 1) as f64).round() as usize).min(BOOTSTRAP_RESAMPLES - 1)]
    };
    Some(Estimate {
        n,
        value: round6(mean),
        ci95: [round6(q(0.025)), round6(q(0.975))],
    })
}

/// Round for stable JSON output.
pub fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Agreement between predicted and reference labels (categorical).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Agreement {
    pub n: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub cohen_kappa: f64,
    /// Rows: human label, columns: predicted label, in `labels` order.
    pub labels: Vec<String>,
    pub confusion: Vec<Vec<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quadratic_kappa: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spearman: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mae: Option<f64>,
}

/// 95% percentile bootstrap intervals of accuracy, macro-F1 and Cohen's κ
/// (1000 resamples of the pairs, seeded).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgreementCi {
    pub accuracy: [f64; 2],
    pub macro_f1: [f64; 2],
    pub cohen_kappa: [f64; 2],
}

pub fn agreement_ci(labels: &[String], pairs: &[(usize, usize)], seed: u64) -> AgreementCi {
    let n = pairs.len();
    if n == 0 {
        return AgreementCi {
            accuracy: [0.0; 2],
            macro_f1: [0.0; 2],
            cohen_kappa: [0.0; 2],
        };
    }
    let mut rng = SplitMix64::new(seed);
    let mut acc = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    let mut f1 = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    let mut kappa = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    let mut re = Vec::with_capacity(n);
    for _ in 0..BOOTSTRAP_RESAMPLES {
        re.clear();
        re.extend((0..n).map(|_| pairs[rng.below(n)]));
        let a = agreement(labels, &re);
        acc.push(a.accuracy);
        f1.push(a.macro_f1);
        kappa.push(a.cohen_kappa);
    }
    let ci = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
        [round6(q(0.025)), round6(q(0.975))]
    };
    AgreementCi {
        accuracy: ci(&mut acc),
        macro_f1: ci(&mut f1),
        cohen_kappa: ci(&mut kappa),
    }
}

/// Categorical agreement over `labels` (pairs: (human, predicted) indices).
pub fn agreement(labels: &[String], pairs: &[(usize, usize)]) -> Agreement {
    let k = labels.len();
    let n = pairs.len();
    let mut cm = vec![vec![0usize; k]; k];
    for &(h, p) in pairs {
        cm[h][p] += 1;
    }
    let correct: usize = (0..k).map(|i| cm[i][i]).sum();
    let acc = if n > 0 {
        correct as f64 / n as f64
    } else {
        0.0
    };
    // macro-F1 over labels that occur in either side
    let mut f1s = Vec::new();
    for (i, row_i) in cm.iter().enumerate() {
        let tp = row_i[i] as f64;
        let row: f64 = row_i.iter().sum::<usize>() as f64;
        let col: f64 = cm.iter().map(|r| r[i]).sum::<usize>() as f64;
        if row == 0.0 && col == 0.0 {
            continue;
        }
        let f1 = if tp == 0.0 {
            0.0
        } else {
            2.0 * tp / (row + col)
        };
        f1s.push(f1);
    }
    let macro_f1 = if f1s.is_empty() {
        0.0
    } else {
        f1s.iter().sum::<f64>() / f1s.len() as f64
    };
    Agreement {
        n,
        accuracy: round6(acc),
        macro_f1: round6(macro_f1),
        cohen_kappa: round6(weighted_kappa(&cm, false)),
        labels: labels.to_vec(),
        confusion: cm,
        quadratic_kappa: None,
        spearman: None,
        mae: None,
    }
}

/// Cohen's kappa; `quadratic` uses weights (i-j)^2/(k-1)^2.
fn weighted_kappa(cm: &[Vec<usize>], quadratic: bool) -> f64 {
    let k = cm.len();
    let n: f64 = cm.iter().flatten().sum::<usize>() as f64;
    if n == 0.0 || k < 2 {
        return 0.0;
    }
    let row: Vec<f64> = cm.iter().map(|r| r.iter().sum::<usize>() as f64).collect();
    let col: Vec<f64> = (0..k)
        .map(|j| (0..k).map(|i| cm[i][j]).sum::<usize>() as f64)
        .collect();
    let weight = |i: usize, j: usize| -> f64 {
        if quadratic {
            let d = i as f64 - j as f64;
            d * d / ((k - 1) * (k - 1)) as f64
        } else if i == j {
            0.0
        } else {
            1.0
        }
    };
    let mut obs = 0.0;
    let mut exp = 0.0;
    for i in 0..k {
        for j in 0..k {
            obs += weight(i, j) * cm[i][j] as f64 / n;
            exp += weight(i, j) * row[i] * col[j] / (n * n);
        }
    }
    if exp == 0.0 {
        return if obs == 0.0 { 1.0 } else { 0.0 };
    }
    1.0 - obs / exp
}

/// Agreement on ordinal 1..=5 scores: everything in [`agreement`] plus
/// quadratic-weighted kappa, Spearman and MAE.
pub fn score_agreement(pairs: &[(u8, f64)]) -> Agreement {
    let labels: Vec<String> = (1..=5).map(|s| s.to_string()).collect();
    let idx: Vec<(usize, usize)> = pairs
        .iter()
        .map(|&(h, p)| ((h - 1) as usize, (p.round().clamp(1.0, 5.0) as usize) - 1))
        .collect();
    let mut a = agreement(&labels, &idx);
    a.quadratic_kappa = Some(round6(weighted_kappa(&a.confusion, true)));
    let h: Vec<f64> = pairs.iter().map(|p| p.0 as f64).collect();
    let p: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    a.spearman = Some(round6(spearman(&h, &p)));
    a.mae = Some(round6(
        h.iter().zip(&p).map(|(a, b)| (a - b).abs()).sum::<f64>() / pairs.len().max(1) as f64,
    ));
    a
}

/// Average ranks (ties get the mean rank).
fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    idx.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let mut r = vec![0.0; xs.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && xs[idx[j + 1]] == xs[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let ma = a.iter().sum::<f64>() / n;
    let mb = b.iter().sum::<f64>() / n;
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        return 0.0;
    }
    cov / (va.sqrt() * vb.sqrt())
}

pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b))
}

/// Distribution of integer scores 1..=5 as shares.
pub fn distribution(scores: &[u8]) -> BTreeMap<String, f64> {
    let n = scores.len().max(1) as f64;
    (1..=5u8)
        .map(|s| {
            (
                s.to_string(),
                round6(scores.iter().filter(|&&x| x == s).count() as f64 / n),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kappa_known_values() {
        // Example with kappa = 0.4: [[20,5],[10,15]]
        let labels = vec!["a".to_string(), "b".to_string()];
        let mut pairs = vec![];
        pairs.extend(std::iter::repeat_n((0, 0), 20));
        pairs.extend(std::iter::repeat_n((0, 1), 5));
        pairs.extend(std::iter::repeat_n((1, 0), 10));
        pairs.extend(std::iter::repeat_n((1, 1), 15));
        let a = agreement(&labels, &pairs);
        assert!((a.cohen_kappa - 0.4).abs() < 1e-9, "{}", a.cohen_kappa);
        assert!((a.accuracy - 0.7).abs() < 1e-9);
    }

    #[test]
    fn quadratic_kappa_and_spearman() {
        let perfect: Vec<(u8, f64)> = (1..=5).map(|s| (s, s as f64)).collect();
        let a = score_agreement(&perfect);
        assert_eq!(a.quadratic_kappa, Some(1.0));
        assert_eq!(a.spearman, Some(1.0));
        assert_eq!(a.mae, Some(0.0));
        // sklearn cohen_kappa_score([1,2,3,4,5],[1,2,3,5,4], weights="quadratic") = 0.9
        let a = score_agreement(&[(1, 1.0), (2, 2.0), (3, 3.0), (4, 5.0), (5, 4.0)]);
        assert!(
            (a.quadratic_kappa.unwrap() - 0.9).abs() < 1e-9,
            "{:?}",
            a.quadratic_kappa
        );
        assert!((spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]) - 0.948683).abs() < 1e-5);
    }

    #[test]
    fn bootstrap_is_deterministic_and_brackets_the_mean() {
        let xs: Vec<f64> = (0..200).map(|i| (i % 3 == 0) as u8 as f64).collect();
        let a = mean_ci(&xs, 7).unwrap();
        let b = mean_ci(&xs, 7).unwrap();
        assert_eq!(a, b);
        assert!(a.ci95[0] < a.value && a.value < a.ci95[1]);
        assert!(a.ci95[1] - a.ci95[0] < 0.2);
    }
}
