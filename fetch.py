"""Datasets by name: `--data omniglot` and `--data mini-imagenet` fetch the dataset on first use,
verify it and keep it in the data home; `python data.py fetch NAME [DIR]` does the fetching alone.

The downloads go through pooch (imported only here, only when something is fetched), which streams a
URL to a file with a progress bar. What it lacks is added here: every file lands in a staging folder
(`.partial/`) and joins the dataset only after its checksum and data.py's checks of its content pass;
an HTML page (a source that refused the download) is named as such; one process fetches a dataset at a
time (the others wait, as torchrun's do); a dataset whose folder holds its record (`fetched.json`:
what was fetched, from where, when, with which checksums) is never fetched again, with no request made.
"""

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import cli
import data
from cli import ConfigError, DataError, atomic_write, json_text

HOME_VARIABLE = "MAML_DATA_DIR"
RECORD = "fetched.json"
STAGING = ".partial"
SPLITS_COMMIT = "c9bb4d258267c11cb6e23f0a19242d24ca98ad8a"  # jakesnell/prototypical-networks (MIT)
OMNIGLOT_ZIPS = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"  # torchvision's source
VINYALS = (
    f"https://raw.githubusercontent.com/jakesnell/prototypical-networks/{SPLITS_COMMIT}/data/omniglot/splits/vinyals"
)
ZENODO = "https://zenodo.org/record/7978538/files"  # learn2learn's record of its Mini-ImageNet pickles
DROPBOX = {"train": "9g8c6w345s2ek03", "validation": "ip1b7se3gij3r1b", "test": "ye9jeb5tyz0x01b"}


VINYALS_SHA256 = {
    "train": "984522c194c30fb678ce53304a160a42faf5403ad4f9a67010f32dd3a35738e0",
    "val": "11f99e54faee3e26f53d3231c1cceac5bf7b8730e9be31cb6dab256551dc0c1a",
    "test": "845264cc5c156180828ccf17915668b17ee21424d0170df6e7d81676aa5d1204",
}


def pickle_file(split):
    name = f"mini-imagenet-cache-{split}.pkl"
    urls = [f"{ZENODO}/{name}", f"https://www.dropbox.com/s/{DROPBOX[split]}/{name}?dl=1"]
    return {"name": name, "urls": urls, "checksum": None, "split": {"validation": "val"}.get(split, split)}


# What each name fetches: every file with the URLs to try in order and its checksum (None: take the one
# the record API publishes, if any), and what data.py must then find. Tests point these at a local server.
SOURCES = {
    "omniglot": {
        "files": [
            {"name": f"{part}.zip", "urls": [f"{OMNIGLOT_ZIPS}/{part}.zip"], "checksum": f"md5:{md5}", "unzip": True}
            for part, md5 in (
                ("images_background", "68d2efa1b9178cc56df9314c21c6e718"),
                ("images_evaluation", "6b91aef0f799c5bb55b94e3f2daec811"),
            )  # fmt: skip
        ]
        + [
            {"name": f"splits/vinyals/{split}.txt", "urls": [f"{VINYALS}/{split}.txt"], "checksum": f"sha256:{sha}"}
            for split, sha in VINYALS_SHA256.items()
        ],
        "record_api": None,
        "expected": None,
        "channels": 1,
        "about": "Omniglot (Lake et al.), MIT licence, under 20 MB, with Vinyals et al.'s split files (MIT)",
    },
    "mini-imagenet": {
        "files": [pickle_file(split) for split in ("train", "validation", "test")],
        "record_api": "https://zenodo.org/api/records/7978538",
        "expected": {"classes": {"train": 64, "val": 16, "test": 20}, "per_class": 600, "image_size": 84},
        "channels": 3,
        "about": "Mini-ImageNet as learn2learn's pickles (ImageNet images: non-commercial research and education "
        "only), about 1.3 GB",
    },
}


