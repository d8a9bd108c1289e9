"""Train tab helpers: the caption table shows short labels that still map back to the dataset."""

from __future__ import annotations

from studio.ui.train_tab import _row_index, _row_label


def test_caption_table_labels_are_short_and_map_back_to_their_image():
    label = _row_label(11, "/tmp/gradio/4f3a9c/very/long/upload-path/photo.v2.png")
    assert label == "12. photo.v2.png"
    assert _row_index(label) == 11
    assert _row_index("someone typed this") == -1
