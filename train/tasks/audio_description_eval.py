"""Audio-description metric R@k/N (AutoAD-II, ``recall_within_neighbours``) with a pluggable similarity.

Per movie, the reference ADs are put in time order (start, then end, then file order) and each generated
AD is matched to its reference by ``ad_id``; ``S[i, j]`` is the similarity of generated AD ``i`` to
reference AD ``j``. Windows of ``N`` consecutive ADs start at 0, N/2, N, ... while a whole window fits (a
trailing partial window is dropped); in a window, generated AD ``i`` counts as recalled at ``k`` when its
own reference ``i`` is among the ``k`` references of that window most similar to it. R@k/N of a movie is
the mean over its windows of the recalled fraction, and the reported R@k/N is the mean over movies (each
movie weighs the same), in percent.

Decisions where the official code is silent or crashes: a movie with fewer than ``N`` ADs is scored as one
window of all its ADs (the official ``range`` yields no window and its ``torch.stack`` fails); a window
smaller than ``k`` recalls everything (the official ``topk`` fails); ties rank the earlier reference
first, as a stable sort does (``torch.topk`` leaves ties unspecified).

Similarities: ``bertscore`` is the official one, BERTScore F1 (bert_score, roberta-large, layer 17, no
IDF); AutoAD-II also rescales with the roberta-large baseline, an affine map that changes no ranking, so
it is left out. Its weights must be available locally (Hugging Face cache or a directory). ``tfidf``
(cosine of TF-IDF vectors of word uni- and bigrams, IDF from the movie's references) runs anywhere and
is labelled in the output as NOT the official metric: its numbers are not comparable with papers.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from lamflow.datasets.ad_format import ADRecord, ad_id_field, ads_by_movie
from lamflow.datasets.msrvtt_format import caption_field
from lamflow.errors import LamflowError
from lamflow.fileio import iter_jsonl
from lamflow.train.tasks.scoring import EvaluationInputError, PredictionKeys, as_percent, check_ks, one_prediction_per_key

BERTSCORE_DEFAULT_MODEL = "roberta-large"
PREDICTION_KEYS = PredictionKeys(
    key="ad_id",
    prediction="caption",
    expected="reference AD(s)",
    truth="the references",
    why_every_one="R@k/N needs every AD of a movie",
)


# ---------------------------------------------------------------------------------------------------
# The metric on a similarity matrix
# ---------------------------------------------------------------------------------------------------


def window_starts(count: int, n: int) -> list[tuple[int, int]]:
    """(start, size) of the windows over ``count`` ADs: size ``n`` with stride ``n // 2``, partial last
    window dropped; a movie shorter than ``n`` is one window of all its ADs."""
    if count < n:
        return [(0, count)]
    return [(start, n) for start in range(0, count - n + 1, n // 2)]


def recall_within_windows(similarity: np.ndarray, ks: Sequence[int], n: int) -> dict[int, float]:
    """R@k/N of one movie as fractions, ``{k: recall}``, from its (count x count) similarity matrix
    (row ``i``: generated AD ``i`` against every reference; its own reference is column ``i``)."""
    similarity = np.asarray(similarity, dtype=float)
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1] or not len(similarity):
        raise ValueError(f"similarity must be a non-empty square matrix, got shape {similarity.shape}")
    per_window = []
    for start, size in window_starts(len(similarity), n):
        window = similarity[start : start + size, start : start + size]
        own = np.diag(window)[:, None]
        columns = np.arange(size)
        # Rank of the own reference in its row: references scoring higher, plus tied ones listed earlier.
        ahead = (window > own) | ((window == own) & (columns[None, :] < columns[:, None]))
        rank = ahead.sum(axis=1)
        per_window.append([np.mean(rank < k) for k in ks])
    return dict(zip(ks, np.mean(per_window, axis=0).tolist()))


# ---------------------------------------------------------------------------------------------------
# Similarities
# ---------------------------------------------------------------------------------------------------


class Similarity(Protocol):
    """Maps one movie's generated and reference ADs (both in time order) to S, (generated x references)."""

    name: str
    official: bool  # whether R@k/N with it is AutoAD-II's metric

    def __call__(self, generated: Sequence[str], references: Sequence[str]) -> np.ndarray: ...


def _ngrams(text: str) -> Counter:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return Counter(words + [" ".join(pair) for pair in zip(words, words[1:])])


class TfidfSimilarity:
    """Cosine similarity of TF-IDF vectors (word uni- and bigrams, smoothed IDF over the movie's
    references). NOT the official AutoAD-II similarity; for runs without BERTScore weights."""

    name = "tfidf"
    official = False

    def __call__(self, generated: Sequence[str], references: Sequence[str]) -> np.ndarray:
        reference_counts = [_ngrams(text) for text in references]
        generated_counts = [_ngrams(text) for text in generated]
        document_frequency = Counter(term for counts in reference_counts for term in counts)
        terms = sorted({term for counts in reference_counts + generated_counts for term in counts})
        column = {term: index for index, term in enumerate(terms)}
        idf = np.array([math.log((1 + len(references)) / (1 + document_frequency[term])) + 1 for term in terms])

        def unit_vectors(all_counts: list[Counter]) -> np.ndarray:
            matrix = np.zeros((len(all_counts), len(terms)))
            for row, counts in enumerate(all_counts):
                for term, count in counts.items():
                    matrix[row, column[term]] = count
            matrix *= idf
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)

        return unit_vectors(generated_counts) @ unit_vectors(reference_counts).T