def data_home():
    """Where datasets fetched by name live: $MAML_DATA_DIR (an empty value counts as unset), else a folder
    in the user's cache; absolute, so that a checkpoint's record of it holds from any directory."""
    return Path(os.environ.get(HOME_VARIABLE) or Path.home() / ".cache" / "negative-lr-maml" / "data").absolute()


def resolve_data(value, quiet=False, progress=True, fetcher=True):
    """--data as (the folder to read, the dataset's name or None). A name is fetched first if its folder in
    the data home holds no verified copy (by this process if `fetcher`, else it waits for the one that
    is: torchrun's rank 0); a file or folder of that name in the working directory is a path."""
    if value is None or value not in SOURCES:
        return value, None
    say = (lambda text: None) if quiet else print
    if Path(value).exists():
        say(f"--data {value}: ./{value} here is taken as the path (the dataset by that name is {data_home() / value})")
        return value, None
    folder = fetch(value, quiet=quiet, progress=progress) if fetcher else wait_for(data_home() / value)
    say(f"--data {value}: the dataset in {folder} (verified {verified(folder)['fetched_at']})")
    return str(folder), value


def checkpoint_data(value, config):
    """The --data of a script that reads a checkpoint: the value given, else the folder the checkpoint
    names, else its dataset's name (an imported model's, fetched on first use); None: the synthetic data."""
    return value if value is not None else config["data"] or config["data_name"]


def refuse_other_channels(value, channels):
    """Before a name is fetched (1.3 GB for Mini-ImageNet): a checkpoint of `channels` input channels cannot
    read that dataset."""
    if value in SOURCES and not Path(value).exists() and SOURCES[value]["channels"] != channels:
        raise ConfigError(
            f"--data {value} has {SOURCES[value]['channels']} channel(s) and this checkpoint takes {channels}; "
            "give the data it was trained on"
        )


def verified(folder):
    """The record of a verified dataset in `folder` whose files are all there, else None (no record, a
    damaged one, or a file gone since: the dataset is then fetched again). The record is trusted: what it
    lists was checked when it was written."""
    try:
        record = json.loads((Path(folder) / RECORD).read_text())
        names = [entry["file"].removesuffix(".zip") for entry in record["files"]]
        if isinstance(record["fetched_at"], str) and all((Path(folder) / n).exists() for n in names):
            return record
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # damaged
    return None  # a file gone since


def wait_for(folder):
    """Wait until another process (torchrun's rank 0) has fetched the dataset into `folder`."""
    while verified(folder) is None:
        time.sleep(1)
    return folder


