"""Images in, N-way K-shot episodes out.

This file knows about images and episodes and nothing about models or runs. It reads a Mini-ImageNet split in
any of the four layouts people have (see `detect_layout`), or builds a synthetic dataset of the same
shape, and keeps each split as ONE uint8 tensor [images, channels, H, W] plus class ids (3 channels;
1 for Omniglot, which it also reads as it ships). `sample_episodes`
draws a whole meta-batch of tasks at once, on whatever device the images live on, so a GPU run never
goes back to the host for an episode.

    split = load_split("path/to/mini-imagenet", "train", image_size=84)
    norm = channel_stats(split)                     # from the TRAINING split, stored in checkpoints
    g = torch.Generator().manual_seed(0)
    ep = sample_episodes(split, tasks=3, ways=5, shots=1, queries=10, generator=g, norm=norm)
    ep["support_x"].shape  # [3, 5, 3, 84, 84]  (tasks, ways*shots, channels, H, W)
"""

import csv
import functools
import hashlib
import json
import math
import os
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cli import DataError, WriteError, atomic_write, note_removed, printable, remove_stale_temporaries

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
LAYOUTS = (
    "ravi: DIR/images/*.jpg + DIR/{train,val,test}.csv (header filename,label)",
    "folders: DIR/{train,val,test}/<class>/<image>",
    "learn2learn pickles: DIR/mini-imagenet-cache-{train,validation,test}.pkl",
    "torchmeta HDF5: DIR/{train,val,test}_data.hdf5 + DIR/{split}_labels.json (or inside DIR/miniimagenet/)",
    "Omniglot as it ships: DIR/images_background/<Alphabet>/<characterNN>/*.png and DIR/images_evaluation/...",
)
OMNIGLOT_PARTS = ("images_background", "images_evaluation")
OMNIGLOT_SIZE = 28  # the few-shot literature's Omniglot size; Mini-ImageNet's is 84
OMNIGLOT_VAL_FRACTION, OMNIGLOT_VAL_SEED = 0.15, 0  # lake split: background characters held out for validation
SYNTHETIC_CLASSES = {"train": 64, "val": 16, "test": 20}  # Mini-ImageNet's split sizes


# ----------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------


def _pickle_path(root, split):
    names = {"train": ["train"], "val": ["validation", "val"], "test": ["test"]}[split]
    for name in names:
        path = root / f"mini-imagenet-cache-{name}.pkl"
        if path.exists():
            return path
    return None


def _hdf5_root(root, split):
    for folder in (root, root / "miniimagenet"):
        if (folder / f"{split}_data.hdf5").exists():
            return folder
    return None


def _folders_split_dir(root, split):
    names = {"train": ["train"], "val": ["val", "validation"], "test": ["test"]}[split]
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def detect_layout(root, split="train"):
    """Which of the four supported layouts `root` is in, judged by the files for `split`."""
    root = Path(root)
    if not root.exists():
        raise DataError(
            f"data folder {root} does not exist; expected a Mini-ImageNet folder in one of "
            f"these layouts: {'; '.join(LAYOUTS)}"
        )
    if not root.is_dir():
        raise DataError(f"--data {root} is a file; expected a folder in one of these layouts: {'; '.join(LAYOUTS)}")
    if (root / "images").is_dir() and (root / f"{split}.csv").exists():
        return "ravi"
    if any((root / part).is_dir() for part in OMNIGLOT_PARTS):
        return "omniglot"
    if _pickle_path(root, split) is not None:
        return "pickle"
    if _hdf5_root(root, split) is not None:
        return "hdf5"
    if _folders_split_dir(root, split) is not None:
        return "folders"
    found = sorted(p.name for p in root.iterdir())[:8]
    raise DataError(
        f"{root} holds no '{split}' split in a supported layout (found: {', '.join(found) or 'nothing'}); "
        f"expected one of: {'; '.join(LAYOUTS)}"
    )


