"""The error table's bad data: a data folder that is missing, empty, in no layout or a file; CSVs that
name absent images, lack their header, are not UTF-8 or repeat an image; unreadable images and values
no 8-bit scale fits; pickles and HDF5 files that are not what they claim; classes or images shared across
splits; too few classes or images for the task shape. How a row runs and what it must show:
tests/cli_errors_harness.py."""

import pytest

import bad_inputs as bad

DATA_CASES = [
    # ---- maml.py: data
    pytest.param("maml", bad.missing_folder, "does not exist", id="missing data folder"),
    pytest.param("maml", bad.empty_folder, "found: nothing", id="empty data folder"),
    pytest.param("maml", bad.folder_in_no_layout, "learn2learn pickles", id="folder in no layout"),
    pytest.param("maml", bad.data_that_is_a_file, "is a file; expected a folder", id="data that is a file"),
    pytest.param("maml", bad.csv_naming_an_absent_image, "n01train0002.jpg", id="csv naming absent images"),
    pytest.param(
        "maml",
        bad.csv_with_images_prefix_naming_an_absent_image,
        "n01train0099.jpg",
        id="csv with images/ prefix naming an absent image",
    ),  # fmt: skip
    pytest.param(
        "maml", bad.csv_with_bom_and_wrong_header, "header 'filename,label'", id="csv with bom and wrong header"
    ),
    pytest.param(
        "maml", bad.csv_with_a_row("val", "lonely.jpg"), "row without a label: lonely.jpg", id="csv row without label"
    ),
    pytest.param("maml", bad.latin1_csv, r"train.csv is not UTF-8 text \(line 2", id="latin-1 csv"),
    pytest.param("maml", bad.truncated_image, "cannot read image .*n02train0001.jpg", id="truncated image"),
    pytest.param(
        "maml",
        bad.truncated_image_with_a_non_utf8_name,
        r"cannot read image .*caf\\xe9.jpg",
        id="truncated image with a non-utf-8 name",
    ),  # fmt: skip
    pytest.param("maml", bad.image_far_over_the_pixel_limit, "DecompressionBombError", id="image far over pixel limit"),
    pytest.param(
        "maml", bad.float_image_out_of_range, r"mode F with values in \[300, 300\]", id="float image out of range"
    ),
    pytest.param("maml", bad.pickle_that_is_an_html_page, "HTML", id="pickle that is an html page"),
    pytest.param(
        "maml", bad.pickle_of_floats_out_of_range, r"float32 values in \[2.5, 2.5\]", id="float pickle out of range"
    ),
    pytest.param(
        "maml",
        bad.leaky_test_csv,
        "class n01 is in both the train and the test split",
        id="class leakage: test.csv is train.csv",
    ),  # fmt: skip
    pytest.param("maml", bad.missing_test_split, "no 'test' split", id="missing test split"),
    pytest.param(
        "maml",
        bad.small_test_split,
        "test split has 1 classes, fewer than the 2 ways",
        id="test split with too few classes",
    ),  # fmt: skip
    pytest.param(
        "maml",
        bad.class_folders_with_images_in_subfolders,
        r"1 more class folders hold their images in subfolders",
        id="class folders with images in subfolders",
    ),  # fmt: skip
    pytest.param(
        "maml", bad.train_flags("--ways", "20"), "16 classes, fewer than the 20 ways", id="fewer classes than ways"
    ),
    pytest.param(
        "maml",
        bad.train_flags("--queries", "12"),
        "12 images, fewer than the 13",
        id="fewer images than shots plus queries",
    ),  # fmt: skip
    pytest.param(
        "maml",
        bad.train_flags("--eval-queries", "12"),
        "val split has 12 images, fewer than the 13",
        id="fewer val images than shots plus eval queries",
    ),  # fmt: skip
    pytest.param(
        "maml",
        bad.omniglot_split_file_with_a_bad_line,
        "expected lines like Alphabet/character01/rot090",
        id="omniglot split file with a bad line",
    ),  # fmt: skip
    # ---- round 3: data
    pytest.param(
        "maml",
        bad.csv_listing_every_image_twice,
        r"names n\d+train0000.jpg twice \(lines 2 and 1[0-9]\)",
        id="csv listing every image twice",
    ),
    pytest.param(
        "maml",
        bad.test_csv_naming_training_images,
        "image n01train0000.jpg is in both the train and the test",
        id="test.csv naming train.csv's images",
    ),
    pytest.param(
        "maml",
        bad.csv_with_a_row("train", " ,n01"),
        r"train.csv line 14 has an empty file name",
        id="csv row with an empty file name",
    ),
    pytest.param(
        "maml",
        bad.pickle_naming_an_image_past_its_images,
        r"class_dict\['b'\] names image 7 outside",
        id="pickle naming an image past its images",
    ),
    pytest.param(
        "maml",
        bad.hdf5_class_with_other_dimensions,
        r"class b is stored as \(4, 9, 9, 3\)",
        id="hdf5 class with other dimensions",
    ),
    # ---- round 3, the independent tester's inputs
    pytest.param("maml", bad.pickle_with({}), "class_dict is empty", id="pickle of no classes"),
    pytest.param("maml", bad.hdf5_naming_no_classes, "names no classes", id="hdf5 naming no classes"),
    pytest.param(
        "maml",
        bad.pickle_with({"a": [0, 0, 1], "b": [2, 3]}),
        r"names image_data\[0\] more than once",
        id="pickle naming an image twice",
    ),
    pytest.param(
        "maml", bad.pickle_with({"a": [0, 1, -1], "b": [2, 3]}), "names image -1 outside", id="pickle negative index"
    ),
    pytest.param(
        "maml",
        bad.pickle_with({"a": [0.0, 1.0], "b": [2.0, 3.0]}),
        "holds float64 indices; expected integer",
        id="pickle of float indices",
    ),
    pytest.param(
        "maml",
        bad.csv_naming_an_image_again_by_another_path,
        r"names n01train0000.jpg twice \(lines 2 and 14\)",
        id="csv naming an image again by another path",
    ),
    pytest.param(
        "maml",
        bad.csv_with_a_row("train", "new.jpg, "),
        "train.csv line 14 has an empty label",
        id="csv row with an empty label",
    ),
]
