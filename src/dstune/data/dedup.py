"""Exact and near-duplicate detection, within a split and between splits (leakage).

Exact: a 64-bit hash of the normalised text (NFKC, case-folded, without spacing or punctuation).
Near: MinHash over character shingles (so unsegmented Chinese needs no tokenizer) with LSH
banding; the bands and rows are chosen for the configured Jaccard threshold, and every candidate
pair is verified on its signatures before it counts. Signatures are computed with numpy for a
chunk of documents at a time, not per shingle in Python.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from dstune.config.cleaning import DedupSettings, NearDedupSettings

_NOT_WORD = re.compile(r"[\W_]+")
_MIX = np.uint64(0x9E3779B97F4A7C15)
_CHUNK_SHINGLES = 1 << 14  # shingles hashed at once: 16k x num_perm x 4 bytes of scratch memory
_CHUNK_PAIRS = 1 << 16
_FALSE_CANDIDATE_WEIGHT = 1 / 9  # a missed duplicate costs 9 times a needless check


def normalise(text: str) -> str:
    """The text as compared for exact duplicates: NFKC, case-folded, letters and digits only."""
    return _NOT_WORD.sub("", unicodedata.normalize("NFKC", text).casefold())


def exact_hash(text: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=8).digest(),
        "little",
    )


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Random odd multipliers and offsets of the hash permutations ``x -> a*x + b (mod 2**32)``."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**31, size=num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = rng.integers(0, 2**32, size=num_perm, dtype=np.uint32)
    return a, b


def minhash(documents: list[str], settings: NearDedupSettings) -> np.ndarray:
    """MinHash signatures (documents x num_perm, uint32) over character shingles of ``settings.shingle``."""
    a, b = _permutations(settings.num_perm)
    out = np.full((settings.num_perm, len(documents)), np.iinfo(np.uint32).max, dtype=np.uint32)
    hashes, owners = _shingle_hashes(documents, settings.shingle)
    for start in range(0, len(hashes), _CHUNK_SHINGLES):
        h, who = (
            hashes[start : start + _CHUNK_SHINGLES],
            owners[start : start + _CHUNK_SHINGLES],
        )
        values = a[:, None] * h[None, :]  # num_perm x shingles, wrapping mod 2**32
        values += b[:, None]
        bounds = np.flatnonzero(np.r_[True, who[1:] != who[:-1]])
        np.minimum.at(out.T, who[bounds], np.minimum.reduceat(values, bounds, axis=1).T)
    return np.ascontiguousarray(out.T)


def _shingle_hashes(documents: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every k-character shingle, and the index of the document each belongs to.

    The documents are joined with k-1 NUL characters between them, so that one rolling hash over
    the joined code points covers every document and no shingle spans two documents.
    """
    lengths = np.array([len(doc) for doc in documents], dtype=np.int64)
    counts = np.where(lengths > 0, np.maximum(lengths - k + 1, 1), 0)
    pad = "\x00" * (k - 1)
    codes = np.frombuffer((pad.join(documents) + pad).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    starts = np.concatenate([[0], np.cumsum(lengths + k - 1)[:-1]])
    first = np.repeat(np.cumsum(counts) - counts, counts)
    positions = np.repeat(starts, counts) + np.arange(counts.sum()) - first
    rolling = np.zeros(len(positions), dtype=np.uint64)
    for j in range(k):
        rolling = rolling * np.uint64(1_000_003) + codes[positions + j]
    return ((rolling * _MIX) >> np.uint64(32)).astype(np.uint32), np.repeat(np.arange(len(documents)), counts)


@lru_cache(maxsize=32)
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm that minimise missed pairs above ``threshold`` and, less,
    candidates below it: candidates are verified on their signatures, so a false candidate only costs time.
    """
    s = np.linspace(0.0, 1.0, 501)
    best, best_error = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        caught = 1 - (1 - s**rows) ** bands
        error = np.trapezoid(np.where(s < threshold, _FALSE_CANDIDATE_WEIGHT * caught, 1 - caught), s)
        if error < best_error:
            best, best_error = (bands, rows), error
    return best


def _band_keys(signatures: np.ndarray, threshold: float) -> np.ndarray:
    """documents x bands uint64 keys; two documents share a key in some band if they are LSH candidates."""
    bands, rows = lsh_bands(threshold, signatures.shape[1])
    weights = _permutations(rows, seed=2)[0].astype(np.uint64) << np.uint64(31) | np.uint64(1)
    blocks = signatures[:, : bands * rows].astype(np.uint64).reshape(len(signatures), bands, rows)
    return (blocks * weights).sum(axis=2)


def similarity(signatures: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of the documents at ``left`` and ``right`` (pairwise)."""
    out = np.zeros(len(left))
    for start in range(0, len(left), _CHUNK_PAIRS):
        chunk = slice(start, start + _CHUNK_PAIRS)
        out[chunk] = (signatures[left[chunk]] == signatures[right[chunk]]).mean(axis=1)
    return out


@dataclass
class Fingerprints:
    """What dedup needs of one split: exact hashes, MinHash signatures, and where each row came from."""

    hashes: np.ndarray
    signatures: np.ndarray | None
    where: list[str]
    empty: np.ndarray
    """True for rows with no text (never near-duplicates)."""

    @classmethod
    def of(cls, batches: Iterable[tuple[list[str], list[str]]], settings: DedupSettings) -> Fingerprints:
        """From ``(documents, where)`` batches."""
        hashes, signatures, where, empty = (
            [np.zeros(0, np.uint64)],
            [],
            [],
            [np.zeros(0, bool)],
        )
        for documents, places in batches:
            hashes.append(np.array([exact_hash(doc) for doc in documents], dtype=np.uint64))
            if settings.near.enabled:
                signatures.append(minhash(documents, settings.near))
            where.extend(places)
            empty.append(np.array([not doc.strip() for doc in documents], dtype=bool))
        near = np.concatenate(signatures) if signatures else None
        return cls(np.concatenate(hashes), near, where, np.concatenate(empty))

    def subset(self, rows: np.ndarray) -> Fingerprints:
        """The fingerprints of ``rows`` only (in that order)."""
        near = None if self.signatures is None else self.signatures[rows]
        return Fingerprints(self.hashes[rows], near, [self.where[i] for i in rows], self.empty[rows])


def duplicates_within(fp: Fingerprints, settings: DedupSettings) -> dict[int, str]:
    """Row index → reason for every row that repeats an earlier row (exactly, or near the threshold)."""
    reasons: dict[int, str] = {}
    if settings.exact:
        _, first = np.unique(fp.hashes, return_index=True)
        first_of = dict(zip(fp.hashes[first].tolist(), first.tolist()))
        for row, h in enumerate(fp.hashes.tolist()):
            if first_of[h] != row:
                reasons[row] = f"exact duplicate of {fp.where[first_of[h]]}"
    if settings.near.enabled and fp.signatures is not None:
        live = np.array(
            [r for r in range(len(fp.where)) if r not in reasons and not fp.empty[r]],
            dtype=np.int64,
        )
        for row, (kept, sim) in _near_clusters(fp.signatures, live, settings.near.threshold).items():
            reasons[row] = f"near-duplicate of {fp.where[kept]} (Jaccard ~{sim:.2f})"
    return reasons


def _near_clusters(signatures: np.ndarray, rows: np.ndarray, threshold: float) -> dict[int, tuple[int, float]]:
    """Among ``rows``: each near-duplicate row → (the first row of its cluster, their similarity)."""
    if len(rows) < 2:
        return {}
    keys = _band_keys(signatures[rows], threshold)
    left, right = [], []
    for band in range(keys.shape[1]):
        order = np.argsort(keys[:, band], kind="stable")
        sorted_keys = keys[order, band]
        starts = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
        head = order[np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))]
        member = order != head
        left.append(head[member])
        right.append(order[member])
    pairs = np.unique(np.stack([np.concatenate(left), np.concatenate(right)], axis=1), axis=0)
    pairs = pairs[similarity(signatures, rows[pairs[:, 0]], rows[pairs[:, 1]]) >= threshold]
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs.tolist():
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    found = {}
    for i in range(len(rows)):
        r = root(i)
        if r != i:
            found[int(rows[i])] = (
                int(rows[r]),
                float(similarity(signatures, rows[[r]], rows[[i]])[0]),
            )
    return found


