"""The key that decides when a drawing of the plots is reused, and writing the images."""

from __future__ import annotations

import polars as pl
import pytest

from kernelbook_lib import plot_files
from tests.lib.test_analysis import correlated


def test_the_key_follows_the_plotted_values_their_order_and_nothing_else():
    df = correlated(50)
    key = plot_files.images_key(df)
    assert plot_files.images_key(df.clone()) == key
    # Columns the plots do not show do not matter.
    assert plot_files.images_key(df.with_columns(pl.lit("other").alias("module_name"))) == key
    # One value, the row order (the jitter follows it), or one row more: another picture.
    bumped = df.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.col("style") + 1).otherwise(pl.col("style")))
    assert plot_files.images_key(bumped) != key
    assert plot_files.images_key(df.reverse()) != key
    assert plot_files.images_key(pl.concat([df, df.head(1)])) != key


def test_the_key_follows_the_drawing_code_and_the_libraries(monkeypatch):
    df = correlated(20)
    key = plot_files.images_key(df)
    monkeypatch.setattr(plot_files, "KEY_VERSION", "plots-v0")
    assert plot_files.images_key(df) != key
    monkeypatch.undo()
    monkeypatch.setattr(plot_files, "_library_version", lambda name: "0.0" if name == "matplotlib" else "1")
    assert plot_files.images_key(df) != key


def test_write_images_writes_each_file_and_no_images_remove_an_earlier_runs(tmp_path):
    images = {name: f"png {name}".encode() for name in plot_files.PLOT_FILES}
    paths = plot_files.write_images(images, tmp_path)
    assert [p.name for p in paths] == list(plot_files.PLOT_FILES)
    assert all(p.read_bytes() == images[p.name] for p in paths)
    assert plot_files.write_images({}, tmp_path) == []
    assert not any((tmp_path / name).exists() for name in plot_files.PLOT_FILES)
    with pytest.raises(ValueError, match="expected the images"):
        plot_files.write_images({plot_files.JOINT_PNG: b"x"}, tmp_path)
