"""Text store cost at MAD's scale: index time, index memory and random lookups per second.

Writes a MAD-style language file (``--sentences`` datasets of 5..30 x ``--dim`` float16 tokens; MAD has
~384,000 sentences of CLIP 512-d tokens), imports it with ``import_h5(..., ImportOptions(stream="text"))``, then builds a
``TextStore`` over the shards (tar headers + meta.json, never the arrays) and reads random ids by seeking.
The index cost depends on the number of sentences, not their width, so a small ``--dim`` measures it at
full count without writing gigabytes.

    python benchmarks/text_store.py [--sentences 50000] [--dim 64] [--lookups 20000] [--json]
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from lamflow.datasets.texts import TextStore
from lamflow.pipelines.feature_files import ImportOptions
from lamflow.pipelines.h5io import import_h5


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        with h5py.File(root / "lang.h5", "w") as h5:
            for sentence in range(args.sentences):
                h5.create_dataset(str(sentence), data=rng.standard_normal((int(rng.integers(5, 31)), args.dim)).astype(np.float16))
        started = time.perf_counter()
        import_h5(root / "lang.h5", root / "texts", ImportOptions(stream="text", shard_samples=10_000))
        import_seconds = time.perf_counter() - started
        shard_bytes = sum(p.stat().st_size for p in (root / "texts" / "shards").glob("*.tar"))

        rss_before = max_rss_mb()
        started = time.perf_counter()
        store = TextStore(root / "texts")
        index_seconds = time.perf_counter() - started
        index_rss = max_rss_mb() - rss_before
        ids = rng.integers(0, args.sentences, args.lookups).astype(str)
        started = time.perf_counter()
        tokens = sum(len(store.tokens(text_id)) for text_id in ids)
        lookup_seconds = time.perf_counter() - started
    result = {
        "sentences": args.sentences, "dim": args.dim, "shard_mb": round(shard_bytes / 1e6, 1),
        "import_s": round(import_seconds, 2), "index_s": round(index_seconds, 2),
        "index_us_per_sentence": round(1e6 * index_seconds / args.sentences, 1),
        "index_peak_rss_growth_mb": round(index_rss, 1),
        "lookups_per_s": round(args.lookups / lookup_seconds), "tokens_read": int(tokens),
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
