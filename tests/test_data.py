"""Every on-disk layout loads to the same images; the sampler draws what it promises."""

import json
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import data
from conftest import CLASSES, OMNIGLOT_PER_CHARACTER, PER_CLASS, SAMPLE, make_jpegs, make_omniglot


def ravi_to_folders(ravi, folders, splits=data.SPLITS):
    for split in splits:
        for line in (ravi / f"{split}.csv").read_text().splitlines()[1:]:
            name, label = line.split(",")
            (folders / split / label).mkdir(parents=True, exist_ok=True)
            os.symlink(ravi / "images" / name, folders / split / label / name)


def make_pickle(folder, decoded, name="train"):
    folder.mkdir(parents=True, exist_ok=True)
    # Interleave the classes in image_data, as nothing promises they are contiguous.
    images, class_dict = [], {c: [] for c in decoded}
    for i in range(PER_CLASS):
        for c in reversed(CLASSES):
            class_dict[c].append(len(images))
            images.append(decoded[c][i])
    with open(folder / f"mini-imagenet-cache-{name}.pkl", "wb") as f:
        pickle.dump({"image_data": np.stack(images), "class_dict": class_dict}, f)


def make_hdf5(folder, decoded):
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / "train_data.hdf5", "w") as f:
        group = f.create_group("datasets")
        for c in CLASSES:
            group.create_dataset(c, data=np.stack(decoded[c]))
    (folder / "train_labels.json").write_text(json.dumps(CLASSES))


@pytest.fixture
def four_layouts(tmp_path):
    decoded = make_jpegs(tmp_path / "ravi")
    ravi_to_folders(tmp_path / "ravi", tmp_path / "folders")
    make_pickle(tmp_path / "pickle", decoded)
    make_pickle(tmp_path / "pickle_old_name", decoded, name="train")
    make_hdf5(tmp_path / "hdf5", decoded)
    make_hdf5(tmp_path / "hdf5_nested" / "miniimagenet", decoded)
    return tmp_path, decoded


def test_all_four_layouts_load_to_the_same_images_and_labels(four_layouts):
    root, decoded = four_layouts
    expected = np.stack([im.transpose(2, 0, 1) for c in CLASSES for im in decoded[c]])
    expected_labels = np.repeat(np.arange(len(CLASSES)), PER_CLASS)
    layouts = {"ravi": "ravi", "folders": "folders", "pickle": "pickle", "hdf5": "hdf5", "hdf5_nested": "hdf5"}
    for folder, layout in layouts.items():
        assert data.detect_layout(root / folder) == layout
        split = data.load_split(root / folder, "train", image_size=20, progress=False)
        assert split["classes"] == CLASSES, folder
        assert split["images"].dtype == torch.uint8 and split["images"].shape == (12, 3, 20, 20)
        np.testing.assert_array_equal(split["images"].numpy(), expected, err_msg=folder)
        np.testing.assert_array_equal(split["labels"].numpy(), expected_labels, err_msg=folder)


def test_images_are_resized_the_same_way_in_every_layout(four_layouts):
    root, _ = four_layouts
    loads = [
        data.load_split(root / f, "train", image_size=12, progress=False)["images"]
        for f in ("ravi", "folders", "pickle", "hdf5")
    ]
    assert loads[0].shape == (12, 3, 12, 12)
    for other in loads[1:]:
        assert torch.equal(loads[0], other)


def test_learn2learn_validation_pickle_is_found_under_both_names(tmp_path):
    decoded = make_jpegs(tmp_path / "ravi")
    for name in ("validation", "val"):
        folder = tmp_path / name
        make_pickle(folder, decoded, name=name)
        assert data.load_split(folder, "val", image_size=20)["images"].shape[0] == 12


def test_broken_ravi_csv_naming_missing_images_says_which(tmp_path):
    make_jpegs(tmp_path / "ravi")
    os.remove(tmp_path / "ravi" / "images" / "n02train0001.jpg")
    with pytest.raises(data.DataError, match="n02train0001.jpg"):
        data.load_split(tmp_path / "ravi", "train", progress=False)


def test_broken_image_in_folders_layout_names_the_file(tmp_path):
    make_jpegs(tmp_path / "ravi")
    ravi_to_folders(tmp_path / "ravi", tmp_path / "folders")
    bad = tmp_path / "folders" / "train" / "n03" / "n03train0002.jpg"
    bad.unlink()
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(data.DataError, match="n03train0002.jpg"):
        data.load_split(tmp_path / "folders", "train", progress=False)