def read_text_lines(path):
    """A text file's lines, read as UTF-8 (a byte-order mark is dropped). A file in another encoding is
    refused naming the line, rather than read with guessed characters."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path} is not UTF-8 text (line {line} holds the byte 0x{raw[e.start]:02x}); save it as UTF-8, "
            f"e.g. iconv -f latin1 -t utf-8"
        ) from None


def _ravi_files(root, split):
    path = root / f"{split}.csv"
    rows = list(csv.reader(read_text_lines(path)))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["filename", "label"]:
        raise DataError(f"{path} should start with the header 'filename,label'")
    files, labels, line_of = [], [], {}
    for line, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) < 2:
            raise DataError(f"{path} has a row without a label: {','.join(row)}")
        name = row[0].strip()
        if not name:
            raise DataError(f"{path} line {line} has an empty file name")
        if not row[1].strip():
            raise DataError(f"{path} line {line} has an empty label; give every image its class")
        # Some copies of the CSVs name images as images/<file>: the same folder either way.
        file = root / name if name.startswith("images/") else root / "images" / name
        key = os.path.abspath(file)  # one image named relatively and by its absolute path is one image
        if key in line_of:  # a task could then draw one image as its support and its query
            raise DataError(f"{path} names {file.name} twice (lines {line_of[key]} and {line}); list each image once")
        line_of[key] = line
        files.append(file)
        labels.append(row[1].strip())
    missing = [f for f in files if not f.exists()]
    if missing:
        raise DataError(
            f"{path} names {len(missing)} image(s) that are not in {root / 'images'}, e.g. {missing[0].name}"
        )
    return files, labels


def _folder_files(root, split):
    """Files and class names of a split in the folders layout, and the class folders left out because
    their images sit in subfolders (they are named in the warning and in a too-few-classes error)."""
    split_dir = _folders_split_dir(root, split)
    files, labels, left_out = [], [], []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        images = [f for f in sorted(class_dir.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        files += images
        labels += [printable(class_dir.name)] * len(images)
        nested = None if images else next((f for f in class_dir.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES), None)
        if nested is not None:
            left_out.append(printable(str(nested.relative_to(split_dir))))
    if left_out:
        print(
            f"warning: {len(left_out)} class folder(s) of {split_dir} are left out: their images sit in "
            f"subfolders (e.g. {left_out[0]}); a class's images belong directly in its folder"
        )
    if not files:
        raise DataError(f"{split_dir} has no class folders with images in them; expected {split_dir}/<class>/<image>")
    return files, labels, left_out


def _scaled_to_uint8(pixels, mode, path):
    """8-bit grey values from a 16-bit, 32-bit or float image, which convert("RGB") would clip to
    white. 16-bit modes are scaled by 255/65535. Mode I and F have no fixed range, so they are read
    by the range they hold: I in 0..255 as is, in 0..65535 like 16 bits; F in [0, 1] times 255, in
    [0, 255] as is. Anything else is refused rather than guessed."""
    x = np.asarray(pixels, dtype=np.float64)
    low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and 255 < high <= 65535):
        x = x / 257
    elif mode == "F" and low >= 0 and high <= 1:
        x = x * 255
    elif not (low >= 0 and high <= 255):
        raise DataError(
            f"cannot read image {path}: mode {mode} with values in [{low:g}, {high:g}]; expected 8 or 16 bits, "
            f"or floats in [0, 1] or [0, 255]"
        )
    return np.round(x).astype(np.uint8)


def _as_rgb(im, path):
    """The image as 8-bit RGB. Transparent images are composited onto white (convert("RGB") would show
    whatever colour hides under the transparency), and 16-bit or float ones are scaled, not clipped."""
    from PIL import Image

    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return Image.fromarray(_scaled_to_uint8(im, im.mode, path)).convert("RGB")
    if im.mode in ("LA", "RGBA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _decode(path, image_size, mode="RGB"):
    """One image file -> uint8 [channels, size, size]: RGB (3 channels) or L (1, grey)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = _as_rgb(im, path)
            if mode == "L":
                im = im.convert("L")
            if im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BILINEAR)
            array = np.asarray(im, dtype=np.uint8)
            return array[None] if mode == "L" else array.transpose(2, 0, 1)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot read image {printable(str(path))}: {type(e).__name__}: {e}") from None


def _decode_all(files, image_size, mode, progress, desc):
    """Decode many image files in threads -> uint8 [n, channels, size, size], in file order."""
    from PIL import Image
    from tqdm import tqdm

    images = np.empty((len(files), 1 if mode == "L" else 3, image_size, image_size), np.uint8)
    # A huge image (over PIL's 89-megapixel bomb limit) is decoded and resized like any other, without
    # PIL's two-line warning; one over twice the limit is refused by PIL and reported as unreadable.
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        decoded = pool.map(lambda f: _decode(f, image_size, mode), files, chunksize=64)
        for i, im in enumerate(tqdm(decoded, total=len(files), desc=desc, disable=not progress, unit="img")):
            images[i] = im
    return images


def _resize_uint8(images, image_size):
    """[n,c,h,w] uint8 -> [n,c,s,s] uint8 with PIL, the same resize the image-file layouts get
    (c is 3, or 1 for grey images)."""
    if images.shape[-1] == image_size and images.shape[-2] == image_size:
        return images
    from PIL import Image

    channels = images.shape[1]
    out = np.empty((len(images), channels, image_size, image_size), np.uint8)
    for i, im in enumerate(images):
        hwc = np.ascontiguousarray(im.transpose(1, 2, 0))
        pil = Image.fromarray(hwc[..., 0] if channels == 1 else hwc)
        resized = np.asarray(pil.resize((image_size, image_size), Image.BILINEAR))
        out[i] = resized.reshape(image_size, image_size, channels).transpose(2, 0, 1)
    return out


def _check_not_html(path):
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if head[:1] == b"<":
        raise DataError(f"{path} is an HTML/XML page, not a data file (a failed download?); download it again")


