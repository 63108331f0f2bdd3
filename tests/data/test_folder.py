"""Image-folder and ImageNet-100 loading from tiny trees of PNGs written with PIL."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from instil.data.folder import (
    check_images,
    imagenet100_wnids,
    load_image_folder,
    load_imagenet100,
    read_image,
    scan_class_folders,
)
from instil.errors import InstilError

WNIDS = ["n01530575", "n01440764", "n01558993"]


def write_png(path: Path, color: tuple[int, int, int] = (200, 30, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), color).save(path, format="PNG")
    return path


def write_classes(root: Path, counts: dict[str, int]) -> None:
    for name, count in counts.items():
        for i in range(count):
            write_png(root / name / f"img{i:02d}.png")


def write_garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a png at all" * 4)
    return path


def test_scan_sorts_classes_and_labels_each_file_by_its_folder(tmp_path: Path) -> None:
    write_classes(tmp_path, {"zebra": 2, "ant": 1, "moth": 3})
    classes, paths, labels = scan_class_folders(tmp_path)
    assert classes == ["ant", "moth", "zebra"]
    assert len(paths) == 6
    assert [classes[label] for label in labels] == [p.parent.name for p in paths]
    assert labels == [0, 1, 1, 1, 2, 2]


def test_scan_keeps_images_only_and_looks_into_sub_folders(tmp_path: Path) -> None:
    write_classes(tmp_path, {"a": 1, "b": 1})
    write_png(tmp_path / "a" / "nested" / "deep.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "upper.JPG", format="JPEG")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    write_garbage(tmp_path / "a" / "._img00.png")
    write_png(tmp_path / ".ipynb_checkpoints" / "x.png")
    classes, paths, _ = scan_class_folders(tmp_path)
    assert classes == ["a", "b"]
    names = sorted(str(p.relative_to(tmp_path)) for p in paths)
    assert names == ["a/img00.png", "a/nested/deep.png", "a/upper.JPG", "b/img00.png"]


def test_scan_with_given_classes_reads_those_in_that_order(tmp_path: Path) -> None:
    write_classes(tmp_path, {"a": 1, "b": 2, "c": 1})
    classes, paths, labels = scan_class_folders(tmp_path, ["c", "a"])
    assert classes == ["c", "a"]
    assert [p.parent.name for p in paths] == ["c", "a"]
    assert labels == [0, 1]


def test_scan_lists_missing_class_folders(tmp_path: Path) -> None:
    write_classes(tmp_path, {"a": 1})
    with pytest.raises(InstilError, match=r"2 of 3 class folders missing \(b, c\)"):
        scan_class_folders(tmp_path, ["a", "b", "c"])


def test_scan_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(InstilError, match="not found"):
        scan_class_folders(tmp_path / "absent")
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(InstilError, match="no class folders"):
        scan_class_folders(tmp_path)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InstilError, match="no images") as error:
        scan_class_folders(tmp_path)
    assert str(tmp_path / "empty") in str(error.value)


def test_holdout_is_seeded_disjoint_and_per_class(tmp_path: Path) -> None:
    write_classes(tmp_path, {"a": 10, "b": 10, "c": 5})
    first = load_image_folder(tmp_path, test_fraction=0.2, seed=3)
    again = load_image_folder(tmp_path, test_fraction=0.2, seed=3)
    other = load_image_folder(tmp_path, test_fraction=0.2, seed=4)
    assert first.train.paths == again.train.paths
    assert first.test.paths == again.test.paths
    assert set(first.test.paths) != set(other.test.paths)
    assert not set(first.train.paths) & set(first.test.paths)
    assert len(first.train) + len(first.test) == 25
    assert first.test.labels.tolist() == [0, 0, 1, 1, 2]
    for samples in (first.train, first.test):
        assert [first.classes[y] for y in samples.labels] == [p.parent.name for p in samples.paths]


def test_bundle_describes_the_images(tmp_path: Path) -> None:
    write_classes(tmp_path, {"a": 3, "b": 3})
    bundle = load_image_folder(tmp_path, image_size=64)
    assert bundle.name == "imagefolder"
    assert bundle.classes == ["a", "b"]
    assert bundle.input_shape == (3, 64, 64)
    assert bundle.mean == (0.485, 0.456, 0.406)
    assert bundle.std == (0.229, 0.224, 0.225)
    assert bundle.train.tensor is None


@pytest.mark.parametrize("test_folder", ["val", "test"])
def test_train_and_val_sub_folders_are_the_split(tmp_path: Path, test_folder: str) -> None:
    write_classes(tmp_path / "train", {"a": 3, "b": 2})
    write_classes(tmp_path / test_folder, {"a": 1, "b": 2})
    bundle = load_image_folder(tmp_path)
    assert bundle.classes == ["a", "b"]
    assert all(p.parts[-3] == "train" for p in bundle.train.paths)
    assert all(p.parts[-3] == test_folder for p in bundle.test.paths)
    assert bundle.train.labels.tolist() == [0, 0, 0, 1, 1]
    assert bundle.test.labels.tolist() == [0, 1, 1]


def test_test_root_is_the_test_set(tmp_path: Path) -> None:
    write_classes(tmp_path / "mine", {"a": 2, "b": 2})
    write_classes(tmp_path / "held", {"a": 1, "b": 1})
    bundle = load_image_folder(tmp_path / "mine", test_root=tmp_path / "held")
    assert len(bundle.train) == 4
    assert [p.parent.parent.name for p in bundle.test.paths] == ["held", "held"]


def test_test_classes_must_match_train_classes(tmp_path: Path) -> None:
    write_classes(tmp_path / "train", {"a": 2, "b": 2, "c": 1})
    write_classes(tmp_path / "val", {"a": 1, "b": 1, "d": 1})
    with pytest.raises(InstilError, match="missing from test: c; not in train: d"):
        load_image_folder(tmp_path)


def test_a_single_class_folder_is_refused(tmp_path: Path) -> None:
    write_classes(tmp_path / "train", {"a": 4, "b": 4})
    with pytest.raises(InstilError, match=r"one class folder \(train\)"):
        load_image_folder(tmp_path)


def test_read_image_converts_to_the_mode(tmp_path: Path) -> None:
    path = write_png(tmp_path / "x.png", color=(255, 0, 0))
    rgb = read_image(path, "RGB")
    gray = read_image(path, "L")
    assert (rgb.mode, rgb.size, rgb.getpixel((0, 0))) == ("RGB", (6, 4), (255, 0, 0))
    assert gray.mode == "L"
    assert gray.getpixel((0, 0)) == 76  # ITU-R 601 luma of pure red


def test_garbage_file_is_named_by_both_checks(tmp_path: Path) -> None:
    good = write_png(tmp_path / "good.png")
    bad = write_garbage(tmp_path / "bad.png")
    check_images([good])
    with pytest.raises(InstilError, match="unreadable image") as error:
        check_images([good, bad])
    assert str(bad) in str(error.value)
    with pytest.raises(InstilError, match="remove or replace it") as error:
        read_image(bad, "RGB")
    assert str(bad) in str(error.value)


def test_truncated_png_is_named_by_both_checks(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    Image.effect_noise((64, 64), 50).save(path, format="PNG")
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    for check in (lambda: check_images([path]), lambda: read_image(path, "RGB")):
        with pytest.raises(InstilError) as error:
            check()
        assert str(path) in str(error.value)


def test_verify_finds_a_bad_file_before_training(tmp_path: Path) -> None:
    write_classes(tmp_path, {"a": 3, "b": 3})
    bad = write_garbage(tmp_path / "b" / "zz.png")
    with pytest.raises(InstilError) as error:
        load_image_folder(tmp_path)
    assert str(bad) in str(error.value)
    bundle = load_image_folder(tmp_path, verify=False)
    assert bad in bundle.train.paths + bundle.test.paths


def write_imagenet(root: Path, wnids: list[str]) -> None:
    for split, count in (("train", 3), ("val", 1)):
        write_classes(root / split, dict.fromkeys(wnids, count))


def write_wnids(path: Path, wnids: list[str]) -> Path:
    path.write_text("".join(f"{w}\n" for w in wnids))
    return path


def test_imagenet100_labels_follow_the_wnid_list_and_ignore_other_folders(
    tmp_path: Path,
) -> None:
    write_imagenet(tmp_path / "imagenet", [*WNIDS, "n09999999"])
    wnids_file = write_wnids(tmp_path / "wnids.txt", WNIDS)
    bundle = load_imagenet100(tmp_path / "imagenet", image_size=160, wnids_file=wnids_file)
    assert bundle.name == "imagenet100"
    assert bundle.classes == WNIDS
    assert bundle.input_shape == (3, 160, 160)
    assert bundle.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert bundle.test.labels.tolist() == [0, 1, 2]
    assert [bundle.classes[y] for y in bundle.train.labels] == [
        p.parent.name for p in bundle.train.paths
    ]
    assert all("n09999999" not in p.parts for p in bundle.train.paths + bundle.test.paths)
    assert all(p.parts[-3] == "val" for p in bundle.test.paths)


def test_imagenet100_missing_wnid_folders_are_counted_and_named(tmp_path: Path) -> None:
    write_imagenet(tmp_path, WNIDS)
    extra = ["n02000001", "n02000002"]
    wnids_file = write_wnids(tmp_path / "wnids.txt", WNIDS + extra)
    with pytest.raises(InstilError, match=r"2 of 5 class folders missing") as error:
        load_imagenet100(tmp_path, wnids_file=wnids_file)
    assert all(w in str(error.value) for w in extra)
    assert str(tmp_path / "train") in str(error.value)


def test_imagenet100_needs_a_val_tree(tmp_path: Path) -> None:
    write_classes(tmp_path / "train", dict.fromkeys(WNIDS, 1))
    wnids_file = write_wnids(tmp_path / "wnids.txt", WNIDS)
    with pytest.raises(InstilError, match="val: not found"):
        load_imagenet100(tmp_path, wnids_file=wnids_file)


def test_packaged_wnid_list_has_100_distinct_wnids() -> None:
    wnids = imagenet100_wnids()
    assert len(wnids) == 100
    assert len(set(wnids)) == 100
    assert wnids[0] == "n01440764"
    assert all(w.startswith("n") and len(w) == 9 and w[1:].isdigit() for w in wnids)


def test_repeated_wnid_is_refused(tmp_path: Path) -> None:
    wnids_file = write_wnids(tmp_path / "wnids.txt", [WNIDS[0], WNIDS[1], WNIDS[0]])
    with pytest.raises(InstilError, match=f"repeated: {WNIDS[0]}"):
        imagenet100_wnids(wnids_file)