def test_pickle_that_is_an_html_page_is_reported_as_such(tmp_path):
    (tmp_path / "mini-imagenet-cache-train.pkl").write_text("<!DOCTYPE html><html>quota exceeded</html>")
    with pytest.raises(data.DataError, match="HTML"):
        data.load_split(tmp_path, "train")


def test_pickle_without_image_data_is_rejected(tmp_path):
    with open(tmp_path / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump({"images": 1}, f)
    with pytest.raises(data.DataError, match="image_data"):
        data.load_split(tmp_path, "train")


def test_hdf5_that_is_not_hdf5_is_rejected(tmp_path):
    (tmp_path / "train_data.hdf5").write_bytes(b"\x00garbage" * 10)
    (tmp_path / "train_labels.json").write_text('["a"]')
    with pytest.raises(data.DataError, match="HDF5"):
        data.load_split(tmp_path, "train")


def test_folder_in_no_layout_lists_the_supported_layouts(tmp_path):
    (tmp_path / "something.txt").write_text("hi")
    with pytest.raises(data.DataError, match="learn2learn") as err:
        data.load_split(tmp_path, "train")
    assert "torchmeta" in str(err.value) and "something.txt" in str(err.value)


def test_missing_data_folder_is_reported(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_split(tmp_path / "nope", "train")


def test_second_load_reads_the_cache_and_notices_a_changed_source(four_layouts, monkeypatch):
    root, _ = four_layouts
    first = data.load_split(root / "ravi", "train", image_size=20, progress=False)
    calls = []
    real_decode = data._decode
    monkeypatch.setattr(data, "_decode", lambda *a: calls.append(a) or real_decode(*a))
    again = data.load_split(root / "ravi", "train", image_size=20, progress=False)
    assert calls == [] and torch.equal(first["images"], again["images"])
    # Replace one image: the cache must be rebuilt and show the new pixels.
    path = root / "ravi" / "images" / "n01train0000.jpg"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(path)
    os.utime(path, ns=(1, 1))
    changed = data.load_split(root / "ravi", "train", image_size=20, progress=False)
    assert len(calls) == 12 and changed["images"][0].max() < 10


def test_cache_dir_none_decodes_without_writing_a_cache(four_layouts, monkeypatch):
    root, _ = four_layouts
    monkeypatch.chdir(root)  # a cache_dir taken for a folder name would appear here as ./none
    cached = data.load_split(root / "ravi", "train", image_size=20, progress=False)
    assert len(list(data.default_cache_dir().glob("ravi-train-*.pt"))) == 1
    for f in data.default_cache_dir().glob("*.pt"):
        f.unlink()
    uncached = data.load_split(root / "ravi", "train", image_size=20, cache_dir="none", progress=False)
    assert torch.equal(cached["images"], uncached["images"])
    assert not list(data.default_cache_dir().glob("*.pt")) and not (root / "none").exists()
    calls = []
    real_decode = data._decode
    monkeypatch.setattr(data, "_decode", lambda *a: calls.append(a) or real_decode(*a))
    data.load_split(root / "ravi", "train", image_size=20, cache_dir="none", progress=False)
    assert len(calls) == 12  # nothing cached: every image decoded again


def test_truncated_cache_is_rebuilt(four_layouts):
    root, _ = four_layouts
    first = data.load_split(root / "ravi", "train", image_size=20, progress=False)
    (cache,) = data.default_cache_dir().glob("ravi-train-*.pt")
    cache.write_bytes(cache.read_bytes()[:100])
    again = data.load_split(root / "ravi", "train", image_size=20, progress=False)
    assert torch.equal(first["images"], again["images"])


# --------------------------------------------------------------------------- sampler


def uneven_split():
    """5 classes with 6..10 images each; pixel value = image index, to trace every image."""
    counts = [6, 7, 8, 9, 10]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = torch.arange(len(labels)).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).to(torch.uint8)
    return data.make_split(images, labels, [f"c{i}" for i in range(5)])


def test_sampler_shapes_classes_and_disjoint_support_query():
    split = uneven_split()
    g = torch.Generator().manual_seed(0)
    ep = data.sample_episodes(split, tasks=50, ways=3, shots=2, queries=4, generator=g)
    assert ep["support_x"].shape == (50, 6, 3, 2, 2) and ep["query_x"].shape == (50, 12, 3, 2, 2)
    assert ep["support_y"].shape == (50, 6) and ep["query_y"].shape == (50, 12)
    for t in range(50):
        classes = ep["classes"][t]
        assert len(set(classes.tolist())) == 3
        s_idx, q_idx = ep["support_idx"][t].tolist(), ep["query_idx"][t].tolist()
        assert len(set(s_idx) | set(q_idx)) == 18  # all distinct, so support and query disjoint
        # every image is of the class its label names, and labels are balanced
        for idx, y in ((ep["support_idx"][t], ep["support_y"][t]), (ep["query_idx"][t], ep["query_y"][t])):
            assert torch.equal(split["labels"][idx], classes[y])
            assert torch.bincount(y, minlength=3).tolist() == [len(y) // 3] * 3
        assert torch.equal(ep["support_x"][t, :, 0, 0, 0].long(), ep["support_idx"][t])


def test_sampler_permutes_labels_and_uses_every_image():
    split = uneven_split()
    g = torch.Generator().manual_seed(1)
    ep = data.sample_episodes(split, tasks=400, ways=3, shots=1, queries=5, generator=g)
    label_of_first_class_position = set()
    for t in range(400):
        label_of_first_class_position.add(int(ep["support_y"][t, 0]))
    assert label_of_first_class_position == {0, 1, 2}
    used = torch.cat([ep["support_idx"].flatten(), ep["query_idx"].flatten()]).unique()
    assert len(used) == len(split["labels"])  # the small classes' padding never leaks in


def test_same_seed_same_episodes_other_seed_other_episodes():
    split = uneven_split()

    def draw(seed):
        return data.sample_episodes(
            split, tasks=4, ways=3, shots=1, queries=2, generator=torch.Generator().manual_seed(seed)
        )

    a, b, c = draw(7), draw(7), draw(8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["query_idx"], c["query_idx"])


def test_episodes_are_normalised_with_the_given_statistics():
    split = uneven_split()
    norm = {"mean": torch.tensor([0.1, 0.2, 0.3]), "std": torch.tensor([0.5, 0.5, 2.0])}
    shape = {"tasks": 2, "ways": 3, "shots": 1, "queries": 2}
    ep = data.sample_episodes(split, **shape, generator=torch.Generator().manual_seed(0), norm=norm)
    raw = data.sample_episodes(split, **shape, generator=torch.Generator().manual_seed(0))
    expected = (raw["support_x"].float() / 255 - norm["mean"].view(3, 1, 1)) / norm["std"].view(3, 1, 1)
    torch.testing.assert_close(ep["support_x"], expected)


def test_channel_stats_match_numpy():
    images = torch.randint(0, 256, (7, 3, 5, 5), dtype=torch.uint8)
    stats = data.channel_stats(data.make_split(images, torch.zeros(7, dtype=torch.long), ["a"]))
    x = images.numpy() / 255.0
    np.testing.assert_allclose(stats["mean"], x.mean((0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], x.std((0, 2, 3)), rtol=1e-5)


def test_too_few_classes_or_images_are_reported():
    split = uneven_split()
    with pytest.raises(data.DataError, match="fewer than the 6 ways"):
        data.check_episode_shape(split, 6, 1, 1)
    with pytest.raises(data.DataError, match="c0 .* 6 images, fewer than the 7"):
        data.check_episode_shape(split, 3, 2, 5)


# --------------------------------------------------------------------------- synthetic data


def test_synthetic_dataset_has_mini_imagenet_shape_and_is_deterministic():
    sizes = {s: len(data.synthetic_split(s, 24, per_class=3, seed=0)["classes"]) for s in data.SPLITS}
    assert sizes == {"train": 64, "val": 16, "test": 20}
    a = data.synthetic_split("val", 24, per_class=3, seed=0)
    b = data.synthetic_split("val", 24, per_class=3, seed=0)
    c = data.synthetic_split("val", 24, per_class=3, seed=1)
    assert a["images"].shape == (48, 3, 24, 24) and a["images"].dtype == torch.uint8
    assert torch.equal(a["images"], b["images"]) and not torch.equal(a["images"], c["images"])
    assert torch.equal(a["labels"], torch.arange(16).repeat_interleave(3))


def test_random_conv4_with_cosine_prototypes_is_near_chance_on_synthetic_data():
    import torch.nn.functional as F

    import maml

    split = data.synthetic_split("test", 84, per_class=20, seed=0)
    norm = data.channel_stats(split)
    g = torch.Generator().manual_seed(0)
    accs = []
    for seed in range(2):
        params = maml.init_params(5, 64, 84, generator=torch.Generator().manual_seed(seed))
        ep = data.sample_episodes(split, tasks=8, ways=5, shots=1, queries=10, generator=g, norm=norm)
        for t in range(8):
            with torch.no_grad():
                support, query = maml.features(params, ep["support_x"][t]), maml.features(params, ep["query_x"][t])
            prototypes = support[ep["support_y"][t].argsort()]  # 1-shot: row j is label j's image
            sim = F.normalize(query, dim=-1) @ F.normalize(prototypes, dim=-1).T
            accs.append((sim.argmax(-1) == ep["query_y"][t]).float().mean())
    accuracy = torch.stack(accs).mean().item()
    assert accuracy < 0.20 + 0.15, accuracy


# --------------------------------------------------------------------------- the real sample


def test_omniglot_as_it_ships_loads_in_the_lake_split(tmp_path):
    root = make_omniglot(tmp_path / "omniglot")
    assert data.detect_layout(root) == "omniglot"
    assert data.dataset_defaults(root) == {"image_size": 28, "rotations": False, "omniglot_split": "lake"}
    splits = data.load_splits(root, data.SPLITS, image_size=28, progress=False)
    # 14 background characters: round(15%) = 2 held out for validation; 5 evaluation characters for test.
    assert [len(splits[s]["classes"]) for s in data.SPLITS] == [12, 2, 5]
    assert not set(splits["train"]["classes"]) & set(splits["val"]["classes"])
    assert all(c.startswith("Gamma/") for c in splits["test"]["classes"])
    train = splits["train"]
    assert train["images"].shape == (12 * OMNIGLOT_PER_CHARACTER, 1, 28, 28) and train["images"].dtype == torch.uint8
    # Strokes bright: the paper (most pixels) is 0, the black bars of the PNGs are the bright value.
    assert (train["images"] == 0).float().mean() > 0.7 and train["images"].max() == 255
    assert data.channel_stats(train)["mean"].shape == (1,)
    again = data.load_split(root, "val", image_size=28, progress=False)  # the held-out 15% is fixed
    assert again["classes"] == splits["val"]["classes"]
    rotated = data.load_split(root, "train", image_size=28, progress=False, rotations=True)
    assert len(rotated["classes"]) == 48 and rotated["classes"][1].endswith("/rot090")


def test_omniglot_vinyals_split_makes_each_rotation_a_class(tmp_path):
    root = make_omniglot(tmp_path / "omniglot", vinyals=True)
    assert data.dataset_defaults(root)["omniglot_split"] == "vinyals"
    assert data.dataset_defaults(root, image_size=20)["image_size"] == 20
    splits = data.load_splits(root, data.SPLITS, image_size=28, progress=False)
    assert [len(splits[s]["classes"]) for s in data.SPLITS] == [32, 12, 24]  # 8, 3, 6 characters x 4 rotations
    assert "Beta_(script)/character05/rot180" in splits["test"]["classes"]  # a background character in test
    test = splits["test"]
    by_name = {n: test["images"][test["labels"] == i] for i, n in enumerate(test["classes"])}
    upright, turned = by_name["Gamma/character02/rot000"], by_name["Gamma/character02/rot090"]
    assert torch.equal(turned, torch.rot90(upright, 1, (2, 3)))  # counter-clockwise, as PIL's rotate(90)
    plain = data.load_splits(root, data.SPLITS, image_size=28, progress=False, rotations=False)
    assert [len(plain[s]["classes"]) for s in data.SPLITS] == [8, 3, 6]
    with pytest.raises(data.DataError, match="Omniglot only"):
        data.dataset_defaults(None, rotations=True)  # the synthetic dataset has no rotations to add


def test_omniglot_split_file_naming_a_missing_character_is_one_line(tmp_path):
    root = make_omniglot(tmp_path / "omniglot", vinyals=True)
    (root / "splits" / "vinyals" / "val.txt").write_text("Alpha/character99/rot000\n")
    with pytest.raises(data.DataError, match="character99 is in the split files"):
        data.load_split(root, "val", image_size=28, progress=False)


@pytest.mark.skipif(SAMPLE is None, reason="set MAML_TEST_DATA to a Mini-ImageNet folder (Ravi layout) to run it")
def test_real_sample_loads_the_same_through_ravi_and_class_folders(tmp_path):
    ravi = data.load_split(SAMPLE, "val", image_size=84, progress=False)
    ravi_to_folders(SAMPLE, tmp_path / "folders", splits=["val"])
    folders = data.load_split(tmp_path / "folders", "val", image_size=84, progress=False)
    assert ravi["images"].shape == (1600, 3, 84, 84) and len(ravi["classes"]) == 16
    assert ravi["classes"] == folders["classes"]
    assert torch.equal(ravi["labels"], folders["labels"])
    assert torch.equal(ravi["images"], folders["images"])


# --------------------------------------------------------------------------- inputs people really have


def one_image_split(tmp_path, image, name="im.png"):
    """A folders-layout train split of one class holding `image`, loaded at its own size."""
    (tmp_path / "train" / "c").mkdir(parents=True, exist_ok=True)
    image.save(tmp_path / "train" / "c" / name)
    return data.load_split(tmp_path, "train", image_size=image.size[0], cache_dir="none", progress=False)


def grey(split):
    """The first image's pixels of channel 0, after checking that R, G and B are equal."""
    x = split["images"][0].numpy()
    assert (x[0] == x[1]).all() and (x[1] == x[2]).all()
    return x[0]


def test_16_bit_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16) * 1040).reshape(8, 8)  # 0 .. 65520
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    image.save(tmp_path / "x.png")
    assert Image.open(tmp_path / "x.png").mode == "I;16"
    np.testing.assert_array_equal(grey(one_image_split(tmp_path, image)), np.round(ramp / 257).astype(np.uint8))


@pytest.mark.parametrize(
    "mode, values, expected",
    [
        pytest.param("I", [[0, 1000], [30000, 65535]], [[0, 4], [117, 255]], id="I holding 16-bit values"),
        pytest.param("I", [[0, 10], [128, 255]], [[0, 10], [128, 255]], id="I holding 8-bit values"),
        pytest.param("F", [[0.0, 0.5], [0.25, 1.0]], [[0, 128], [64, 255]], id="F in 0..1"),
        pytest.param("F", [[0.0, 2.0], [100.0, 255.0]], [[0, 2], [100, 255]], id="F in 0..255"),
    ],
)
def test_32_bit_and_float_images_are_scaled_by_their_range(mode, values, expected, tmp_path):
    array = np.array(values, dtype=np.int32 if mode == "I" else np.float32)
    image = Image.fromarray(array, mode)
    np.testing.assert_array_equal(grey(one_image_split(tmp_path, image, "im.tif")), expected)


def test_float_image_out_of_range_is_refused_naming_the_file(tmp_path):
    image = Image.fromarray(np.array([[-1.0, 300.0], [0.0, 1.0]], dtype=np.float32), "F")
    with pytest.raises(data.DataError, match=r"im.tif: mode F with values in \[-1, 300\]"):
        one_image_split(tmp_path, image, "im.tif")


def test_transparent_images_are_composited_onto_white(tmp_path):
    la = np.zeros((2, 2, 2), np.uint8)
    la[..., 0] = 40  # dark grey under the alpha channel
    la[0, 0, 1] = 255  # one opaque pixel; the rest fully transparent
    np.testing.assert_array_equal(
        grey(one_image_split(tmp_path / "la", Image.fromarray(la, "LA"))), [[40, 255], [255, 255]]
    )
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((1, 1), 1)
    palette.info["transparency"] = 0  # palette entry 0 (black) is transparent
    x = one_image_split(tmp_path / "p", palette)["images"][0].numpy()
    np.testing.assert_array_equal(x[:, 1, 1], [255, 0, 0])  # the opaque red pixel
    np.testing.assert_array_equal(x[:, 0, 0], [255, 255, 255])  # transparent: white, not black


def test_one_bit_images_become_black_and_white(tmp_path):
    image = Image.fromarray(np.eye(2, dtype=bool))
    assert image.mode == "1"
    np.testing.assert_array_equal(grey(one_image_split(tmp_path, image)), [[255, 0], [0, 255]])


def test_huge_image_loads_without_pils_decompression_bomb_warning(tmp_path, monkeypatch, capsys):
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 40)  # a 6x6 image is then over the limit, under twice it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning would fail the load
        split = one_image_split(tmp_path, Image.new("RGB", (6, 6), (9, 9, 9)))
    assert int(split["images"].max()) == 9
    assert capsys.readouterr().err == ""