class _DataUnpickler(pickle.Unpickler):
    """pickle.load runs whatever a file asks for (a downloaded one included); this one builds only what a
    learn2learn pickle holds: dicts, lists, numbers and strings, and numpy arrays."""

    ALLOWED = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
               for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype")} | {
               (module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric")} | {
               ("collections", "OrderedDict")}  # protocol 5 writes arrays with _frombuffer  # fmt: skip

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which no data file needs")
        with warnings.catch_warnings():  # numpy 2 reads numpy 1's module names, with a warning
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def read_pickle(path):
    """A learn2learn Mini-ImageNet pickle's (image_data, class_dict), read by `_DataUnpickler`."""
    _check_not_html(path)
    try:
        with open(path, "rb") as f:
            content = _DataUnpickler(f).load()
        image_data, class_dict = np.asarray(content["image_data"]), dict(content["class_dict"])
    except Exception as e:
        raise DataError(
            f"{path} is not a learn2learn Mini-ImageNet pickle (a dict with 'image_data' and "
            f"'class_dict'): {type(e).__name__}: {e}"
        ) from None
    if image_data.ndim != 4 or image_data.shape[-1] != 3:
        raise DataError(f"{path}: image_data should be uint8 N x H x W x 3, got shape {image_data.shape}")
    return image_data, class_dict


def pickle_contents(path):
    """(image_data's shape, {class: images}) of a pickle whose pixels are uint8 and whose indices are
    valid: what fetch.py compares with what the source should hold."""
    image_data, class_dict = read_pickle(path)
    if image_data.dtype != np.uint8:
        raise DataError(f"{path}: image_data holds {image_data.dtype}; expected uint8 pixels")
    indices = {name: _pickle_indices(path, name, class_dict[name], len(image_data)) for name in class_dict}
    every = np.concatenate(list(indices.values())) if indices else np.zeros(0, dtype=np.int64)
    if len(every) != len(image_data) or len(np.unique(every)) != len(every):
        raise DataError(
            f"{path}: class_dict names {len(np.unique(every))} distinct images of image_data's {len(image_data)}, "
            f"{len(every)} times in all; expected every image named once"
        )
    return tuple(image_data.shape), {name: len(index) for name, index in indices.items()}


def _load_pickle(root, split, image_size):
    path = _pickle_path(root, split)
    image_data, class_dict = read_pickle(path)
    names = sorted(class_dict)
    if not names:
        raise DataError(f"{path}: class_dict is empty; expected the {split} split's classes")
    order = np.concatenate([_pickle_indices(path, name, class_dict[name], len(image_data)) for name in names])
    values, counts = np.unique(order, return_counts=True)
    if (counts > 1).any():  # a task could then draw one image as its support and its query
        twice = values[counts > 1][0]
        raise DataError(f"{path}: class_dict names image_data[{twice}] more than once; list each image once")
    labels = np.concatenate([np.full(len(class_dict[n]), i) for i, n in enumerate(names)])
    images = _pixels_as_uint8(image_data[order], f"{path}: image_data").transpose(0, 3, 1, 2)
    return _resize_uint8(images, image_size), labels, names


def _pickle_indices(path, name, indices, images):
    """A pickle class's image indices, checked: whole numbers within image_data."""
    index = np.asarray(indices).reshape(-1)
    if index.size and not np.issubdtype(index.dtype, np.integer):
        raise DataError(f"{path}: class_dict[{name!r}] holds {index.dtype} indices; expected integer indices")
    outside = index[(index < 0) | (index >= images)]
    if outside.size:
        raise DataError(
            f"{path}: class_dict[{name!r}] names image {outside[0]} outside image_data's {images} images; "
            f"expected indices 0..{images - 1}"
        )
    return index.astype(np.int64)


def _pixels_as_uint8(pixels, where):
    """Pickles and HDF5 files hold uint8 pixels; copies saved from a float pipeline hold floats in
    [0, 1] (scaled by 255 here, and said so) or whole numbers in [0, 255]. Any other range is refused:
    a cast would turn [0, 1] into black and larger numbers into wrapped garbage."""
    if pixels.dtype == np.uint8:
        return pixels
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    floats = np.issubdtype(pixels.dtype, np.floating)
    if floats and 0 <= low and high <= 1:
        print(f"note: {where} holds float images in [0, 1]; they are scaled by 255 to 8 bits")
        return np.round(pixels * 255).astype(np.uint8)
    whole = not floats or bool(np.all(pixels == np.round(pixels)))
    if whole and 0 <= low and high <= 255:
        return pixels.astype(np.uint8)
    raise DataError(
        f"{where} holds {pixels.dtype} values in [{low:g}, {high:g}]; expected uint8 pixels, "
        f"floats in [0, 1], or whole numbers in [0, 255]"
    )


