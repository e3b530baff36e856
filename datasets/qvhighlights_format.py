"""Fixed facts of the QVHighlights annotation format (docs/FORMATS.md, "QVHighlights annotations"), defined once for the task adapter
(datasets/qvhighlights.py), the official-metric evaluator (train/tasks/qvhighlights_eval.py), the heads and
losses, and the demo corpus that writes annotations in this format. Plain constants: importing them costs
nothing (no torch)."""

CLIP_SECONDS = 2  # saliency is annotated per 2-second clip: clip i covers [2i, 2i + 2) seconds
NUM_ANNOTATORS = 3  # saliency_scores hold one score per annotator for every relevant clip
MAX_SALIENCY = 4  # annotator scores run 0..4 (the HL levels binarise them at >= 2, 3, 4)
