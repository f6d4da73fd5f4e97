"""Ground→aerial retrieval and pair-verification metrics in bounded memory.

Why chunked: the naive evaluation (Sample4Geo and friends) materialises the whole query×gallery similarity
matrix; 10k queries against 10^6 tiles is 40 GB of float32. Here the similarity is computed one
(query chunk × gallery chunk) block at a time and every metric is accumulated on the fly:

- ranks: a query's rank is the number of gallery items scored *strictly* higher than its true tile (ties
  are resolved in the query's favour, the standard definition); R@K counts ranks < K, R@1% uses
  K = max(1, N // 100);
- hit rate (VIGOR): the same rank computed for the best-scored of the true tile and its semi-positives;
- top-1 / top-k gallery indices (localisation error, report examples);
- pair-verification AP over all Q·N (query, tile) pairs, a pair being positive when the tile is the query's
  true tile. AP is the area under the step-wise PR curve with tied scores grouped (what
  ``sklearn.metrics.average_precision_score`` computes). It needs, for every distinct positive score ``t``,
  the number of pairs scored ``>= t``. Those thresholds are known before the pass (the Q positive scores are
  computed first), so each block only adds to a fixed fine histogram of pair scores (2^16 bins between the
  lowest and highest positive score; pairs below the lowest cannot count and are skipped), and the few
  values falling into a bin that contains a threshold are additionally bucketed exactly by ``searchsorted``
  against the thresholds. The bin index is a monotone
  function of the score, so every pair in a threshold-free bin is wholly above or below each threshold and the
  counts, hence the AP, are exact. The one approximation: a positive's score is computed in a small GEMM of
  its own, which matches the score inside the big block bit for bit on the usual BLAS kernels (same reduction
  order over the embedding dimension); where a kernel differs, one pair per query may move by one float32 ulp,
  changing AP by far less than 1e-3 (the tests check the chunked AP against the exact one to 1e-6).

A gallery item may hold several views (an (N, V, d) gallery: the tile seen from V centres, for queries taken
anywhere inside it); its score is its best view's, or the mean of its ``view_pool`` best
(`wherecnn.similarity.tile_scores`). A hub-corrected gallery (`wherecnn.similarity.hub_corrected`) carries
its correction as one more coordinate, so the metrics see those scores like any other.

Memory is O(Q + N_chunk·V·Q_chunk + bins), independent of Q·N.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wherecnn.similarity import pool_views, tile_scores

DEFAULT_KS = (1, 5, 10)
LOCALISATION_THRESHOLDS_M = (25.0, 50.0, 100.0, 1000.0)
HIST_BINS = 1 << 16


# ------------------------------------------------------------------------------------------------ exact AP


def average_precision(scores: Any, labels: Any) -> float:
    """Area under the step-wise precision-recall curve; pairs with tied scores form one step.

    ``scores`` and ``labels`` are 1-D and of equal length (labels: bool or 0/1); NaN without positives.
    """
    s, y = _check_scores_labels(scores, labels)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    precision, recall = _step_pr(s, y, n_pos)
    return float(np.sum(np.diff(np.concatenate(([0.0], recall))) * precision))


def pr_curve(scores: Any, labels: Any, *, max_points: int = 512) -> dict[str, list[float]]:
    """The step-wise PR curve (one point per distinct score, highest first), downsampled to ``max_points``."""
    s, y = _check_scores_labels(scores, labels)
    n_pos = int(y.sum())
    if n_pos == 0:
        return {"recall": [], "precision": []}
    precision, recall = _step_pr(s, y, n_pos)
    return _downsample_curve(recall, precision, max_points)


def _check_scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) must have the same length")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return s, y


def _step_pr(s: np.ndarray, y: np.ndarray, n_pos: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    last = np.concatenate((np.nonzero(np.diff(s))[0], [s.size - 1]))  # last pair of each tied group
    tp_g = tp[last].astype(np.float64)
    n_g = (last + 1).astype(np.float64)
    return tp_g / n_g, tp_g / n_pos


def _downsample_curve(recall: np.ndarray, precision: np.ndarray, max_points: int) -> dict[str, list[float]]:
    if recall.size > max_points:
        # keep the points nearest to evenly spaced recall levels, always the first and the last
        targets = np.linspace(recall[0], recall[-1], max_points)
        keep = np.unique(np.clip(np.searchsorted(recall, targets), 0, recall.size - 1))
        recall, precision = recall[keep], precision[keep]
    return {"recall": [float(v) for v in recall], "precision": [float(v) for v in precision]}


# ---------------------------------------------------------------------------------------- chunked evaluation


@dataclass
class RetrievalResult:
    """Per-query outcomes of one chunked evaluation, plus the pair-verification AP and PR curve."""

    ranks: np.ndarray  # (Q,) int64: gallery items scored strictly higher than the true tile
    positive_scores: np.ndarray  # (Q,) float32
    top1: np.ndarray  # (Q,) int64 gallery index of the best-scored tile (first one on ties)
    top1_scores: np.ndarray  # (Q,) float32
    n_gallery: int
    set_ranks: np.ndarray | None = None  # (Q,) rank of the best of {true tile} ∪ semi-positives
    topk: np.ndarray | None = None  # (Q, k) int64 indices, best first
    topk_scores: np.ndarray | None = None
    pair_ap: float = float("nan")
    pair_pr: dict[str, list[float]] = field(default_factory=dict)
    n_pairs: int = 0

    def recalls(self, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
        return recall_at_k(self.ranks, self.n_gallery, ks)

    @property
    def hit_rate(self) -> float:
        """VIGOR hit rate; equals R@1 when no semi-positives were given."""
        ranks = self.ranks if self.set_ranks is None else self.set_ranks
        return float(np.mean(ranks < 1)) if ranks.size else float("nan")


def recall_at_k(ranks: np.ndarray, n_gallery: int, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """{"R@k": share of ranks < k} for each k, plus "R@1%" with k = max(1, n_gallery // 100)."""
    ranks = np.asarray(ranks)
    out: dict[str, float] = {}
    for k in ks:
        out[f"R@{int(k)}"] = float(np.mean(ranks < int(k))) if ranks.size else float("nan")
    k1 = max(1, int(n_gallery) // 100)
    out["R@1%"] = float(np.mean(ranks < k1)) if ranks.size else float("nan")
    return out


def retrieval_metrics(
    query: Any, gallery: Any, positives: Any, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Recall@K (for each k in ``ks``) and Recall@1% of ground→aerial retrieval, in bounded memory.

    ``query`` (Q×d) and ``gallery`` (N×d, or N×V×d: V views per item, scored by the best) are
    L2-normalised embeddings (scores are dot products); ``positives[i]`` is query i's true gallery index.
    """
    result = evaluate_retrieval(query, gallery, positives, pair_ap=False)
    return result.recalls(ks)


def evaluate_retrieval(
    query: Any,
    gallery: Any,
    positives: Any,
    *,
    semi_positives: Sequence[Sequence[int]] | None = None,
    topk: int = 0,
    pair_ap: bool = True,
    view_pool: int = 1,
    block_elements: int = 1 << 23,
    gallery_chunk: int = 8192,
    bins: int = HIST_BINS,
    pr_points: int = 512,
    progress: Callable[[int, int], None] | None = None,
) -> RetrievalResult:
    """Every retrieval metric in one pass over the gallery, one block of at most ``block_elements`` scores.

    ``gallery`` may be a memory-mapped array: it is read one chunk of ``gallery_chunk`` rows at a time, once.
    ``semi_positives[i]`` lists query i's semi-positive gallery indices (hit rate). A multi-view gallery's
    items score by their ``view_pool`` best views (`pool_views`). ``progress(done, total)``
    is called after each gallery chunk with gallery rows done. NumPy throughout (its float32 GEMM is as fast
    as torch's on CPU, and its reductions over boolean masks are several times faster).
    """
    q = np.ascontiguousarray(np.asarray(query, dtype=np.float32))
    if q.ndim != 2:
        raise ValueError(f"query must be a 2-D (Q, d) array, got shape {q.shape}")
    if gallery.ndim not in (2, 3) or gallery.shape[-1] != q.shape[1]:
        raise ValueError(
            f"gallery must be (N, {q.shape[1]}) or (N, V, {q.shape[1]}) like the query, "
            f"got {tuple(gallery.shape)}"
        )
    if not np.isfinite(q).all():
        raise ValueError("query embeddings contain NaN or infinite values")
    n_q, n_g = q.shape[0], int(gallery.shape[0])
    if n_g == 0:
        raise ValueError("empty gallery")
    pos = np.asarray(positives, dtype=np.int64).ravel()
    if pos.shape[0] != n_q:
        raise ValueError(f"positives has {pos.shape[0]} entries for {n_q} queries")
    if n_q and (pos.min() < 0 or pos.max() >= n_g):
        raise ValueError(f"positives must be gallery indices in [0, {n_g}); got [{pos.min()}, {pos.max()}]")
    if semi_positives is not None and len(semi_positives) != n_q:
        raise ValueError(f"semi_positives has {len(semi_positives)} entries for {n_q} queries")
    topk = int(min(max(topk, 0), n_g))

    views = int(gallery.shape[1]) if gallery.ndim == 3 else 1
    g_chunk = max(1, min(gallery_chunk // views, n_g))
    q_chunk = max(1, min(n_q, block_elements // (g_chunk * views))) if n_q else 1
    q_slices = [slice(a, min(a + q_chunk, n_q)) for a in range(0, n_q, q_chunk)]

    def gallery_rows(index: Any) -> np.ndarray:
        rows = np.ascontiguousarray(np.asarray(gallery[index], dtype=np.float32))
        if not np.isfinite(rows).all():
            raise ValueError("gallery embeddings contain NaN or infinite values")
        return rows

    # Pre-pass: each query's positive score (and the best score over its semi-positive set), by GEMM, so
    # values match the ones inside the big blocks.
    pos_scores = np.empty(n_q, dtype=np.float32)
    set_scores = np.empty(n_q, dtype=np.float32) if semi_positives is not None else None
    for sl in q_slices:
        idx = pos[sl]
        uniq, inv = np.unique(idx, return_inverse=True)
        block = tile_scores(q[sl], gallery_rows(uniq), view_pool)
        pos_scores[sl] = block[np.arange(block.shape[0]), inv.ravel()]
        if set_scores is not None:
            assert semi_positives is not None
            members = [
                np.concatenate(([p], np.asarray(s, dtype=np.int64).ravel()))
                for p, s in zip(idx, semi_positives[sl], strict=True)
            ]
            flat = np.concatenate(members)
            if flat.min() < 0 or flat.max() >= n_g:
                raise ValueError(f"semi_positives must be gallery indices in [0, {n_g})")
            uniq_s, inv_s = np.unique(flat, return_inverse=True)
            sblock = tile_scores(q[sl], gallery_rows(uniq_s), view_pool)
            masked = np.full_like(sblock, -np.inf)
            rows = np.repeat(np.arange(len(members)), [m.size for m in members])
            masked[rows, inv_s.ravel()] = sblock[rows, inv_s.ravel()]
            set_scores[sl] = masked.max(axis=1)

    ranks = np.zeros(n_q, dtype=np.int64)
    set_ranks = np.zeros(n_q, dtype=np.int64) if set_scores is not None else None
    best_val = np.full(n_q, -np.inf, dtype=np.float32)
    best_idx = np.zeros(n_q, dtype=np.int64)
    top_val = np.full((n_q, topk), -np.inf, dtype=np.float32)
    top_idx = np.full((n_q, topk), n_g, dtype=np.int64)  # placeholders sort after every real entry
    acc = _PairAPAccumulator(pos_scores, bins=bins) if pair_ap and n_q else None

    for g0 in range(0, n_g, g_chunk):
        g1 = min(g0 + g_chunk, n_g)
        g = gallery_rows(slice(g0, g1))
        for sl in q_slices:
            s = tile_scores(q[sl], g, view_pool)  # (q_chunk, g_chunk)
            p = pos_scores[sl]
            ranks[sl] += np.count_nonzero(s > p[:, None], axis=1)
            # never count the true tile against itself, whatever its in-block value is
            local = pos[sl] - g0
            rows = np.nonzero((local >= 0) & (local < g1 - g0))[0]
            if rows.size:
                ranks[sl.start + rows] -= s[rows, local[rows]] > p[rows]
            if set_ranks is not None and set_scores is not None:
                set_ranks[sl] += np.count_nonzero(s > set_scores[sl][:, None], axis=1)
            ix = s.argmax(axis=1)  # first index among tied maxima
            v = s[np.arange(s.shape[0]), ix]
            better = v > best_val[sl]
            best_val[sl] = np.where(better, v, best_val[sl])
            best_idx[sl] = np.where(better, ix + g0, best_idx[sl])
            if topk:
                _merge_topk(top_val, top_idx, s, g0, sl)
            if acc is not None:
                acc.add(s)
        if progress is not None:
            progress(g1, n_g)

    result = RetrievalResult(
        ranks=ranks,
        positive_scores=pos_scores,
        top1=best_idx,
        top1_scores=best_val,
        n_gallery=n_g,
        set_ranks=set_ranks,
        topk=top_idx if topk else None,
        topk_scores=top_val if topk else None,
        n_pairs=n_q * n_g,
    )
    if acc is not None:
        result.pair_ap, result.pair_pr = acc.finish(pr_points)
    return result


def _merge_topk(top_val: np.ndarray, top_idx: np.ndarray, s: np.ndarray, g0: int, sl: slice) -> None:
    """Running top-k per query, in place: previous best ∪ this block's best, highest first, ties by index."""
    k = top_val.shape[1]
    kk = min(k, s.shape[1])
    if kk < s.shape[1]:
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
    else:
        part = np.broadcast_to(np.arange(s.shape[1]), s.shape)
    cand_val = np.concatenate([top_val[sl], np.take_along_axis(s, part, 1)], axis=1)
    cand_idx = np.concatenate([top_idx[sl], part + g0], axis=1)
    order = np.lexsort((cand_idx, -cand_val), axis=1)[:, :k]
    top_val[sl] = np.take_along_axis(cand_val, order, 1)
    top_idx[sl] = np.take_along_axis(cand_idx, order, 1)


class _PairAPAccumulator:
    """Exact pair-verification AP from a fine score histogram plus exact buckets for threshold bins.

    Only pairs scored at least the lowest positive score can count towards any threshold, so everything
    below it is skipped after one comparison, and the histogram spans [lowest, highest] positive score
    (higher scores clamp into the top bin). With a trained model most pairs are skipped.
    """

    def __init__(self, positive_scores: np.ndarray, *, bins: int) -> None:
        self.bins = int(bins)
        self.thresholds, self.multiplicity = np.unique(positive_scores.astype(np.float32), return_counts=True)
        lo, hi = float(self.thresholds[0]), float(self.thresholds[-1])
        self.lo = np.float32(lo)
        self.scale = np.float32(self.bins / (hi - lo) if hi > lo else 1.0)
        self.n_pos = int(positive_scores.size)
        self.hist = np.zeros(self.bins, dtype=np.int64)
        self.buckets = np.zeros(self.thresholds.size + 1, dtype=np.int64)
        self.threshold_bins = self._bin(self.thresholds)
        self.mixed = np.zeros(self.bins, dtype=bool)
        self.mixed[self.threshold_bins] = True

    def _bin(self, s: np.ndarray) -> np.ndarray:
        # float32 subtract, multiply, clip, truncate: a monotone map from score to bin (exactness rests on it)
        x = s - self.lo
        x *= self.scale
        np.clip(x, 0, self.bins - 1, out=x)
        return x.astype(np.int32)

    def add(self, s: np.ndarray) -> None:
        vals = s[s >= self.lo]
        if not vals.size:
            return
        idx = self._bin(vals)
        self.hist += np.bincount(idx, minlength=self.bins)
        vals = vals[self.mixed[idx]]
        if vals.size:
            r = np.searchsorted(self.thresholds, vals, side="right")  # thresholds <= value
            self.buckets += np.bincount(r, minlength=self.buckets.size)

    def finish(self, pr_points: int) -> tuple[float, dict[str, list[float]]]:
        clean = np.where(self.mixed, 0, self.hist)
        above = np.concatenate([np.cumsum(clean[::-1])[::-1][1:], [0]])  # threshold-free bins above bin b
        # pairs in threshold bins with at least k+1 thresholds <= their score, i.e. score >= thresholds[k]
        bucket_ge = np.cumsum(self.buckets[::-1])[::-1][1:]
        count_ge = (above[self.threshold_bins] + bucket_ge).astype(np.float64)
        mult = self.multiplicity.astype(np.float64)
        tp_ge = np.cumsum(mult[::-1])[::-1]
        count_ge = np.maximum(count_ge, tp_ge)
        precision = tp_ge / count_ge
        recall = tp_ge / self.n_pos
        ap = float(np.sum(mult / self.n_pos * precision))
        # highest threshold first, like the step-wise curve
        return ap, _downsample_curve(recall[::-1].copy(), precision[::-1].copy(), pr_points)


# ----------------------------------------------------------------------------------------- other measures


def balanced_pair_ap(
    query: Any, gallery: Any, positives: Any, *, seed: int = 0, pr_points: int = 512, view_pool: int = 1
) -> tuple[float, dict[str, list[float]]]:
    """AP and PR curve on a 1:1 sample: every query's true pair and as many uniformly drawn negative pairs."""
    q = np.asarray(query, dtype=np.float32)
    pos = np.asarray(positives, dtype=np.int64).ravel()
    n_q, n_g = q.shape[0], int(gallery.shape[0])
    if n_q == 0 or n_g < 2:
        return float("nan"), {"recall": [], "precision": []}
    rng = np.random.default_rng(seed)
    neg_q = rng.integers(0, n_q, size=n_q)
    neg_g = rng.integers(0, n_g - 1, size=n_q)
    neg_g = neg_g + (neg_g >= pos[neg_q])  # uniform over tiles other than the query's true one

    def paired(qs: np.ndarray, rows: np.ndarray) -> np.ndarray:  # score of qs[i] with rows[i]
        if rows.ndim == 2:
            return np.einsum("ij,ij->i", qs, rows)
        return pool_views(np.einsum("ij,ivj->iv", qs, rows), view_pool)

    pos_s = paired(q, np.asarray(gallery[pos], dtype=np.float32))
    order = np.argsort(neg_g)  # sorted reads for memory-mapped galleries
    neg_rows = np.empty((n_q, *gallery.shape[1:]), dtype=np.float32)
    neg_rows[order] = np.asarray(gallery[neg_g[order]], dtype=np.float32)
    neg_s = paired(q[neg_q], neg_rows)
    scores = np.concatenate([pos_s, neg_s])
    labels = np.concatenate([np.ones(n_q, bool), np.zeros(n_q, bool)])
    return average_precision(scores, labels), pr_curve(scores, labels, max_points=pr_points)


def localisation_error(
    *,
    pred_lat: Any,
    pred_lon: Any,
    true_lat: Any,
    true_lon: Any,
    thresholds_m: Sequence[float] = LOCALISATION_THRESHOLDS_M,
) -> dict[str, float]:
    """Geodesic (WGS84) distance from each predicted location to the truth: median, mean, share within."""
    from wherecnn.geo import distance_m

    d = np.atleast_1d(np.asarray(distance_m(lat1=pred_lat, lon1=pred_lon, lat2=true_lat, lon2=true_lon)))
    out: dict[str, float] = {
        "median_m": float(np.median(d)) if d.size else float("nan"),
        "mean_m": float(np.mean(d)) if d.size else float("nan"),
    }
    for t in thresholds_m:
        out[f"within_{int(t)}m"] = float(np.mean(d <= t)) if d.size else float("nan")
    return out


def summarize(result: RetrievalResult, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """The flat metrics dict of one evaluation (recalls, hit rate, pair AP)."""
    out = result.recalls(ks)
    out["hit_rate"] = result.hit_rate
    out["AP"] = result.pair_ap
    out["queries"] = float(result.ranks.size)
    out["gallery"] = float(result.n_gallery)
    return out