def _load_hdf5(root, split, image_size):
    try:
        import h5py
    except ImportError:
        raise DataError("this folder is in torchmeta's HDF5 layout, which needs h5py: pip install h5py") from None
    folder = _hdf5_root(root, split)
    data_path, labels_path = folder / f"{split}_data.hdf5", folder / f"{split}_labels.json"
    _check_not_html(data_path)
    try:
        with open(labels_path) as f:
            names = sorted(json.load(f))
        with h5py.File(data_path, "r") as f:
            group = f["datasets"]
            arrays = [np.asarray(group[n]) for n in names]
    except FileNotFoundError:
        raise DataError(
            f"{labels_path} is missing; torchmeta's layout has {split}_labels.json beside {split}_data.hdf5"
        ) from None
    except Exception as e:
        raise DataError(
            f"{data_path} is not a torchmeta Mini-ImageNet HDF5 file (group 'datasets', one "
            f"uint8 array per class): {type(e).__name__}: {e}"
        ) from None
    if not names:
        raise DataError(f"{labels_path} names no classes; expected the {split} split's class names")
    for name, array in zip(names, arrays):
        if array.ndim != 4 or array.shape[-1] != 3 or array.shape[1:] != arrays[0].shape[1:]:
            raise DataError(
                f"{data_path}: class {name} is stored as {array.shape}; expected N x H x W x 3 like the first "
                f"class's {arrays[0].shape}"
            )
    pixels = [_pixels_as_uint8(a, f"{data_path}: class {n}") for n, a in zip(names, arrays)]
    images = np.concatenate(pixels).transpose(0, 3, 1, 2)
    labels = np.concatenate([np.full(len(a), i) for i, a in enumerate(arrays)])
    return _resize_uint8(images, image_size), labels, names


def _signature(files):
    h = hashlib.sha1()
    for f in files:
        st = os.stat(f)
        # surrogateescape: a file name that is not UTF-8 hashes as its own bytes
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def default_cache_dir():
    """$MAML_CACHE_DIR (an empty value counts as unset, not as the current folder), else the user's cache."""
    return Path(os.environ.get("MAML_CACHE_DIR") or Path.home() / ".cache" / "negative-lr-maml")