class BertScoreSimilarity:
    """BERTScore F1 of every generated against every reference AD (bert_score's ``BERTScorer``), the
    official similarity. The model is loaded from local files on first use (Hugging Face cache or a
    directory); a model bert_score does not know by name needs ``num_layers``."""

    name = "bertscore"
    official = True

    def __init__(self, model: str = BERTSCORE_DEFAULT_MODEL, num_layers: int | None = None, device: str | None = None):
        self.model, self.num_layers, self.device = model, num_layers, device
        self._scorer: Any = None

    def _load(self) -> Any:
        try:
            from bert_score import BERTScorer
            from bert_score.utils import model2layers
        except ImportError as error:
            raise LamflowError(
                f"--similarity bertscore needs the bert-score package ({error}); pip install 'lamflow[bertscore]'"
            ) from None
        layers = self.num_layers or model2layers.get(Path(self.model).name)
        if layers is None:
            raise LamflowError(
                f"BERTScore model {self.model!r}: pass --bertscore-layers (bert_score knows the layer of named "
                "models only, e.g. 17 for roberta-large)"
            )
        try:
            return BERTScorer(model_type=self.model, num_layers=layers, device=self.device)
        except (OSError, ValueError) as error:
            raise LamflowError(
                f"BERTScore model {self.model!r} is not available locally ({str(error).splitlines()[0]}); "
                "download it once where the Hugging Face hub is reachable (it is cached) or pass "
                "--bertscore-model /path/to/roberta-large; --similarity tfidf runs offline but is NOT the "
                "official metric"
            ) from None

    def __call__(self, generated: Sequence[str], references: Sequence[str]) -> np.ndarray:
        if self._scorer is None:
            self._scorer = self._load()
        # One call for all pairs: bert_score embeds each distinct sentence once. F1 is symmetric, so the
        # official order (references as candidates) gives the same matrix.
        candidates = [text for text in generated for _ in references]
        _, _, f1 = self._scorer.score(candidates, list(references) * len(generated))
        return f1.reshape(len(generated), len(references)).cpu().numpy().astype(float)


# ---------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------


def load_references(path: str | Path) -> dict[str, list[ADRecord]]:
    """``{movie: [ADRecord, ...]}`` in time order from a JSONL file of ``{ad_id, movie, start, end, text}``."""
    # sorted() is stable: ADs with the same start and end keep their file order.
    return {movie: sorted(ads, key=lambda ad: (ad.start, ad.end))
            for movie, ads in ads_by_movie(path, "AD reference file").items()}


def load_predictions(path: str | Path, references: Mapping[str, Sequence[ADRecord]]) -> dict[str, str]:
    """``{ad_id: caption}``: exactly one non-empty caption for every reference AD."""
    return one_prediction_per_key(
        iter_jsonl(path, "AD prediction file"),
        {ad.ad_id for ads in references.values() for ad in ads},
        ad_id_field,
        lambda ad_id, record, where: caption_field(record, "caption", where),
        str(path),
        PREDICTION_KEYS,
    )


def _check_parameters(ks: Sequence[int], n: int) -> None:
    check_ks(ks, "--k")
    if n < 2:
        raise EvaluationInputError(f"--n must be >= 2 (windows advance by n // 2), got {n}")


def evaluate_files(
    gt_path: str | Path, pred_path: str | Path, similarity: Similarity, ks: Sequence[int] = (1, 5), n: int = 16
) -> dict[str, Any]:
    """R@k/N of an AD prediction file, in percent: ``{"R@1/16": .., "R@5/16": .., "num_movies", "num_ads",
    "similarity": {"name", "official", "note"}, "per_movie": {movie: {"R@1/16", ..., "num_ads",
    "num_windows", "shorter_than_n"}}}``."""
    _check_parameters(ks, n)
    references = load_references(gt_path)
    predictions = load_predictions(pred_path, references)
    recalls = {
        movie: recall_within_windows(similarity([predictions[ad.ad_id] for ad in ads], [ad.text for ad in ads]), ks, n)
        for movie, ads in references.items()
    }
    result: dict[str, Any] = {
        f"R@{k}/{n}": as_percent(float(np.mean([movie_recalls[k] for movie_recalls in recalls.values()])))
        for k in ks
    }
    result.update(
        num_movies=len(references),
        num_ads=sum(len(ads) for ads in references.values()),
        similarity={
            "name": similarity.name,
            "official": similarity.official,
            "note": (
                "BERTScore F1 (bert_score), as AutoAD-II; its baseline rescaling changes no ranking and is omitted"
                if similarity.official
                else "NOT the official AutoAD-II metric (BERTScore F1, roberta-large): not comparable with papers"
            ),
        },
        per_movie={
            movie: {
                **{f"R@{k}/{n}": as_percent(recalls[movie][k]) for k in ks},
                "num_ads": len(ads),
                "num_windows": len(window_starts(len(ads), n)),
                "shorter_than_n": len(ads) < n,
            }
            for movie, ads in references.items()
        },
    )
    return result
