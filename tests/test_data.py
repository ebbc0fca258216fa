"""Tests of autotl.data and examples/make_datasets.py, on real files written to tmp_path."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autotl.data import (
    Dataset,
    UnreadableImageError,
    fingerprint,
    load_dataset,
    load_image_folder,
    load_text_table,
    read_image,
    skipped_of,
    skipped_record,
    stratified_split,
)
from autotl.errors import AutotlError

from conftest import requires

REPO = Path(__file__).resolve().parents[1]
MAKE_DATASETS = REPO / "examples" / "make_datasets.py"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def noise(seed: int, size=(12, 10), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    array = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(array[:, :, 0] if channels == 1 else array)


def image_folder(root: Path, per_class: dict[str, int]) -> Path:
    """root/<class>/<i>.png holding distinct random images."""
    for c, (name, count) in enumerate(sorted(per_class.items())):
        for i in range(count):
            save(root / name / f"{i:03d}.png", noise(100 * c + i))
    return root


def assert_one_line_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and "\r" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def write_csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, objects: list) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objects), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- read_image


def test_grayscale_png_is_promoted_to_rgb_and_resized(tmp_path):
    gray = np.tile(np.arange(0, 200, 10, dtype=np.uint8), (15, 1))  # 15 x 20 horizontal ramp
    path = save(tmp_path / "g.png", Image.fromarray(gray))
    with Image.open(path) as written:
        assert written.mode == "L"

    out = read_image(path, (30, 40))

    assert out.shape == (30, 40, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    expected = np.asarray(Image.fromarray(gray).resize((40, 30), Image.Resampling.BILINEAR))
    assert np.array_equal(out[..., 0], expected)


def test_rgba_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:2] = (200, 10, 10, 255)  # opaque red top half
    rgba[2:] = (0, 0, 0, 0)  # fully transparent bottom half (stored as black)
    path = save(tmp_path / "a.png", Image.fromarray(rgba))

    out = read_image(path, (4, 4))

    assert (out[:2] == (200, 10, 10)).all()
    assert (out[2:] == 255).all()


def test_palette_images_with_and_without_transparency(tmp_path):
    rgb = np.zeros((6, 6, 3), dtype=np.uint8)
    rgb[:, :3] = (0, 128, 255)
    rgb[:, 3:] = (250, 250, 0)
    palette = Image.fromarray(rgb).quantize(colors=4)
    assert palette.mode == "P"
    plain = save(tmp_path / "p.png", palette)
    assert np.array_equal(read_image(plain, (6, 6)), rgb)

    transparent_index = palette.getpixel((0, 0))
    see_through = save(tmp_path / "pt.png", palette, transparency=transparent_index)
    out = read_image(see_through, (6, 6))
    assert (out[:, :3] == 255).all() and (out[:, 3:] == (250, 250, 0)).all()


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 128], [65535, 257 * 10]], dtype=np.uint16)
    path = save(tmp_path / "deep.png", Image.fromarray(values))

    out = read_image(path, (2, 2))

    assert out[..., 0].tolist() == [[0, 128], [255, 10]]


@pytest.mark.parametrize("values", [[[0, 70_000]], [[-5, 10]]])
def test_integer_pixels_beyond_sixteen_bits_are_refused_not_clipped(tmp_path, values):
    path = save(tmp_path / "deep32.tif", Image.fromarray(np.array(values, dtype=np.int32)))
    with Image.open(path) as stored:
        assert stored.mode == "I"
    with pytest.raises(UnreadableImageError) as excinfo:
        read_image(path, (2, 2))
    assert_one_line_error(excinfo, "deep32.tif", "beyond the 16-bit range", "8- or 16-bit")


def test_jpeg_exif_orientation_is_applied(tmp_path):
    image = noise(1, size=(20, 10))  # 20 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(tmp_path / "phone.jpg", image, exif=exif, quality=95)

    out = read_image(path, (20, 10))  # no resize needed once rotated: 20 high, 10 wide

    with Image.open(path) as stored:
        upright = stored.transpose(Image.Transpose.ROTATE_270).convert("RGB")
    assert np.array_equal(out, np.asarray(upright))


@pytest.mark.parametrize(
    "mode, suffix",
    [("CMYK", ".jpg"), ("L", ".jpeg"), ("1", ".png"), ("P", ".gif"), ("RGB", ".webp"), ("RGB", ".tiff"),
     ("RGB", ".bmp"), ("I;16", ".tif")],
)  # fmt: skip
def test_every_suffix_and_common_mode_decodes_to_rgb(tmp_path, mode, suffix):
    pixels = np.random.default_rng(0).integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257) if mode == "I;16" else Image.fromarray(pixels)
    path = save(tmp_path / f"x{suffix}", image if mode == "I;16" else image.convert(mode))

    out = read_image(path, (5, 6))

    assert out.shape == (5, 6, 3) and out.dtype == np.uint8
    if mode != "I;16":  # PIL's own RGB conversion is right for these modes
        with Image.open(path) as stored:
            expected = stored.convert("RGB").resize((6, 5), Image.Resampling.BILINEAR)
        assert np.array_equal(out, np.asarray(expected))


def test_path_bytes_and_array_sources_give_identical_pixels(tmp_path):
    path = save(tmp_path / "x.png", noise(3, size=(33, 17)))
    from_path = read_image(path, (24, 24))
    assert np.array_equal(from_path, read_image(str(path), (24, 24)))
    assert np.array_equal(from_path, read_image(path.read_bytes(), (24, 24)))
    with Image.open(path) as stored:
        assert np.array_equal(from_path, read_image(np.asarray(stored), (24, 24)))


def test_bad_sources_raise_one_line_errors(tmp_path):
    corrupt = tmp_path / "bad.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(UnreadableImageError) as excinfo:
        read_image(corrupt, (8, 8))
    assert_one_line_error(excinfo, "bad.png")
    with pytest.raises(AutotlError) as excinfo:
        read_image(np.zeros((4, 4), dtype=np.float32), (8, 8))
    assert_one_line_error(excinfo, "uint8")
    with pytest.raises(AutotlError) as excinfo:
        read_image(np.zeros((4, 4, 3), dtype=np.uint8), (0, 8))
    assert_one_line_error(excinfo, "image size")


# --------------------------------------------------------------------------- image folders


def test_image_folder_loads_sorted_classes_and_files(tmp_path):
    root = image_folder(tmp_path / "ds", {"dog": 2, "cat": 3})
    save(root / "cat" / "nested" / "deep.JPG", noise(50), quality=90)  # nested folder, upper-case suffix
    save(root / "cat" / ".hidden.png", noise(51))
    save(root / ".cache" / "x.png", noise(52))
    (root / "dog" / "notes.txt").write_text("not an image")

    ds = load_dataset(root, "image", image_size=(8, 8))

    assert ds.class_names == ["cat", "dog"]
    assert ds.examples.shape == (6, 8, 8, 3) and ds.examples.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 0, 0, 0, 1, 1]
    assert [Path(s).relative_to(root).as_posix() for s in ds.sources] == [
        "cat/000.png", "cat/001.png", "cat/002.png", "cat/nested/deep.JPG", "dog/000.png", "dog/001.png",
    ]  # fmt: skip
    assert ds.skipped == []
    assert np.array_equal(ds.examples[4], read_image(root / "dog" / "000.png", (8, 8)))


def test_corrupt_and_zero_byte_files_are_skipped_and_recorded(tmp_path):
    root = image_folder(tmp_path / "ds", {"a": 2, "b": 2})
    (root / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage")
    (root / "a" / "noise.png").write_bytes(b"no image format at all")
    (root / "b" / "empty.png").write_bytes(b"")
    truncated = (root / "b" / "000.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(truncated[: len(truncated) // 2])

    ds = load_image_folder(root, (8, 8))

    assert len(ds) == 4 and ds.examples.shape[0] == 4
    skipped = {Path(source).name: reason for source, reason in ds.skipped}
    assert set(skipped) == {"corrupt.jpg", "noise.png", "empty.png", "truncated.png"}
    assert "0 bytes" in skipped["empty.png"]
    assert "not an image format PIL can decode" in skipped["noise.png"]
    assert all(str(root) not in reason and "\n" not in reason for reason in skipped.values())

    with pytest.raises(AutotlError) as excinfo:
        load_image_folder(root, (8, 8), strict=True)
    assert_one_line_error(excinfo, "corrupt.jpg")


def test_loose_images_at_the_top_level_are_reported(tmp_path):
    root = image_folder(tmp_path / "ds", {"a": 1, "b": 1})
    save(root / "stray.png", noise(9))
    ds = load_image_folder(root, (8, 8))
    assert len(ds) == 2
    assert [Path(s).name for s, _ in ds.skipped] == ["stray.png"]


@pytest.mark.parametrize(
    "layout, fragments",
    [
        ("missing", ("does not exist",)),
        ("file", ("is a file",)),
        ("empty", ("no class folders",)),
        ("flat", ("no class folders", "sub-folder")),
        ("one_class", ("only one class 'cat'", "at least two")),
        ("empty_class", ("class folder", "dog", "holds no readable images")),
        ("unreadable_class", ("class folder", "dog", "holds no readable images", "junk.png")),
    ],
)
def test_unusable_image_folders_raise_one_line_errors(tmp_path, layout, fragments):
    root = tmp_path / "ds"
    if layout == "file":
        root.write_text("x")
    elif layout == "empty":
        root.mkdir()
    elif layout == "flat":
        save(root / "a.png", noise(0))
    elif layout == "one_class":
        image_folder(root, {"cat": 3})
    elif layout == "empty_class":
        image_folder(root, {"cat": 2})
        (root / "dog").mkdir()
        (root / "dog" / "readme.txt").write_text("no images here")
    elif layout == "unreadable_class":
        image_folder(root, {"cat": 2})
        (root / "dog").mkdir()
        (root / "dog" / "junk.png").write_bytes(b"junk")

    with pytest.raises(AutotlError) as excinfo:
        load_dataset(root, "image", image_size=(8, 8))
    assert_one_line_error(excinfo, *fragments)


def test_skipped_of_a_split_counts_each_file_once(tmp_path):
    root = image_folder(tmp_path / "ds", {"a": 3, "b": 3})
    (root / "a" / "empty.png").write_bytes(b"")
    train, val = stratified_split(load_image_folder(root, (8, 8)), 0.3, seed=0)
    other = Dataset("image", np.zeros((0, 8, 8, 3), np.uint8), [], ["a", "b"], [], skipped=[("v/x.png", "0 bytes")])

    assert [Path(s).name for s, _ in skipped_of(train, val)] == ["empty.png"]
    assert [Path(s).name for s, _ in skipped_of(train, val, other)] == ["empty.png", "x.png"]
    record = skipped_record(train, val, other)
    assert record["skipped_count"] == 2
    assert [Path(s).name for s, _ in record["skipped_examples"]] == ["empty.png", "x.png"]


def test_missing_validation_path_is_called_validation_data(tmp_path):
    with pytest.raises(AutotlError) as excinfo:
        load_dataset(tmp_path / "val", "image", image_size=(8, 8), class_names=["a", "b"])
    assert_one_line_error(excinfo, "validation data", "does not exist")


def test_validation_folder_uses_the_training_class_names(tmp_path):
    val = image_folder(tmp_path / "val", {"dog": 1})  # a validation set may lack some classes
    ds = load_dataset(val, "image", image_size=(8, 8), class_names=["bird", "cat", "dog"])
    assert ds.class_names == ["bird", "cat", "dog"] and ds.labels.tolist() == [2]

    image_folder(tmp_path / "val", {"fish": 1})
    with pytest.raises(AutotlError) as excinfo:
        load_dataset(val, "image", image_size=(8, 8), class_names=["bird", "cat", "dog"])
    assert_one_line_error(excinfo, "'fish'", "not a training class")


# --------------------------------------------------------------------------- text tables


def test_csv_with_custom_columns(tmp_path):
    path = write_csv(
        tmp_path / "reviews.csv",
        ["id", "review", "sentiment"],
        [["1", "great, really", "pos"], ["2", "line one\nline two", " neg "], ["3", "meh", "neg"]],
    )
    ds = load_dataset(path, "text", text_col="review", label_col="sentiment")
    assert ds.modality == "text"
    assert ds.examples == ["great, really", "line one\nline two", "meh"]
    assert ds.class_names == ["neg", "pos"] and ds.labels.tolist() == [1, 0, 0]
    assert ds.sources == ["reviews.csv:2", "reviews.csv:3", "reviews.csv:4"]


def test_tsv_with_byte_order_mark(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("\ufefftext\tlabel\nhello\tx\nbye\ty\n", encoding="utf-8")
    ds = load_text_table(path)
    assert ds.examples == ["hello", "bye"] and ds.class_names == ["x", "y"]


def test_jsonl_with_custom_columns_and_numeric_labels(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"body": "a", "y": 1}, {"body": "b", "y": 0}, {"body": "c", "y": 1, "extra": True}],
    )
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("\n")  # a trailing blank line is fine
    ds = load_dataset(path, "text", text_col="body", label_col="y")
    assert ds.examples == ["a", "b", "c"]
    assert ds.class_names == ["0", "1"] and ds.labels.tolist() == [1, 0, 1]
    assert ds.sources == ["d.jsonl:1", "d.jsonl:2", "d.jsonl:3"]


def test_missing_column_error_lists_available_columns(tmp_path):
    path = write_csv(tmp_path / "x.csv", ["sentence", "label"], [["hi", "a"], ["yo", "b"]])
    with pytest.raises(AutotlError) as excinfo:
        load_text_table(path)
    assert_one_line_error(excinfo, "'text'", "'sentence'", "'label'")

    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "a", "tag": "x"}, {"text": "b", "tag": "y"}])
    with pytest.raises(AutotlError) as excinfo:
        load_text_table(path)
    assert_one_line_error(excinfo, "line 1", "'label'", "'tag'")


def test_rows_without_a_label_are_skipped_and_counted_like_empty_texts(tmp_path):
    """A JSON line without the label field, a null or NaN label, an empty CSV cell: skipped, or with
    --strict an error, as a row with empty text is (issue 17, 11)."""
    jsonl = tmp_path / "u.jsonl"
    jsonl.write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n{"text": "c", "label": null}\n'
                     '{"text": "", "label": "y"}\n{"text": "d", "label": NaN}\n{"text": "e", "label": "y"}\n')
    ds = load_text_table(jsonl)
    assert ds.examples == ["a", "e"] and ds.class_names == ["x", "y"]
    assert ds.skipped == [("u.jsonl:2", "no label"), ("u.jsonl:3", "no label"), ("u.jsonl:4", "empty text"),
                          ("u.jsonl:5", "no label")]
    with pytest.raises(AutotlError) as excinfo:
        load_text_table(jsonl, strict=True)
    assert_one_line_error(excinfo, "3 rows", "no label", "u.jsonl:2", "without --strict")

    csv_file = write_csv(tmp_path / "u.csv", ["text", "label"], [["ok", "a"], ["fine", ""], ["good", "b"]])
    assert load_text_table(csv_file).skipped == [("u.csv:3", "no label")]
    with pytest.raises(AutotlError) as excinfo:
        load_text_table(csv_file, strict=True)
    assert_one_line_error(excinfo, "1 row", "no label", "u.csv:3", "without --strict")

    unlabeled = write_csv(tmp_path / "none.csv", ["text", "label"], [["ok", ""], ["fine", " "]])
    with pytest.raises(AutotlError) as excinfo:
        load_text_table(unlabeled)
    assert_one_line_error(excinfo, "no row", "has a label", "'label'", "none.csv:2", "--label-col")


def test_empty_text_rows_are_skipped_and_recorded_like_unreadable_images(tmp_path):
    rows = [["ok", "a"], ["  ", "b"], ["fine", "a"], ["", "b"], ["good", "b"]]
    path = write_csv(tmp_path / "e.csv", ["text", "label"], rows)

    ds = load_dataset(path, "text")

    assert ds.examples == ["ok", "fine", "good"] and ds.labels.tolist() == [0, 0, 1]
    assert ds.sources == ["e.csv:2", "e.csv:4", "e.csv:6"]
    assert ds.skipped == [("e.csv:3", "empty text"), ("e.csv:5", "empty text")]
    with pytest.raises(AutotlError) as excinfo:
        load_dataset(path, "text", strict=True)
    assert_one_line_error(excinfo, "2 rows", "empty text", "e.csv:3", "without --strict")


@pytest.mark.parametrize(
    "rows, fragments",
    [
        ([["", "a"], [" ", "b"]], ("every row", "empty text", "'text'", "e.csv:2", "--text-col")),
        ([["ok", "a"], ["", "b"], ["fine", "a"]], ("class 'b'", "only rows with empty text", "e.csv:3")),
    ],
)  # fmt: skip
def test_text_tables_whose_empty_rows_leave_nothing_to_learn(tmp_path, rows, fragments):
    path = write_csv(tmp_path / "e.csv", ["text", "label"], rows)
    with pytest.raises(AutotlError) as excinfo:
        load_dataset(path, "text")
    assert_one_line_error(excinfo, *fragments)


def test_csv_labels_written_as_whole_numbers_are_one_class(tmp_path):
    rows = [["t0", "1"], ["t1", "1.0"], ["t2", "0"], ["t3", "0.0"], ["t4", " 1.00 "], ["t5", "01"], ["t6", "1.5"]]
    ds = load_text_table(write_csv(tmp_path / "n.csv", ["text", "label"], rows))
    assert ds.class_names == ["0", "01", "1", "1.5"]
    assert [ds.class_names[i] for i in ds.labels] == ["1", "1", "0", "0", "1", "01", "1.5"]


def test_a_csv_text_longer_than_the_csv_modules_field_limit_is_read(tmp_path):
    long_text = "word " * 40_000  # 200,000 characters; the csv module stops at 131,072 by default
    ds = load_text_table(write_csv(tmp_path / "l.csv", ["text", "label"], [[long_text, "a"], ["short", "b"]]))
    assert ds.examples == [long_text, "short"] and ds.class_names == ["a", "b"]


def test_mixed_label_types_are_compared_as_class_names(tmp_path):
    labels = [1, "1", 1.0, " cat ", True, "true", 2]
    path = write_jsonl(tmp_path / "m.jsonl", [{"text": f"t{i}", "label": v} for i, v in enumerate(labels)])

    ds = load_text_table(path)

    assert ds.class_names == ["1", "2", "cat", "true"]
    assert [ds.class_names[i] for i in ds.labels] == ["1", "1", "1", "cat", "true", "true", "2"]


@pytest.mark.parametrize(
    "label, fragments",
    [([1, 2], ("m.jsonl:2", "'label'", "JSON list", "one label")), ({"a": 1}, ("m.jsonl:2", "JSON object"))],
)  # fmt: skip
def test_labels_that_are_not_class_names(tmp_path, label, fragments):
    path = write_jsonl(tmp_path / "m.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": label}])
    with pytest.raises(AutotlError) as excinfo:
        load_text_table(path)
    assert_one_line_error(excinfo, *fragments)


def test_nan_label_is_a_missing_label(tmp_path):
    path = tmp_path / "n.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": NaN}\n{"text": "c", "label": "y"}\n')
    assert load_text_table(path).skipped == [("n.jsonl:2", "no label")]


@pytest.mark.parametrize(
    "name, content, fragments",
    [
        ("bad.jsonl", '{"text": "a", "label": "x"}\n{oops\n', ("bad.jsonl:2", "not valid JSON")),
        ("list.jsonl", '["a", "x"]\n', ("list.jsonl:1", "not an object")),
        ("data.json", "[]", ("not a supported text table", ".csv")),
        ("header.csv", "text,label\n", ("no rows",)),
        ("one.csv", "text,label\na,x\nb,x\n", ("only one class 'x'",)),
    ],
)
def test_unusable_text_tables_raise_one_line_errors(tmp_path, name, content, fragments):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(AutotlError) as excinfo:
        load_dataset(path, "text")
    assert_one_line_error(excinfo, *fragments)


def test_non_utf8_and_missing_text_files(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    with pytest.raises(AutotlError) as excinfo:
        load_text_table(path)
    assert_one_line_error(excinfo, "not UTF-8")
    with pytest.raises(AutotlError) as excinfo:
        load_dataset(tmp_path / "nope.csv", "text")
    assert_one_line_error(excinfo, "does not exist")


def test_text_validation_with_class_names(tmp_path):
    path = write_csv(tmp_path / "v.csv", ["text", "label"], [["x", "b"]])
    ds = load_text_table(path, class_names=["a", "b"])
    assert ds.class_names == ["a", "b"] and ds.labels.tolist() == [1]
    path = write_csv(tmp_path / "w.csv", ["text", "label"], [["x", "c"]])
    with pytest.raises(AutotlError) as excinfo:
        load_text_table(path, class_names=["a", "b"])
    assert_one_line_error(excinfo, "'c'", "not a training class")


# --------------------------------------------------------------------------- split and fingerprint


def text_dataset(counts: dict[str, int]) -> Dataset:
    names = sorted(counts)
    labels = [i for i, name in enumerate(names) for _ in range(counts[name])]
    texts = [f"example {k}" for k in range(len(labels))]
    return Dataset("text", texts, np.asarray(labels), names, [f"d.csv:{k + 2}" for k in range(len(labels))])


def test_stratified_split_is_deterministic_and_per_class():
    ds = text_dataset({"a": 50, "b": 20, "c": 3, "d": 2, "e": 1})
    train, val = stratified_split(ds, 0.2, seed=7)
    again_train, again_val = stratified_split(ds, 0.2, seed=7)
    assert train.sources == again_train.sources and val.sources == again_val.sources
    assert stratified_split(ds, 0.2, seed=8)[1].sources != val.sources

    assert val.class_counts() == {"a": 10, "b": 4, "c": 1, "d": 1, "e": 0}
    assert train.class_counts() == {"a": 40, "b": 16, "c": 2, "d": 1, "e": 1}
    assert sorted(train.sources + val.sources) == sorted(ds.sources)
    assert train.class_names == val.class_names == ds.class_names
    assert val.sources == sorted(val.sources, key=ds.sources.index)  # original order kept


def test_stratified_split_of_images_keeps_every_class_in_both(tmp_path):
    ds = load_image_folder(image_folder(tmp_path / "ds", {"a": 2, "b": 5, "c": 9}), (6, 6))
    train, val = stratified_split(ds, 0.5, seed=0)
    assert set(train.labels.tolist()) == set(val.labels.tolist()) == {0, 1, 2}
    for part in (train, val):
        for example, source in zip(part.examples, part.sources):
            assert np.array_equal(example, read_image(source, (6, 6)))


def test_a_split_with_a_single_example_per_class_says_what_to_do(tmp_path):
    ds = load_image_folder(image_folder(tmp_path / "ds", {"a": 1, "b": 1}), (6, 6))
    with pytest.raises(AutotlError) as excinfo:
        stratified_split(ds, 0.2, seed=0)
    assert_one_line_error(excinfo, "single example", "'a', 'b'", "--val-data")


def test_fingerprint_of_no_examples(tmp_path):
    ds = load_image_folder(image_folder(tmp_path / "ds", {"a": 1, "b": 1}), (6, 6))
    empty = ds.subset(np.asarray([], dtype=np.int64))
    assert len(fingerprint(empty)) == 64 and fingerprint(empty) != fingerprint(ds)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_stratified_split_rejects_bad_fractions(fraction):
    with pytest.raises(AutotlError) as excinfo:
        stratified_split(text_dataset({"a": 4, "b": 4}), fraction, seed=0)
    assert_one_line_error(excinfo, "between 0 and 1")


def test_fingerprint_is_stable_and_sees_one_pixel(tmp_path):
    root = image_folder(tmp_path / "ds", {"a": 2, "b": 2})
    first = fingerprint(load_image_folder(root, (8, 8)))
    assert len(first) == 64 and first == fingerprint(load_image_folder(root, (8, 8)))

    code = (
        "import sys; from autotl.data import fingerprint, load_image_folder; "
        "print(fingerprint(load_image_folder(sys.argv[1], (8, 8))))"
    )
    other_process = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=True)
    assert other_process.stdout.strip() == first

    with Image.open(root / "b" / "001.png") as stored:
        pixels = np.asarray(stored).copy()
    pixels[5, 5, 0] ^= 0xFF
    save(root / "b" / "001.png", Image.fromarray(pixels))
    assert fingerprint(load_image_folder(root, (8, 8))) != first


def test_fingerprint_of_text_separates_examples_and_labels():
    base = Dataset("text", ["ab", "c"], np.array([0, 1]), ["x", "y"], ["s:2", "s:3"])
    assert fingerprint(base) == fingerprint(Dataset("text", ["ab", "c"], np.array([0, 1]), ["x", "y"], ["t:9", "t:8"]))
    assert fingerprint(base) != fingerprint(Dataset("text", ["a", "bc"], np.array([0, 1]), ["x", "y"], ["s:2", "s:3"]))
    assert fingerprint(base) != fingerprint(Dataset("text", ["ab", "c"], np.array([1, 0]), ["x", "y"], ["s:2", "s:3"]))


# --------------------------------------------------------------------------- make_datasets.py


def make_datasets(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(MAKE_DATASETS), *args], capture_output=True, text=True, timeout=120)


def test_make_datasets_mnist5k_per_class(tmp_path):
    out = tmp_path / "mnist"
    result = make_datasets("mnist5k", str(out), "--per-class", "3", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert "wrote 30 images" in result.stdout

    folders = sorted(p.name for p in out.iterdir())
    assert folders == [str(d) for d in range(10)]
    assert all(len(list((out / d).glob("*.png"))) == 3 for d in folders)
    ds = load_dataset(out, "image", image_size=(28, 28))
    assert len(ds) == 30 and ds.skipped == []
    assert np.array_equal(ds.examples[..., 0], ds.examples[..., 2])  # grayscale digits

    again = make_datasets("mnist5k", str(out), "--per-class", "3")
    assert again.returncode == 1 and "not an empty folder" in again.stderr


def test_make_datasets_rotten_tomatoes_limit(tmp_path):
    out = tmp_path / "rt.csv"
    result = make_datasets("rotten-tomatoes", str(out), "--limit", "50")
    assert result.returncode == 0, result.stderr

    with open(out, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 50 and set(rows[0]) == {"text", "label"}
    assert {row["label"] for row in rows} == {"fresh", "rotten"}
    ds = load_dataset(out, "text")
    assert len(ds) == 50 and ds.class_names == ["fresh", "rotten"]


def test_make_datasets_fashion_mnist(tmp_path):
    requires(FASHION_MNIST_DIR.is_dir(), "apt-get install dataset-fashion-mnist")
    out = tmp_path / "fashion"
    result = make_datasets("fashion-mnist", str(out), "--split", "test", "--per-class", "2")
    assert result.returncode == 0, result.stderr
    ds = load_dataset(out, "image", image_size=(28, 28))
    assert len(ds) == 20 and ds.class_names[0] == "0_tshirt_top" and ds.class_names[-1] == "9_ankle_boot"


def test_make_datasets_names_the_install_command_when_a_source_is_missing(tmp_path):
    result = make_datasets("fashion-mnist", str(tmp_path / "f"), "--source-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert "apt-get install dataset-fashion-mnist" in result.stderr and "\n" not in result.stderr.strip()