def _cached(cache_dir, name, root, signature, build):
    """`build()` -> (images, labels, class names), kept in `cache_dir` under `name` and the folder,
    with the source files' `signature`: a cache whose files changed, or that is truncated or foreign,
    is rebuilt. Decoding JPEGs or PNGs is slow; loading the cache is not."""
    cache = None
    if cache_dir is not None:
        key = hashlib.sha1(str(root.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:12]
        cache = Path(cache_dir) / f"{name}-{key}.pt"
        note_removed(remove_stale_temporaries(cache_dir), cache_dir, "a killed process")  # ~1 GB each
        if cache.exists():
            try:
                cached = torch.load(cache, weights_only=True)
                if cached["signature"] == signature:
                    return cached["images"].numpy(), cached["labels"].numpy(), cached["classes"]
            except Exception:
                pass  # truncated or foreign cache: rebuild it below
    images, labels, names = build()
    if cache is not None:
        try:
            entry = {"signature": signature, "images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}
            atomic_write(cache, lambda tmp: torch.save({**entry, "classes": names}, tmp))
        except WriteError as e:
            print(f"note: {e}; the image cache is skipped, so the next run decodes again")
    return images, labels, names


def _load_image_files(root, split, image_size, layout, cache_dir, progress):
    """(images, labels, class names, class folders left out) of a split in the Ravi or folders layout."""
    files, names_per_image, left_out = (
        _folder_files(root, split) if layout == "folders" else (*_ravi_files(root, split), [])
    )
    index_file = root / f"{split}.csv" if layout == "ravi" else None
    signature = _signature(files + ([index_file] if index_file else []))

    def build():
        names = sorted(set(names_per_image))
        class_of = {n: i for i, n in enumerate(names)}
        labels = np.array([class_of[n] for n in names_per_image], dtype=np.int64)
        images = _decode_all(files, image_size, "RGB", progress, f"decoding {split} images")
        # Stable sort by class keeps each class's own file order (CSV order, or sorted file names).
        order = np.argsort(labels, kind="stable")
        return images[order], labels[order], names

    images, labels, names = _cached(cache_dir, f"{layout}-{split}-{image_size}px", root, signature, build)
    return images, labels, names, left_out, [str(f.resolve()) for f in files]


# ----------------------------------------------------------------------------------------------
# Omniglot as it ships: images_background/ and images_evaluation/, <Alphabet>/<characterNN>/*.png
# ----------------------------------------------------------------------------------------------


def _visible_dirs(folder):
    """Sub-folders, sorted, without hidden entries (.DS_Store and friends are files, but be safe)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def omniglot_split_kind(root):
    """'vinyals' when the folder holds Vinyals et al.'s split files (as distributed with the
    prototypical-networks code), else 'lake' (Lake et al.'s background / evaluation division)."""
    split_dir = Path(root) / "splits" / "vinyals"
    return "vinyals" if all((split_dir / f"{s}.txt").exists() for s in SPLITS) else "lake"


def _omniglot_characters(root, part):
    """'Alphabet/characterNN' of every character of one part of Omniglot, sorted."""
    if not (root / part).is_dir():
        raise DataError(
            f"{root} is in Omniglot's layout but has no {part} folder; expected {root / part}/<Alphabet>/<character>"
        )
    return [f"{a.name}/{c.name}" for a in _visible_dirs(root / part) for c in _visible_dirs(a)]


def _vinyals_classes(root, split, rotations):
    """(character, degrees) per line 'Alphabet/characterNN/rotDDD' of splits/vinyals/<split>.txt."""
    path = root / "splits" / "vinyals" / f"{split}.txt"
    classes = []
    for line in read_text_lines(path):
        parts = line.strip().split("/")
        if not line.strip():
            continue
        if len(parts) != 3 or not parts[2].startswith("rot") or not parts[2][3:].isdigit():
            raise DataError(f"{path} has a line {line.strip()!r}; expected lines like Alphabet/character01/rot090")
        classes.append((f"{parts[0]}/{parts[1]}", int(parts[2][3:])))
    if not rotations:  # one class per character, unrotated
        classes = sorted({(character, 0) for character, _ in classes})
    return classes


def _lake_classes(root, split, rotations):
    """Background characters for training, a fixed seeded 15% of them held out for validation (whole
    characters, so no rotation of a validation character is trained on), evaluation characters for test."""
    if split == "test":
        characters = _omniglot_characters(root, "images_evaluation")
    else:
        background = _omniglot_characters(root, "images_background")
        order = np.random.default_rng(OMNIGLOT_VAL_SEED).permutation(len(background))
        n_val = max(1, round(OMNIGLOT_VAL_FRACTION * len(background)))
        held_out = set(order[:n_val].tolist())
        characters = [c for i, c in enumerate(background) if (i in held_out) == (split == "val")]
    return [(c, degrees) for c in characters for degrees in ((0, 90, 180, 270) if rotations else (0,))]


def _omniglot_files(root, character):
    """The image files of one character, from whichever part of Omniglot holds it."""
    for part in OMNIGLOT_PARTS:
        folder = root / part / character
        if folder.is_dir():
            files = sorted(
                f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
            )
            if not files:
                raise DataError(f"{folder} holds no images; expected Omniglot's .png files")
            return files
    raise DataError(
        f"character {character} is in the split files but in neither {' nor '.join(OMNIGLOT_PARTS)} of {root}"
    )


def check_omniglot_files(root):
    """Every character that Omniglot's split files name has images in `root` (fetch.py, before a fetched
    copy counts as the dataset)."""
    root = Path(root)
    for split in SPLITS if omniglot_split_kind(root) == "vinyals" else ():
        for character in sorted({c for c, _ in _vinyals_classes(root, split, rotations=False)}):
            _omniglot_files(root, character)
    for part in OMNIGLOT_PARTS:
        _omniglot_characters(root, part)


def _load_omniglot(root, split, image_size, rotations, cache_dir, progress):
    """One split of Omniglot: 1 channel, strokes bright (the PNGs have black strokes on white), each
    (character, rotation) a class named 'Alphabet/characterNN/rotDDD', classes sorted by name."""
    kind = omniglot_split_kind(root)
    rotations = kind == "vinyals" if rotations is None else rotations
    classes = sorted((_vinyals_classes if kind == "vinyals" else _lake_classes)(root, split, rotations))
    files = {c: _omniglot_files(root, c) for c in sorted({c for c, _ in classes})}
    index = [root / "splits" / "vinyals" / f"{split}.txt"] if kind == "vinyals" else []
    signature = _signature([f for fs in files.values() for f in fs] + index)

    def build():
        flat = [f for fs in files.values() for f in fs]
        decoded = 255 - _decode_all(flat, image_size, "L", progress, f"decoding Omniglot {split} images")
        start, by_character = 0, {}
        for character, fs in files.items():
            by_character[character] = decoded[start : start + len(fs)]
            start += len(fs)
        # np.rot90 turns counter-clockwise, as PIL's rotate(degrees) in the prototypical-networks code.
        images = [np.rot90(by_character[c], k=degrees // 90, axes=(2, 3)) for c, degrees in classes]
        labels = np.concatenate([np.full(len(im), i, dtype=np.int64) for i, im in enumerate(images)])
        names = [f"{c}/rot{degrees:03d}" for c, degrees in classes]
        return np.ascontiguousarray(np.concatenate(images)), labels, names

    name = f"omniglot-{kind}-{split}-{image_size}px-rot{int(rotations)}"
    return _cached(cache_dir, name, root, signature, build)


def dataset_defaults(root, image_size=None, rotations=None):
    """The settings a dataset folder implies where the flags leave them open: the image size (28 px for
    Omniglot, 84 for everything else), whether Omniglot's rotations are classes (on for the vinyals
    split), and which Omniglot split is used (None for other data)."""
    omniglot = root is not None and detect_layout(root) == "omniglot"
    if not omniglot:
        if rotations is not None:
            raise DataError("--rotations applies to Omniglot only (a folder with images_background/images_evaluation)")
        return {"image_size": image_size or 84, "rotations": None, "omniglot_split": None}
    kind = omniglot_split_kind(root)
    return {
        "image_size": image_size or OMNIGLOT_SIZE,
        "rotations": kind == "vinyals" if rotations is None else rotations,
        "omniglot_split": kind,
    }


def make_split(images, labels, classes, left_out=()):
    """Bundle a split: uint8 images [n,3,H,W], int64 class ids [n], class names, and an index table
    `by_class` [classes, most images of a class] (padded with -1) that lets the sampler pick images
    of a class without leaving the device. `left_out` names class folders that were not loaded."""
    images = torch.as_tensor(images)
    labels = torch.as_tensor(labels, dtype=torch.long)
    counts = torch.bincount(labels, minlength=len(classes))
    by_class = torch.full((len(classes), int(counts.max())), -1, dtype=torch.long)
    for c in range(len(classes)):
        idx = (labels == c).nonzero().flatten()
        by_class[c, : len(idx)] = idx
    return {
        "images": images,
        "labels": labels,
        "classes": list(classes),
        "counts": counts,
        "by_class": by_class,
        "left_out": list(left_out),
    }


def split_to(split, device):
    """The split (or any dict of tensors, e.g. normalisation statistics) on `device`."""
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in split.items()}


def load_split(root, split, image_size=84, cache_dir="default", progress=True, rotations=None):
    """Load one split ('train', 'val' or 'test') of a dataset folder in any supported layout.
    `rotations` is Omniglot's (None: its split's default, see `dataset_defaults`)."""
    if split not in SPLITS:
        raise DataError(f"split should be one of {', '.join(SPLITS)}, not {split!r}")
    root = Path(root)
    layout = detect_layout(root, split)
    if cache_dir == "default":
        cache_dir = default_cache_dir()
    elif cache_dir == "none":
        cache_dir = None
    left_out, files = [], []
    if layout in ("ravi", "folders"):
        images, labels, names, left_out, files = _load_image_files(root, split, image_size, layout, cache_dir, progress)
    elif layout == "omniglot":
        images, labels, names = _load_omniglot(root, split, image_size, rotations, cache_dir, progress)
    elif layout == "pickle":
        images, labels, names = _load_pickle(root, split, image_size)
    else:
        images, labels, names = _load_hdf5(root, split, image_size)
    if len(names) == 0 or len(images) == 0:
        raise DataError(f"the {split} split of {root} is empty")
    return {**make_split(images, labels, names, left_out), "files": files}


def load_splits(
    root, splits, image_size=84, cache_dir="default", synthetic_per_class=600, seed=0, progress=True, rotations=None
):
    """{split: split} for each name in `splits`: from the dataset folder `root`, or from the built-in
    synthetic dataset (`synthetic_split`, below) when `root` is None."""
    if root is None:
        return {split: synthetic_split(split, image_size, synthetic_per_class, seed) for split in splits}
    loaded = {split: load_split(root, split, image_size, cache_dir, progress, rotations) for split in splits}
    check_no_leakage(loaded, root)
    return loaded


def file_keys(files):
    """{(device, inode): path} of image files: one file under two names (a hard link, a symlink) is one key."""
    keys = {}
    for f in files:
        st = os.stat(f)
        keys.setdefault((st.st_dev, st.st_ino), f)
    return keys


WHAT_LEAKS = (("classes", "class"), ("files", "image"))


def check_no_leakage(splits, root):
    """Refuse a class, or an image file, that is in two splits: few-shot test classes must be unseen in
    training, and a test.csv copied from train.csv, or naming train.csv's images under other labels,
    would otherwise give a silently inflated test accuracy."""
    names = list(splits)
    # {key: name}: a class by its name, an image file by its inode (a hard link is the same file)
    keys = {
        name: ({c: c for c in split["classes"]}, file_keys(split.get("files", []))) for name, split in splits.items()
    }
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            for (what, kind), ours, theirs in zip(WHAT_LEAKS, keys[first], keys[second], strict=True):
                shared = sorted(ours.keys() & theirs.keys())
                if shared:
                    one = printable(ours[shared[0]] if what == "classes" else Path(ours[shared[0]]).name)
                    many = f" ({len(shared)} {what} are)" if len(shared) > 1 else ""
                    raise DataError(
                        f"{kind} {one} is in both the {first} and the {second} split of {root}{many}; each {kind} "
                        f"must belong to one split"
                    )


# ----------------------------------------------------------------------------------------------
# Synthetic dataset: glyphs that a network has to learn to recognise
# ----------------------------------------------------------------------------------------------


def _glyph_templates(n, generator, size=48, strokes=4):
    """Each class is a random glyph: a few thick strokes (line segments) joined end to end, like a
    handwritten character. Returned as [n, 1, size, size] masks in [0, 1]."""
    pts = torch.rand(n, strokes + 1, 2, generator=generator) * 1.4 - 0.7
    coords = torch.linspace(-1, 1, size)
    grid = torch.stack(torch.meshgrid(coords, coords, indexing="xy"), -1).view(1, 1, size * size, 2)
    a, b = pts[:, :-1, None, :], pts[:, 1:, None, :]  # [n, strokes, 1, 2]
    ab = b - a
    t = (((grid - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-6)).clamp(0, 1)
    dist = (grid - (a + t[..., None] * ab)).norm(dim=-1).min(dim=1).values  # [n, size*size]
    return (1 - ((dist - 0.08) / 0.04).clamp(0, 1)).view(n, 1, size, size)


@functools.lru_cache(maxsize=8)  # drawn once per process: bench.py and the tests ask for the same ones again
def synthetic_split(split, image_size=84, per_class=600, seed=0):
    """A Mini-ImageNet-shaped split (64 / 16 / 20 classes) of glyph images, deterministic in `seed`. The
    split is shared with every later call with the same arguments: read it, never change it in place.

    A class is a glyph shape; everything else is nuisance, drawn afresh for every image: the glyph's
    position, scale and rotation, its colour and the background colour, a second random glyph
    (from no class) as clutter, and pixel noise. So class identity is a shape that has to be learned:
    a randomly initialised Conv-4 scores near chance on it (tested)."""
    if split not in SYNTHETIC_CLASSES:
        raise DataError(f"split should be one of {', '.join(SPLITS)}, not {split!r}")
    n_classes = SYNTHETIC_CLASSES[split]
    g = torch.Generator().manual_seed(seed * 1000 + SPLITS.index(split))
    templates = _glyph_templates(n_classes, g)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    images = torch.empty(len(labels), 3, image_size, image_size, dtype=torch.uint8)
    for start in range(0, len(labels), 2048):  # chunks keep memory flat at 84x84
        y = labels[start : start + 2048]
        n = len(y)
        clutter = _glyph_templates(n, g, strokes=2)
        masks = []
        for shapes, scale_range, shift in ((templates[y], (0.75, 1.05), 0.25), (clutter, (0.4, 0.7), 0.6)):
            angle = (torch.rand(n, generator=g) - 0.5) * (math.pi / 3)
            scale = torch.empty(n).uniform_(*scale_range, generator=g)
            cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
            theta = torch.stack(
                [
                    torch.stack([cos, -sin, (torch.rand(n, generator=g) - 0.5) * 2 * shift], -1),
                    torch.stack([sin, cos, (torch.rand(n, generator=g) - 0.5) * 2 * shift], -1),
                ],
                1,
            )
            grid = F.affine_grid(theta, (n, 1, image_size, image_size), align_corners=False)
            masks.append(F.grid_sample(shapes, grid, align_corners=False, padding_mode="zeros"))
        background = torch.rand(n, 3, 1, 1, generator=g)
        # Foreground colours far enough from the background that the glyph is always visible.
        direction = torch.where(background > 0.5, -1.0, 1.0)
        foreground = background + direction * torch.empty(n, 3, 1, 1).uniform_(0.35, 0.5, generator=g)
        clutter_colour = torch.rand(n, 3, 1, 1, generator=g)
        x = background + masks[1] * 0.6 * (clutter_colour - background)
        x = x + masks[0] * (foreground - x)
        x = x + 0.06 * torch.randn(x.shape, generator=g)
        images[start : start + n] = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return make_split(images, labels, [f"glyph{split}{i:03d}" for i in range(n_classes)])


# ----------------------------------------------------------------------------------------------
# Normalisation and episodes
# ----------------------------------------------------------------------------------------------


def channel_stats(split):
    """Per-channel mean and std of a split's pixels in [0, 1] (use the training split)."""
    images = split["images"]
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros(images.shape[1], dtype=torch.float64)
    for start in range(0, len(images), 4096):
        x = images[start : start + 4096].double() / 255
        total += x.sum((0, 2, 3)).cpu()
        total_sq += (x * x).sum((0, 2, 3)).cpu()
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (total_sq / n - mean**2).clamp_min(1e-12).sqrt()
    return {"mean": mean.float(), "std": std.float()}


def normalize(x_uint8, norm, dtype=torch.float32):
    mean = norm["mean"].to(x_uint8.device, dtype).view(-1, 1, 1)
    std = norm["std"].to(x_uint8.device, dtype).view(-1, 1, 1)
    return (x_uint8.to(dtype) / 255 - mean) / std


def check_episode_shape(split, ways, shots, queries, name="split"):
    """Raise DataError unless every task of this shape can be drawn from `split`."""
    n_classes = len(split["classes"])
    if ways > n_classes:
        left_out = split.get("left_out", [])
        why = (
            f" ({len(left_out)} more class folders hold their images in subfolders, e.g. {left_out[0]})"
            if left_out
            else ""
        )
        raise DataError(f"the {name} has {n_classes} classes{why}, fewer than the {ways} ways asked for")
    need = shots + queries
    small = int(split["counts"].min())
    if small < need:
        c = int(split["counts"].argmin())
        raise DataError(
            f"class {split['classes'][c]} of the {name} has {small} images, fewer than the "
            f"{need} needed for {shots} shots + {queries} queries"
        )


def sample_classes(split, tasks, ways, generator):
    """[tasks, ways] class ids, distinct within each task."""
    n_classes = split["counts"].numel()
    keys = torch.rand(tasks, n_classes, generator=generator, device=generator.device)
    return keys.argsort(dim=1)[:, :ways].to(split["by_class"].device)


def sample_episodes(split, *, tasks, ways, shots, queries, generator, norm=None, classes=None, dtype=torch.float32):
    """A meta-batch of N-way K-shot tasks, drawn on the device that `generator` and the split live on.

    Each task takes `ways` distinct classes (or the given `classes` [tasks, ways]), and per class
    `shots` support and `queries` query images, all distinct. The labels 0..ways-1 are randomly
    permuted per task, so a label never means the same class twice. Returns a dict with
    support_x [tasks, ways*shots, channels, H, W], support_y [tasks, ways*shots], query_x, query_y and
    classes [tasks, ways] (class ids in label order: classes[t, label]), and the images' indices in
    the split (support_idx, query_idx). Images are normalised floats when `norm` is given, else uint8."""
    if classes is None:
        classes = sample_classes(split, tasks, ways, generator)
    by_class, counts = split["by_class"], split["counts"]
    dev = by_class.device
    per_class = shots + queries
    # Random keys, with the padding slots of smaller classes pushed to the end, then the first
    # per_class positions: a uniform draw without replacement from each chosen class.
    keys = torch.rand(tasks, ways, by_class.shape[1], generator=generator, device=generator.device).to(dev)
    slots = torch.arange(by_class.shape[1], device=dev)
    keys = keys.masked_fill(slots >= counts[classes][..., None], 2.0)
    picks = by_class[classes[..., None], keys.argsort(dim=-1)[..., :per_class]]  # [tasks, ways, K+Q]
    label_of_position = torch.rand(tasks, ways, generator=generator, device=generator.device).argsort(1).to(dev)
    # classes in label order: the class at position j gets label label_of_position[j]
    classes_by_label = torch.empty_like(classes).scatter_(1, label_of_position, classes)
    labels = label_of_position[..., None].expand(tasks, ways, per_class)
    images = split["images"]

    def take(idx):
        x = images[idx.reshape(-1)].view(tasks, idx.shape[1] * idx.shape[2], *images.shape[1:])
        return normalize(x, norm, dtype) if norm is not None else x

    support_idx, query_idx = picks[..., :shots], picks[..., shots:]
    return {
        "support_x": take(support_idx),
        "support_y": labels[..., :shots].reshape(tasks, -1),
        "query_x": take(query_idx),
        "query_y": labels[..., shots:].reshape(tasks, -1),
        "classes": classes_by_label,
        "support_idx": support_idx.reshape(tasks, -1),
        "query_idx": query_idx.reshape(tasks, -1),
    }


def fixed_episodes(split, *, tasks, chunk, seed, ways, shots, queries, norm=None, dtype=torch.float32):
    """`tasks` fixed tasks (the same ones for a seed), drawn in meta-batches of at most `chunk` tasks
    from one generator seeded with `seed` on the split's device: validation and test tasks, in pieces
    that bound the memory their adaptation takes."""
    generator = torch.Generator(split["images"].device).manual_seed(seed)
    for start in range(0, tasks, chunk):
        size = min(chunk, tasks - start)
        yield sample_episodes(
            split, tasks=size, ways=ways, shots=shots, queries=queries, generator=generator, norm=norm, dtype=dtype
        )


def pixel_digest(split):
    """A digest of a split's decoded images and their labels: other images under the same class names and
    counts (regenerated data) give another."""
    h = hashlib.sha256()
    h.update(split["images"].contiguous().numpy())
    h.update(split["labels"].contiguous().numpy())
    return h.hexdigest()[:16]


def identity(splits, root):
    """What identifies a run's data, wherever it lies: its layout, and per split the number of classes
    and images, a digest of the class names, the channels, the image size and a digest of the pixels. A
    moved folder keeps it; other data (or the same data resized, or in other splits) does not."""

    def of(split):
        names = "\n".join(map(printable, split["classes"])).encode("utf-8", "surrogateescape")
        images = split["images"].shape
        return {"classes": len(split["classes"]), "images": int(images[0]), "channels": int(images[1]),
                "image_size": int(images[-1]), "class_names": hashlib.sha1(names).hexdigest()[:16],
                "pixels": pixel_digest(split)}  # fmt: skip

    return {"layout": "synthetic" if root is None else detect_layout(root), **{n: of(s) for n, s in splits.items()}}


if __name__ == "__main__":  # python data.py fetch NAME [DIR]: fetch.py does the work
    import cli
    import fetch

    cli.run_cli(fetch.main)