def leaks(evaluation: Fingerprints, train: Fingerprints, settings: DedupSettings) -> dict[int, str]:
    """Evaluation row index → reason for every row that (nearly) duplicates a training row."""
    reasons: dict[int, str] = {}
    if settings.exact:
        first = {h: i for i, h in reversed(list(enumerate(train.hashes.tolist())))}
        for row, h in enumerate(evaluation.hashes.tolist()):
            if h in first:
                reasons[row] = f"exact duplicate of training row {train.where[first[h]]}"
    if settings.near.enabled and evaluation.signatures is not None and len(train.where):
        threshold = settings.near.threshold
        train_keys, eval_keys = (
            _band_keys(train.signatures, threshold),
            _band_keys(evaluation.signatures, threshold),
        )
        for band in range(eval_keys.shape[1]):
            order = np.argsort(train_keys[:, band], kind="stable")
            at = np.minimum(
                np.searchsorted(train_keys[order, band], eval_keys[:, band]),
                len(order) - 1,
            )
            match = order[at]
            hit = (train_keys[match, band] == eval_keys[:, band]) & ~evaluation.empty
            rows, partners = np.flatnonzero(hit), match[hit]
            sims = (evaluation.signatures[rows] == train.signatures[partners]).mean(axis=1)
            for row, partner, sim in zip(rows.tolist(), partners.tolist(), sims.tolist()):
                if row not in reasons and sim >= threshold:
                    reasons[row] = f"near-duplicate of training row {train.where[partner]} (Jaccard ~{sim:.2f})"
    return reasons