def float_pickle(folder, image_data):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump({"image_data": image_data, "class_dict": {"a": [0, 1], "b": [2, 3]}}, f)
    return folder


def test_pickle_of_float_images_in_0_1_is_scaled_and_says_so(tmp_path, capsys):
    pixels = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    float_pickle(tmp_path / "u8", pixels)
    float_pickle(tmp_path / "f", pixels.astype(np.float32) / 255)
    float_pickle(tmp_path / "whole", pixels.astype(np.float64))  # floats holding 0..255
    as_uint8 = data.load_split(tmp_path / "u8", "train", image_size=8)["images"]
    as_float = data.load_split(tmp_path / "f", "train", image_size=8)["images"]
    assert torch.equal(as_uint8, as_float) and int(as_float.max()) > 200
    assert "float images in [0, 1]; they are scaled by 255" in capsys.readouterr().out
    assert torch.equal(as_uint8, data.load_split(tmp_path / "whole", "train", image_size=8)["images"])


def test_pickle_of_floats_in_no_known_range_is_refused(tmp_path):
    float_pickle(tmp_path, np.full((4, 8, 8, 3), 0.5, np.float32) * np.array([1, 1, 700], np.float32))
    with pytest.raises(data.DataError, match=r"float32 values in \[0.5, 350\]; expected uint8"):
        data.load_split(tmp_path, "train", image_size=8)


