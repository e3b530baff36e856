"""The Task protocol: every adapter subclasses it, so every member the loader and the trainer read is there,
with the protocol's default where the task has no such thing."""
from __future__ import annotations

import json

import pytest

from lamflow.datasets.audio_description import AudioDescriptionTask
from lamflow.datasets.classification import ClassificationTask
from lamflow.datasets.qvhighlights import QVHighlightsTask
from lamflow.datasets.task import Task


def adapters(tmp_path):
    moments = tmp_path / "qv.jsonl"
    moments.write_text(json.dumps({"qid": 3, "query": "a dog runs", "vid": "v", "duration": 10}) + "\n")
    ads = tmp_path / "ads.jsonl"
    ads.write_text(json.dumps({"ad_id": "a1", "movie": "m", "start": 1.0, "end": 2.0, "text": "Rain falls."}) + "\n")
    return {"qid": QVHighlightsTask(moments), "key": ClassificationTask({"v": "dog", "w": "cat"}),
            "ad_id": AudioDescriptionTask(ads, 1.0, 1.0)}


def test_every_adapter_has_every_member_with_the_protocols_defaults(tmp_path):
    found = adapters(tmp_path)
    for field, adapter in found.items():
        assert Task in type(adapter).__mro__ and adapter.prediction_field == field and adapter.source
        assert adapter.start_epoch(1, 2) is None
    moments, labels, ads = found.values()
    assert [q.qid for q in moments.queries] == [3] and moments.text_store is None and moments.token_ids() == set()
    assert list(labels.class_names) == ["cat", "dog"] and labels.queries == () and not labels.every_name_in_shards
    assert ads.class_names == () and ads.text_store is None and ads.every_name_in_shards and len(ads.token_ids()) > 2


def test_an_adapter_without_items_cannot_be_made():
    class Partial(Task):
        source = "partial"
        prediction_field = "key"

        def names(self):
            return []

        def num_items(self, name):
            return 0

    with pytest.raises(TypeError, match="abstract"):
        Partial()
