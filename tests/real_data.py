"""The real QVHighlights annotation files: shared/ beside the checkout, as in development and CI."""
from pathlib import Path

import pytest

QVHIGHLIGHTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "qvhighlights"
requires_qvhighlights = pytest.mark.skipif(
    not QVHIGHLIGHTS.is_dir(), reason=f"real QVHighlights annotations not found at {QVHIGHLIGHTS}"
)