def test_class_in_two_splits_is_refused_naming_it_and_both_splits(tmp_path):
    make_jpegs(tmp_path)
    (tmp_path / "test.csv").write_text((tmp_path / "train.csv").read_text())
    with pytest.raises(data.DataError, match="class n01 is in both the train and the test split .*3 classes are"):
        data.load_splits(tmp_path, ["train", "val", "test"], image_size=8, progress=False)


def test_class_folder_with_images_in_a_subfolder_is_named_in_a_warning(tmp_path, capsys):
    make_jpegs(tmp_path / "ravi")
    ravi_to_folders(tmp_path / "ravi", tmp_path / "folders", splits=["train"])
    n03 = tmp_path / "folders" / "train" / "n03"
    (n03 / "nested").mkdir()
    for f in n03.glob("*.jpg"):
        f.rename(n03 / "nested" / f.name)
    split = data.load_split(tmp_path / "folders", "train", image_size=8, progress=False)
    assert split["classes"] == ["n01", "n02"]
    assert "1 class folder(s)" in capsys.readouterr().out
    with pytest.raises(data.DataError, match=r"2 classes \(1 more class folders .*n03/nested/.*fewer than the 3 ways"):
        data.check_episode_shape(split, 3, 1, 1, "train split")


def test_csv_with_a_byte_order_mark_and_images_prefix_loads_like_the_plain_one(tmp_path):
    make_jpegs(tmp_path)
    plain = data.load_split(tmp_path, "train", image_size=8, cache_dir="none", progress=False)
    lines = (tmp_path / "train.csv").read_text().splitlines()
    odd = [lines[0]] + [f"images/{line}" for line in lines[1:]]
    (tmp_path / "train.csv").write_bytes(b"\xef\xbb\xbf" + "\n".join(odd).encode() + b"\n")
    odd_split = data.load_split(tmp_path, "train", image_size=8, cache_dir="none", progress=False)
    assert torch.equal(plain["images"], odd_split["images"]) and plain["classes"] == odd_split["classes"]