def fetch(name, folder=None, quiet=False, progress=True):
    """The folder of dataset `name` (default: in the data home), fetched and verified into it unless its
    record says it already was. One process at a time: another one waits for it."""
    folder = Path(folder or data_home() / name)
    if verified(folder):
        return folder  # verified once: no request is made
    with fetching(folder, name, quiet):
        if verified(folder):  # another process fetched it while this one waited
            return folder
        staging = folder / STAGING
        shutil.rmtree(staging, ignore_errors=True)  # what an interrupted fetch left: started over
        staging.mkdir(parents=True)
        try:
            files = fetch_files(name, SOURCES[name], staging, quiet, progress)
            for entry in SOURCES[name]["files"]:
                move_into(staging, folder, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        record = {"name": name, "fetched_at": now(), "about": SOURCES[name]["about"], "files": files}
        atomic_write(folder / RECORD, lambda tmp: tmp.write_text(json_text(record)))
    if not quiet:
        print(f"{name}: fetched and verified in {folder} (what, from where and checksums: {folder / RECORD})")
    return folder


@contextlib.contextmanager
def fetching(folder, name, quiet):
    """An exclusive lock on `folder` for fetching: a second process waits (and says for whom) until the
    first is done; the kernel releases it if its holder dies."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".fetch.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"cannot fetch {name} into {folder}: {e.strerror}") from None
    say = (lambda holder: None) if quiet else (
        lambda holder: print(f"waiting for process {holder}, which is fetching {name} into {folder}", flush=True)
    )  # fmt: skip
    try:
        cli.hold_lock(fd, folder / ".fetch.lock", say)
        yield
    finally:
        os.close(fd)


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def fetch_files(name, source, staging, quiet, progress):
    """Download and check every file of `source` into `staging`; returns what the record says of each."""
    published = published_checksums(source, staging, quiet)
    files = []
    for entry in source["files"]:
        checksum = entry.get("checksum") or published.get(entry["name"])
        url, path = download(name, source, entry, checksum, staging, progress)
        digest = file_digest(path, "sha256")
        files.append({"file": entry["name"], "url": url, "checksum": checksum, "sha256": digest})
        if checksum is None and not quiet:
            print(f"{entry['name']}: no published checksum; accepted after data.py's checks, SHA-256 {digest}")
        if entry.get("unzip"):
            with zipfile.ZipFile(path) as archive:
                archive.extractall(staging)  # its members were checked in `check_file`
            path.unlink()
    if source["expected"] is None:
        try:
            data.check_omniglot_files(staging)
        except DataError as e:
            raise DataError(f"the fetched {name} is incomplete: {str(e).replace(str(staging), name)}") from None
    return files


def published_checksums(source, staging, quiet):
    """{file name: 'md5:...'} from the record API of the source (Zenodo's), or {} where it cannot be read."""
    if not source["record_api"]:
        return {}
    try:
        path = retrieve(source["record_api"], staging, "record-api.json", progress=False)
        entries = json.loads(path.read_text())["files"]
        return {e["key"]: e["checksum"] for e in entries if str(e.get("checksum", "")).startswith("md5:")}
    except (DataError, ValueError, KeyError, TypeError) as e:
        if not quiet:
            print(f"note: no published checksums ({str(e)[:160]}); the files are checked by data.py's checks alone")
        return {}


def download(name, source, entry, checksum, staging, progress):
    """(URL, path) of the first URL of `entry` that gives a file that is no HTML page, has `checksum` (when
    one is known) and passes `check_file`; each refused file is removed."""
    failures = []
    for url in entry["urls"]:
        try:
            path = retrieve(url, staging, entry["name"] + ".download", progress)
            if is_html(path):
                raise DataError(f"{url} gave an HTML page, not {WHAT[Path(entry['name']).suffix]}: the source refused "
                                "the download")  # fmt: skip
            algorithm, _, digest = (checksum or "::").partition(":")
            if checksum is not None and file_digest(path, algorithm) != digest:
                raise DataError(f"{url} gave a file whose {algorithm} is not the expected {checksum}")
            check_file(name, source, entry, path, url)
        except DataError as e:
            Path(staging / (entry["name"] + ".download")).unlink(missing_ok=True)
            failures.append(str(e))
            continue
        final = staging / entry["name"]
        final.parent.mkdir(parents=True, exist_ok=True)
        return url, path.replace(final)
    raise DataError(
        f"cannot fetch {entry['name']}: {'; '.join(failures)}. Without a network, put {entry['name']} "
        f"(from {entry['urls'][0]}) into a folder by hand and pass that folder as --data (README, Getting the data)"
    )


def retrieve(url, staging, name, progress):
    """One URL streamed to `staging/name` by pooch, with a progress bar of bytes and rate."""
    try:
        import pooch
        import requests
    except ImportError:
        raise ConfigError(
            "fetching a dataset needs pooch (pip install pooch==1.9.0), which this Python lacks; or fetch it on "
            "another machine (python data.py fetch NAME DIR), copy DIR here and pass it as --data"
        ) from None
    pooch.get_logger().setLevel("WARNING")
    downloader = pooch.HTTPDownloader(progressbar=progress, timeout=60)
    try:
        return Path(pooch.retrieve(url, None, fname=name, path=staging, downloader=downloader))
    except requests.exceptions.HTTPError as e:
        raise DataError(f"{url} answered HTTP {e.response.status_code}") from None
    except requests.exceptions.ChunkedEncodingError:
        raise DataError(f"{url}: the body ended early, before the size the server announced") from None
    except requests.exceptions.RequestException as e:
        if isinstance(e, requests.exceptions.Timeout) or "timed out" in str(e).lower():  # a stalled body too
            reason = "no answer within 60 s"
        elif isinstance(e, requests.exceptions.ConnectionError):
            reason = "no connection (refused, or no network)"
        else:
            reason = f"the download failed ({type(e).__name__})"
        raise DataError(f"{url}: {reason}") from None


WHAT = {".pkl": "the pickle", ".zip": "the zip archive", ".txt": "the split file"}


def is_html(path):
    """An HTML page where a data file should be: what a source sends when it refuses (a login, a quota)."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<!--")) or b"<html" in head


def file_digest(path, algorithm):
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_file(name, source, entry, path, url):
    """What a downloaded file holds, checked: a zip whose members all land inside the dataset's folder; a
    pickle that data.py reads and that holds its split's classes and images exactly."""
    if entry.get("unzip"):
        try:
            with zipfile.ZipFile(path) as archive:
                members = archive.namelist()
        except zipfile.BadZipFile:
            raise DataError(f"{url} gave a file that is not a zip archive") from None
        outside = [m for m in members if Path(m).is_absolute() or ".." in Path(m).parts]
        if outside:
            raise DataError(f"{url} gave a zip holding {outside[0]!r}, which would land outside the dataset's folder")
    expected = source["expected"]
    if expected is None or not entry["name"].endswith(".pkl"):
        return
    try:
        shape, per_class = data.pickle_contents(path)
    except DataError as e:
        raise DataError(f"{url} gave a file that data.py refuses: {str(e).replace(str(path), entry['name'])}") from None
    size, classes, split = expected["image_size"], expected["classes"][entry["split"]], entry["split"]
    counts = set(per_class.values())
    if shape[1:] != (size, size, 3) or len(per_class) != classes or counts != {expected["per_class"]}:
        raise DataError(
            f"{url} gave {len(per_class)} classes of {sorted(counts)} images of shape {shape[1:]}; expected "
            f"{classes} classes of {expected['per_class']} {size}x{size} RGB images (the {split} split of {name})"
        )


def move_into(staging, folder, entry):
    """A checked file (or, for a zip, the folder it held) from the staging folder into the dataset's,
    readable by all as a file the user wrote would be (pooch leaves its downloads private)."""
    name = entry["name"].removesuffix(".zip") if entry.get("unzip") else entry["name"]
    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        shutil.rmtree(target)
    if (staging / name).is_file():
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging / name, 0o666 & ~umask)
    os.replace(staging / name, target)


def main(argv):
    parser = cli.argument_parser(
        "Fetch a dataset by name, verify it, and keep it for --data NAME: omniglot (the brendenlake/omniglot zips "
        "and Vinyals et al.'s split files) or mini-imagenet (learn2learn's pickles from Zenodo, else Dropbox)."
    )
    parser.add_argument("command", choices=["fetch"], help="what to do (fetch: download and verify)")
    parser.add_argument("name", choices=list(SOURCES), help="the dataset")
    parser.add_argument(
        "dir",
        nargs="?",
        help=f"where to keep it (default: ${HOME_VARIABLE}/NAME, else ~/.cache/negative-lr-maml/data/NAME)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (the messages stay)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = parser.parse_args(argv)
    start = time.time()
    folder = Path(args.dir or data_home() / args.name).absolute()
    if verified(folder):
        print(f"{args.name} is already fetched and verified in {folder} (delete {RECORD} there to fetch it again)")
        return folder
    fetch(args.name, folder, progress=not args.no_progress)
    print(f"{args.name}: done in {time.time() - start:.0f} s")
    return folder
