//! Image↔text retrieval recall@k on a paired set (several captions may share an image).

use super::classifier::pessimistic_rank;
use crate::ops::matmul::matmul;
use crate::{bail_shape, Result, Tensor};

/// Recall@k in both directions, `(k, recall)` in the order of the `ks` asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct RetrievalReport {
    /// Image queries: a hit when any of the image's captions is in the top k texts.
    pub image_to_text: Vec<(usize, f32)>,
    /// Text queries: a hit when the caption's image is in the top k images.
    pub text_to_image: Vec<(usize, f32)>,
    /// Images with at least one caption (the image queries; captionless images are skipped).
    pub num_image_queries: usize,
    /// Captions (the text queries).
    pub num_text_queries: usize,
}

impl RetrievalReport {
    /// Image→text recall@`k`, if `k` was asked for.
    pub fn image_to_text_at(&self, k: usize) -> Option<f32> {
        self.image_to_text.iter().find(|e| e.0 == k).map(|e| e.1)
    }

    /// Text→image recall@`k`, if `k` was asked for.
    pub fn text_to_image_at(&self, k: usize) -> Option<f32> {
        self.text_to_image.iter().find(|e| e.0 == k).map(|e| e.1)
    }
}

/// The similarity rows computed at once: at most this many f32s (64 MiB).
const CHUNK_ELEMS: usize = 1 << 24;

/// Recall@k for each `k` in `ks`, image→text and text→image, by cosine similarity (the features
/// are L2-normalised here, so they need not be; computed on the CPU in row chunks, so the full
/// `N × M` similarity matrix is never held).
///
/// `text_to_image[t]` is the index of caption `t`'s image (`< N`). Ties count against the
/// query, as in [`accuracy`](super::accuracy): a query is a hit at `k` only if fewer than `k`
/// non-matching items score `>=` its best matching one. Images without captions are not image
/// queries (see [`RetrievalReport::num_image_queries`]). With no queries a recall is 0.
pub fn retrieval_recall(
    image_features: &Tensor,
    text_features: &Tensor,
    text_to_image: &[usize],
    ks: &[usize],
) -> Result<RetrievalReport> {
    const OP: &str = "retrieval_recall";
    let (img, txt) = (image_features, text_features);
    if img.rank() != 2 || txt.rank() != 2 || img.shape()[1] != txt.shape()[1] {
        bail_shape!(
            OP,
            "features must be [N, D] and [M, D], got {:?} and {:?}",
            img.shape(),
            txt.shape()
        );
    }
    let (n, m, d) = (img.shape()[0], txt.shape()[0], img.shape()[1]);
    if text_to_image.len() != m {
        bail_shape!(OP, "{} image indices for {m} texts", text_to_image.len());
    }
    if let Some(&bad) = text_to_image.iter().find(|&&i| i >= n) {
        bail_shape!(OP, "image index {bad} out of range for {n} images");
    }
    let img = normalized(img, n, d)?;
    let txt = normalized(txt, m, d)?;

    // the captions of each image
    let mut captions: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (t, &i) in text_to_image.iter().enumerate() {
        captions[i].push(t);
    }

    // image → text: rank of the best caption among the other texts
    let mut i2t_ranks = Vec::with_capacity(n);
    for_each_row(&img, &txt, n, m, d, |i, row| {
        let caps = &captions[i];
        if caps.is_empty() {
            return;
        }
        // the best non-NaN caption score (NaN, a miss, when all are NaN)
        let best = caps.iter().map(|&t| row[t]).fold(f32::NAN, f32::max);
        i2t_ranks.push(pessimistic_rank(row, |t| text_to_image[t] == i, best));
    })?;
    // text → image: rank of the caption's image among the other images
    let mut t2i_ranks = Vec::with_capacity(m);
    for_each_row(&txt, &img, m, n, d, |t, row| {
        let y = text_to_image[t];
        t2i_ranks.push(pessimistic_rank(row, |j| j == y, row[y]));
    })?;

    let recall = |ranks: &[Option<usize>], k: usize| -> f32 {
        if ranks.is_empty() {
            return 0.0;
        }
        let hits = ranks
            .iter()
            .filter(|r| matches!(r, Some(r) if *r < k))
            .count();
        hits as f32 / ranks.len() as f32
    };
    Ok(RetrievalReport {
        image_to_text: ks.iter().map(|&k| (k, recall(&i2t_ranks, k))).collect(),
        text_to_image: ks.iter().map(|&k| (k, recall(&t2i_ranks, k))).collect(),
        num_image_queries: i2t_ranks.len(),
        num_text_queries: m,
    })
}

/// Row-major L2-normalised copy of a [rows, d] tensor, on the CPU.
fn normalized(t: &Tensor, rows: usize, d: usize) -> Result<Vec<f32>> {
    let mut v = t.to_vec();
    for r in v.chunks_exact_mut(d.max(1)).take(rows) {
        let n = r
            .iter()
            .map(|&x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt();
        let inv = 1.0 / n.max(crate::ops::normalize::L2_EPS as f64);
        r.iter_mut().for_each(|x| *x = (*x as f64 * inv) as f32);
    }
    Ok(v)
}

/// Calls `f(q, scores)` for each query row `q` of `queries · keysᵀ`, in order.
fn for_each_row(
    queries: &[f32],
    keys: &[f32],
    nq: usize,
    nk: usize,
    d: usize,
    mut f: impl FnMut(usize, &[f32]),
) -> Result<()> {
    if nq == 0 || nk == 0 {
        return Ok(());
    }
    let keys = Tensor::from_vec(keys.to_vec(), [nk, d])?;
    let rows = (CHUNK_ELEMS / nk.max(1)).clamp(1, nq);
    for start in (0..nq).step_by(rows) {
        let len = rows.min(nq - start);
        let q = Tensor::from_vec(queries[start * d..(start + len) * d].to_vec(), [len, d])?;
        let s = matmul(&q, &keys, false, true)?.to_vec();
        for (i, row) in s.chunks_exact(nk).enumerate() {
            f(start + i, row);
        }
    }
    Ok(())
}