def test_latin1_csv_is_refused_naming_the_line(tmp_path):
    make_jpegs(tmp_path)
    text = (tmp_path / "train.csv").read_text().replace("n01train0000.jpg,n01", "n01train0000.jpg,caf\u00e9")
    (tmp_path / "train.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(data.DataError, match=r"train.csv is not UTF-8 text \(line 2 holds the byte 0xe9\)"):
        data.load_split(tmp_path, "train", image_size=8, progress=False)


def test_file_and_class_names_that_are_not_utf8_load_and_cache(tmp_path):
    make_jpegs(tmp_path / "ravi")
    ravi_to_folders(tmp_path / "ravi", tmp_path / "folders", splits=["train"])
    train = tmp_path / "folders" / "train"
    os.rename(train / "n02", os.fsdecode(bytes(train) + b"/caf\xe9"))
    first = os.listdir(os.fsdecode(bytes(train) + b"/caf\xe9"))[0]
    os.rename(train / "n01" / "n01train0000.jpg", os.fsdecode(bytes(train / "n01") + b"/\xff.jpg"))
    split = data.load_split(tmp_path / "folders", "train", image_size=8, progress=False)
    assert split["classes"] == ["caf\\xe9", "n01", "n03"] and len(split["images"]) == 12 and first
    again = data.load_split(tmp_path / "folders", "train", image_size=8, progress=False)  # from the cache
    assert torch.equal(split["images"], again["images"]) and again["classes"] == split["classes"]


def test_torchmeta_hdf5_of_floats_in_0_1_is_scaled_like_a_float_pickle_not_cast_to_black(tmp_path, capsys):
    decoded = make_jpegs(tmp_path / "ravi")
    as_floats = {c: [image.astype(np.float32) / 255 for image in images] for c, images in decoded.items()}
    make_hdf5(tmp_path / "u8", decoded)
    make_hdf5(tmp_path / "f", as_floats)
    images, floats = (data.load_split(tmp_path / name, "train", image_size=20)["images"] for name in ("u8", "f"))
    assert torch.equal(images, floats) and int(floats.max()) > 200  # before, a cast made every pixel 0 or 1
    assert "holds float images in [0, 1]; they are scaled by 255" in capsys.readouterr().out


def test_a_duplicated_csv_row_and_a_test_csv_naming_training_images_are_refused(tmp_path):
    make_jpegs(tmp_path / "ravi")
    train_csv = tmp_path / "ravi" / "train.csv"
    rows = train_csv.read_text().splitlines()
    train_csv.write_text("\n".join([*rows, rows[1]]) + "\n")
    with pytest.raises(data.DataError, match=r"names n01train0000.jpg twice \(lines 2 and 14\)"):
        data.load_split(tmp_path / "ravi", "train", image_size=20)
    train_csv.write_text("\n".join(rows) + "\n")
    test_rows = [f"{r.split(',')[0]},{r.split(',')[1].replace('n0', 'n2')}" for r in rows[1:]]
    (tmp_path / "ravi" / "test.csv").write_text("filename,label\n" + "\n".join(test_rows) + "\n")
    with pytest.raises(data.DataError, match="image n01train0000.jpg is in both the train and the test split"):
        data.load_splits(tmp_path / "ravi", ["train", "test"], image_size=20)


def test_an_empty_cache_variable_counts_as_unset(monkeypatch):
    monkeypatch.setenv("MAML_CACHE_DIR", "")
    assert data.default_cache_dir() == data.Path.home() / ".cache" / "negative-lr-maml"


def test_a_training_image_hard_linked_into_the_test_split_is_refused(tmp_path):
    make_jpegs(tmp_path / "ravi")
    images, test_csv = tmp_path / "ravi" / "images", tmp_path / "ravi" / "test.csv"
    name = test_csv.read_text().splitlines()[1].split(",")[0]
    (images / name).unlink()
    os.link(images / "n01train0000.jpg", images / name)  # the same file, under a test image's name
    with pytest.raises(
        data.DataError, match=f"image ({name}|n01train0000.jpg) is in both the train and the test split"
    ):
        data.load_splits(tmp_path / "ravi", ["train", "val", "test"], image_size=20, cache_dir="none")


def test_a_cache_temporary_of_a_killed_process_is_removed_and_one_of_a_live_process_kept(tmp_path, capsys):
    make_jpegs(tmp_path / "ravi")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, live = tmp_path / "cache" / f"x.pt.tmp{gone.stdout.strip()}", tmp_path / "cache" / f"y.pt.tmp{os.getppid()}"
    dead.parent.mkdir()
    dead.write_bytes(b"half a cache"), live.write_bytes(b"being written")
    data.load_split(tmp_path / "ravi", "train", image_size=20, cache_dir=tmp_path / "cache", progress=False)
    assert not dead.exists() and live.exists()
    assert f"removed 1 temporary file(s) that a killed process left in {tmp_path / 'cache'}" in capsys.readouterr().out
