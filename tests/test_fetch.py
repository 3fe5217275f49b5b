"""fetch.py: datasets by name, fetched from a local HTTP server (standard library, 127.0.0.1, a thread) that
stands in for the sources, including their failures: a wrong checksum, an HTML page, a truncated body, a
404, a refused connection, a kill mid-download, two fetches at once. Every failure ends in one line with
nothing left that the loader would read."""

import hashlib
import http.server
import io
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cli
import data
import fetch
import maml
import probe
import run_folder
from conftest import ROOT, tiny_flags

SHARED_SPLITS = ROOT.parent / "shared" / "data" / "omniglot-vinyals-splits"
CLASSES, PER_CLASS = {"train": 3, "validation": 2, "test": 2}, 6


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.routes`: path -> (how, body). how: ok, html, truncated (half the promised bytes),
    stall (half, then nothing for a minute), paced (in four parts over about a second), gated (sent once the
    test sets `server.gate`)."""

    def do_GET(self):
        self.server.requested.append(self.path)
        how, body = self.server.routes.get(self.path, ("missing", b""))
        if how == "missing":
            self.send_error(404)
            return
        body = b"<!DOCTYPE html><html><body>Please sign in</body></html>" if how == "html" else body
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if how in ("truncated", "stall"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            time.sleep(60 if how == "stall" else 0)
            self.close_connection = True
            return
        if how == "gated":  # held until the test opens the gate
            self.server.gate.wait(60)
        parts = 4 if how == "paced" else 1
        for i in range(parts):
            self.wfile.write(body[i * len(body) // parts : (i + 1) * len(body) // parts])
            self.wfile.flush()
            time.sleep(0.3 if how == "paced" else 0)

    def log_message(self, *args):
        """Quiet: the test reads `server.requested`, not the server's log."""


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads, httpd.routes, httpd.requested, httpd.gate = True, {}, [], threading.Event()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def mini_imagenet_pickle(split, seed):
    rng = np.random.default_rng(seed)
    n = CLASSES[split]
    images = rng.integers(0, 256, (n * PER_CLASS, 84, 84, 3), dtype=np.uint8)
    classes = {f"n{seed:02d}{c:04d}": list(range(c * PER_CLASS, (c + 1) * PER_CLASS)) for c in range(n)}
    return pickle.dumps({"image_data": images, "class_dict": classes})


def serve_mini_imagenet(server, monkeypatch, how="ok", checksums=True, wrong=False):
    """Fixture pickles on the server (how: for every pickle URL), a record API like Zenodo's, and
    fetch.SOURCES pointing there. Returns the pickles by name."""
    pickles = {f"mini-imagenet-cache-{s}.pkl": mini_imagenet_pickle(s, i) for i, s in enumerate(CLASSES)}
    files = []
    for name, body in pickles.items():
        server.routes[f"/zenodo/{name}"] = server.routes[f"/dropbox/{name}"] = (how, body)
        md5 = hashlib.md5(body + (b"x" if wrong else b"")).hexdigest()
        files.append({"key": name, "checksum": f"md5:{md5}"})
    if checksums:
        server.routes["/api/records/1"] = ("ok", json.dumps({"files": files}).encode())
    source = {**fetch.SOURCES["mini-imagenet"], "record_api": f"{server.url}/api/records/1"}
    source["files"] = [{**f, "urls": [f"{server.url}/zenodo/{f['name']}", f"{server.url}/dropbox/{f['name']}"]}
                       for f in source["files"]]  # fmt: skip
    source["expected"] = {"classes": {"train": 3, "val": 2, "test": 2}, "per_class": PER_CLASS, "image_size": 84}
    monkeypatch.setitem(fetch.SOURCES, "mini-imagenet", source)
    return pickles


def refused(argv, capsys):
    """`python data.py fetch ...` in this process: its exit code 2 and its one line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(fetch.main, argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def nothing_readable(folder):
    assert not [p for p in folder.rglob("*") if p.suffix in (".pkl", ".png", ".txt", ".download")]
    assert not (folder / fetch.STAGING).exists() and not (folder / fetch.RECORD).exists()
    with pytest.raises(cli.DataError):
        data.detect_layout(folder)


def test_a_dataset_fetched_by_name_is_verified_recorded_and_trained_on(server, monkeypatch, tmp_path, capsys):
    pickles = serve_mini_imagenet(server, monkeypatch)
    monkeypatch.setenv(fetch.HOME_VARIABLE, str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    maml.main(tiny_flags(tmp_path / "run", "--data", "mini-imagenet", "--iterations", "1", "--eval-every", "1"))
    folder = tmp_path / "home" / "mini-imagenet"
    out = capsys.readouterr().out
    assert f"--data mini-imagenet: the dataset in {folder}" in out
    record = json.loads((folder / fetch.RECORD).read_text())
    assert [f["file"] for f in record["files"]] == list(pickles)
    for f in record["files"]:
        assert f["url"] == f"{server.url}/zenodo/{f['file']}" and f["checksum"].startswith("md5:")
        assert f["sha256"] == hashlib.sha256(pickles[f["file"]]).hexdigest()
    config = run_folder.load_checkpoint(tmp_path / "run" / "ckpt.pt")["config"]
    assert (config["data"], config["data_name"]) == (str(folder), "mini-imagenet")
    assert sorted(p.name for p in folder.iterdir()) == [".fetch.lock", fetch.RECORD, *sorted(pickles)]
    requests = len(server.requested)
    probe.main([str(tmp_path / "run" / "best.pt"), "--data", "mini-imagenet", "--iterations", "2", "--batch", "2",
                "--queries", "3", "--off-task", "any", "--no-progress"])  # fmt: skip
    (summary,) = (tmp_path / "run").glob("probe*.json")
    assert json.loads(summary.read_text())["settings"]["data"] == str(folder)
    assert len(server.requested) == requests  # fetched once, for both scripts


def test_a_fetched_dataset_is_never_fetched_again_even_with_the_server_down(server, monkeypatch, tmp_path):
    serve_mini_imagenet(server, monkeypatch)
    fetch.fetch("mini-imagenet", tmp_path / "mi", quiet=True)
    requests = len(server.requested)
    server.routes.clear()  # everything is a 404 now, and then nothing answers at all
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setitem(fetch.SOURCES["mini-imagenet"], "record_api", closed)
    assert fetch.fetch("mini-imagenet", tmp_path / "mi", quiet=True) == tmp_path / "mi"
    assert len(server.requested) == requests
    assert data.detect_layout(tmp_path / "mi") == "pickle"


def test_without_a_published_checksum_a_copy_is_accepted_after_the_full_checks(server, monkeypatch, tmp_path, capsys):
    serve_mini_imagenet(server, monkeypatch, checksums=False)  # the record API answers 404
    fetch.main(["fetch", "mini-imagenet", str(tmp_path / "mi")])
    out = capsys.readouterr().out
    assert "no published checksums" in out and "mini-imagenet-cache-train.pkl: no published checksum; accepted" in out
    assert [f["checksum"] for f in json.loads((tmp_path / "mi" / fetch.RECORD).read_text())["files"]] == [None] * 3


@pytest.mark.parametrize(
    "how, message",
    [
        ("wrong", "gave a file whose md5 is not the expected md5:"),
        ("html", "gave an HTML page, not the pickle: the source refused the download"),
        ("truncated", "the body ended early"),
        ("missing", "answered HTTP 404"),
    ],
)
def test_a_bad_download_ends_in_one_line_and_leaves_nothing_to_read(
    server, monkeypatch, tmp_path, capsys, how, message
):
    serve_mini_imagenet(server, monkeypatch, how="ok" if how == "wrong" else how, wrong=how == "wrong")
    line = refused(["fetch", "mini-imagenet", str(tmp_path / "mi"), "--no-progress"], capsys)
    assert line.startswith("error: cannot fetch mini-imagenet-cache-train.pkl: ") and message in line, line
    assert "/zenodo/" in line and "/dropbox/" in line and "by hand" in line  # both sources tried
    nothing_readable(tmp_path / "mi")


def test_a_pickle_that_holds_other_classes_than_the_source_should_is_refused(server, monkeypatch, tmp_path, capsys):
    serve_mini_imagenet(server, monkeypatch)
    monkeypatch.setitem(fetch.SOURCES["mini-imagenet"], "expected", {**fetch.SOURCES["mini-imagenet"]["expected"],
                                                                     "per_class": 600})  # fmt: skip
    line = refused(["fetch", "mini-imagenet", str(tmp_path / "mi"), "--no-progress"], capsys)
    assert "gave 3 classes of [6] images" in line and "expected 3 classes of 600 84x84 RGB images" in line
    nothing_readable(tmp_path / "mi")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_names_the_url_and_the_way_by_hand(monkeypatch, tmp_path, capsys):
    closed = f"http://127.0.0.1:{free_port()}"
    source = {**fetch.SOURCES["mini-imagenet"], "record_api": f"{closed}/api"}
    source["files"] = [{**f, "urls": [f"{closed}/{f['name']}"]} for f in source["files"]]
    monkeypatch.setitem(fetch.SOURCES, "mini-imagenet", source)
    line = refused(["fetch", "mini-imagenet", str(tmp_path / "mi"), "--no-progress"], capsys)
    assert (
        f"{closed}/mini-imagenet-cache-train.pkl: no connection" in line and "put mini-imagenet-cache-train.pkl" in line
    )
    nothing_readable(tmp_path / "mi")


FETCH_IN_A_PROCESS = """
import json, sys
sys.path.insert(0, sys.argv[1])
import fetch
fetch.SOURCES["mini-imagenet"] = json.loads(sys.argv[2])
fetch.fetch("mini-imagenet", sys.argv[3], quiet=False)
"""


def fetching_process(folder):
    source = json.dumps(fetch.SOURCES["mini-imagenet"])
    command = [sys.executable, "-c", FETCH_IN_A_PROCESS, str(ROOT), source, str(folder)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_fetch_killed_mid_download_leaves_nothing_read_as_data_and_the_next_one_starts_over(server, monkeypatch,
                                                                                              tmp_path):  # fmt: skip
    pickles = serve_mini_imagenet(server, monkeypatch, how="stall")
    process = fetching_process(tmp_path / "mi")
    staging = tmp_path / "mi" / fetch.STAGING
    deadline = time.time() + 60
    while not any(p.is_file() and p.stat().st_size > 0 and "api" not in p.name for p in staging.glob("*")):
        assert time.time() < deadline and process.poll() is None, "the download never began"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with pytest.raises(cli.DataError):  # the half file is not data, wherever the loader looks
        data.detect_layout(tmp_path / "mi")
    for name, body in pickles.items():
        server.routes[f"/zenodo/{name}"] = ("ok", body)
    fetch.fetch("mini-imagenet", tmp_path / "mi", quiet=True)
    assert not staging.exists() and (tmp_path / "mi" / fetch.RECORD).exists()
    for name, body in pickles.items():
        assert (tmp_path / "mi" / name).read_bytes() == body


def test_two_fetches_at_once_download_once_and_the_second_waits(server, monkeypatch, tmp_path):
    serve_mini_imagenet(server, monkeypatch, how="gated")
    first = fetching_process(tmp_path / "mi")
    deadline = time.time() + 60
    while not any(path.startswith("/zenodo/") for path in server.requested):  # the first is downloading
        assert time.time() < deadline and first.poll() is None, "the first fetch never began"
        time.sleep(0.05)
    second = fetching_process(tmp_path / "mi")
    said = second.stdout.readline()  # it blocks on the lock while the first holds it
    server.gate.set()
    outs = [p.communicate(timeout=120)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    assert said.startswith("waiting for process") and "fetched and verified" in outs[0], said
    downloads = [path for path in server.requested if path.startswith("/zenodo/")]
    assert sorted(downloads) == sorted(set(downloads)) and len(downloads) == 3  # each file once


def test_a_folder_of_that_name_here_is_a_path_and_the_line_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "omniglot").mkdir()
    monkeypatch.setenv(fetch.HOME_VARIABLE, "")  # empty: unset
    assert fetch.data_home() == Path.home() / ".cache" / "negative-lr-maml" / "data"
    assert fetch.resolve_data("omniglot") == ("omniglot", None)
    assert "--data omniglot: ./omniglot here is taken as the path" in capsys.readouterr().out
    assert fetch.resolve_data("some/folder") == ("some/folder", None) and fetch.resolve_data(None) == (None, None)


def test_a_pickle_that_asks_for_code_is_refused_unrun(tmp_path):
    class Bomb:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    (tmp_path / "mini-imagenet-cache-train.pkl").write_bytes(pickle.dumps({"image_data": Bomb(), "class_dict": {}}))
    with pytest.raises(cli.DataError, match="asks for posix.system, which no data file needs"):
        data.load_split(tmp_path, "train")
    assert not (tmp_path / "ran").exists()


def omniglot_zips(characters):
    """Omniglot's two zips for `characters` ('Alphabet/characterNN'): two tiny 1-bit PNGs each, the first
    30 alphabets in images_background, the rest in images_evaluation, as the real split divides them."""
    alphabets = sorted({c.split("/")[0] for c in characters})
    zips = {}
    for part in data.OMNIGLOT_PARTS:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for c in characters:
                if (alphabets.index(c.split("/")[0]) < 30) == (part == "images_background"):
                    for i in range(2):
                        png = io.BytesIO()
                        Image.fromarray(np.eye(8, dtype=bool) ^ (i == 1)).convert("1").save(png, "PNG")
                        archive.writestr(f"{part}/{c}/{i:02d}.png", png.getvalue())
        zips[f"{part}.zip"] = buffer.getvalue()
    return zips


@pytest.mark.skipif(not SHARED_SPLITS.is_dir(), reason="needs ../shared/data/omniglot-vinyals-splits")
def test_omniglot_fetched_from_the_real_split_files_loads_with_the_vinyals_split(server, monkeypatch, tmp_path):
    """The real split files, served as they are: the pinned SHA-256 digests in fetch.py are proven right."""
    lines = {s: (SHARED_SPLITS / f"{s}.txt").read_text().split() for s in data.SPLITS}
    characters = sorted({line.rsplit("/", 1)[0] for split in lines.values() for line in split})
    zips = omniglot_zips(characters)
    source = {**fetch.SOURCES["omniglot"], "files": []}
    for entry in fetch.SOURCES["omniglot"]["files"]:
        name = entry["name"]
        body = zips[name] if name in zips else (SHARED_SPLITS / Path(name).name).read_bytes()
        server.routes[f"/{name}"] = ("ok", body)
        checksum = f"md5:{hashlib.md5(body).hexdigest()}" if name in zips else entry["checksum"]  # the pins kept
        source["files"].append({**entry, "urls": [f"{server.url}/{name}"], "checksum": checksum})
    monkeypatch.setitem(fetch.SOURCES, "omniglot", source)
    fetch.main(["fetch", "omniglot", str(tmp_path / "omniglot"), "--no-progress"])
    assert data.omniglot_split_kind(tmp_path / "omniglot") == "vinyals"
    split = data.load_split(tmp_path / "omniglot", "val", image_size=28, cache_dir="none", progress=False)
    assert len(split["classes"]) == len(lines["val"]) == 688 and split["images"].shape[1:] == (1, 28, 28)
    assert torch.is_tensor(split["images"]) and not list((tmp_path / "omniglot").glob("*.zip"))


def test_a_damaged_record_or_a_file_gone_since_means_fetching_again(server, monkeypatch, tmp_path):
    serve_mini_imagenet(server, monkeypatch)
    folder = fetch.fetch("mini-imagenet", tmp_path / "mi", quiet=True)
    for damage in ("{}", "[1]", ""):
        (folder / fetch.RECORD).write_text(damage)
        requests = len(server.requested)
        fetch.fetch("mini-imagenet", folder, quiet=True, progress=False)
        assert len(server.requested) > requests and fetch.verified(folder)
    (folder / "mini-imagenet-cache-test.pkl").unlink()
    assert fetch.verified(folder) is None
    fetch.fetch("mini-imagenet", folder, quiet=True, progress=False)
    assert (folder / "mini-imagenet-cache-test.pkl").stat().st_mode & 0o044 == 0o044  # readable by all, not private


def test_a_file_the_checks_refuse_is_removed_and_the_next_source_is_tried(server, monkeypatch, tmp_path, capsys):
    pickles = serve_mini_imagenet(server, monkeypatch, checksums=False)
    name = "mini-imagenet-cache-train.pkl"
    server.routes[f"/zenodo/{name}"] = ("ok", b"")  # empty: no checksum to catch it, data.py's checks do
    fetch.fetch("mini-imagenet", tmp_path / "mi", quiet=True, progress=False)
    record = json.loads((tmp_path / "mi" / fetch.RECORD).read_text())
    assert record["files"][0]["url"] == f"{server.url}/dropbox/{name}"
    duplicated = pickle.loads(pickles[name])
    duplicated["class_dict"] = {k: [0] * PER_CLASS for k in duplicated["class_dict"]}  # one image, named 18 times
    server.routes[f"/dropbox/{name}"] = ("ok", pickle.dumps(duplicated))
    line = refused(["fetch", "mini-imagenet", str(tmp_path / "again"), "--no-progress"], capsys)
    assert f"{server.url}/zenodo/{name} gave a file that data.py refuses: {name} is not a learn2learn" in line
    assert f"{server.url}/dropbox/{name} gave a file that data.py refuses: {name}: " in line
    assert "class_dict names 1 distinct images of image_data's 18, 18 times in all" in line and "by hand" in line
    nothing_readable(tmp_path / "again")


def test_without_pooch_fetching_ends_in_one_line_saying_how_to_get_the_data(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "pooch", None)
    line = refused(["fetch", "omniglot", str(tmp_path / "om")], capsys)
    assert "needs pooch (pip install pooch==1.9.0)" in line and "python data.py fetch NAME DIR" in line


def test_a_checkpoint_of_other_channels_is_refused_before_anything_is_fetched(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cli.ConfigError, match="--data mini-imagenet has 3 channel.* this checkpoint takes 1"):
        fetch.refuse_other_channels("mini-imagenet", 1)
    fetch.refuse_other_channels("omniglot", 1)
    fetch.refuse_other_channels("some/folder", 1)  # a folder: the loader compares


def test_a_process_that_does_not_fetch_waits_for_the_one_that_does(monkeypatch, tmp_path):
    """torchrun's other ranks: rank 0 fetches, they wait for its record."""
    monkeypatch.setenv(fetch.HOME_VARIABLE, "relative-home")  # made absolute, for checkpoints read elsewhere
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "relative-home" / "omniglot"
    assert fetch.data_home() == tmp_path / "relative-home"

    def rank0():
        time.sleep(1.5)
        (folder / "splits").mkdir(parents=True)
        (folder / fetch.RECORD).write_text(json.dumps({"fetched_at": "now", "files": [{"file": "splits"}]}))

    threading.Thread(target=rank0).start()
    start = time.time()
    assert fetch.resolve_data("omniglot", quiet=True, fetcher=False) == (str(folder), "omniglot")
    assert time.time() - start > 1


def test_a_pickle_written_with_protocol_5_and_an_ordered_class_dict_is_read(tmp_path):
    from collections import OrderedDict

    content = pickle.loads(mini_imagenet_pickle("train", 0))
    content["class_dict"] = OrderedDict(content["class_dict"])
    (tmp_path / "mini-imagenet-cache-train.pkl").write_bytes(pickle.dumps(content, protocol=5))
    split = data.load_split(tmp_path, "train", image_size=16, cache_dir="none", progress=False)
    assert len(split["classes"]) == 3 and split["images"].shape == (18, 3, 16, 16)
