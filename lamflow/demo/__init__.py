"""The demo: a generated audio-visual corpus and the end-to-end LAM-vs-vanilla run over it."""
