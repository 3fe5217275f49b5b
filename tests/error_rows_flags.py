"""The error table's bad flags, of every script: values out of range or of the wrong type, misspelt
flags, flags that contradict each other, devices that are not there and sizes no memory holds. How a row
runs and what it must show: tests/cli_errors_harness.py."""

import pytest

import bad_inputs as bad
from cli_errors_harness import NO_GPU

FLAG_CASES = [
    # ---- maml.py: flags
    pytest.param("maml", bad.train_flags("--ways", "0"), "--ways must be at least", id="zero ways"),
    pytest.param(
        "maml", bad.train_flags("--inner-steps", "-1"), "--inner-steps cannot be negative", id="negative inner steps"
    ),
    pytest.param("maml", bad.train_flags("--inner-lr", "nan"), "--inner-lr must be a finite number", id="inner lr nan"),
    pytest.param("maml", bad.train_flags("--image-size", "8"), "--image-size must be at least 16", id="image size 8"),
    pytest.param(
        "maml", bad.train_flags("--device", "cuda:0"), "no CUDA GPU", id="gpu that is not there", marks=NO_GPU
    ),
    pytest.param("maml", bad.train_flags("--device", "tpu?"), "is not a device name", id="device that is no name"),
    pytest.param("maml", bad.train_flags("--method", "protonet"), "invalid choice: 'protonet'", id="unknown method"),
    pytest.param(
        "maml",
        bad.train_flags("--method", "anil", "--inner-params", "body"),
        "--method anil means --inner-params head, which --inner-params contradicts",
        id="method and a flag that contradicts it",
    ),  # fmt: skip
    pytest.param(
        "maml",
        bad.train_flags("--cuda-graph", "on"),
        "--cuda-graph on needs a CUDA device",
        id="cuda graph on without a gpu",
        marks=NO_GPU,
    ),  # fmt: skip
    pytest.param("maml", bad.train_flags("--seeds", "1", "2", "1"), "names a seed twice", id="a seed given twice"),
    pytest.param(
        "maml",
        bad.train_flags("--seeds", "1", "2", "--task-batching", "loop"),
        "drop --task-batching loop",
        id="seeds with the task loop",
    ),  # fmt: skip
    pytest.param(
        "maml",
        bad.train_flags("--clip-grad", "0"),
        "--clip-grad must be a positive",
        id="clip grad that is not positive",
    ),
    pytest.param(
        "maml", bad.train_flags("--rotations"), "--rotations applies to Omniglot only", id="rotations without omniglot"
    ),
    pytest.param(
        "maml",
        bad.flags("--inner-lr", "abc"),
        "argument --inner-lr: invalid float value: 'abc'; see --help",
        id="inner lr abc",
    ),  # fmt: skip
    pytest.param(
        "maml", bad.flags("--ways", "five"), "argument --ways: invalid int value: 'five'; see --help", id="ways five"
    ),  # fmt: skip
    pytest.param(
        "maml", bad.flags("--way", "5", "--lern-lr"), "unrecognized arguments: --lern-lr; see --help", id="typo'd flags"
    ),  # fmt: skip
    pytest.param(
        "maml", bad.flags("--task-batching", "fast"), "argument --task-batching: invalid choice", id="bad choice"
    ),
    pytest.param(
        "maml", bad.flags("--lr-init-range", "0.1"), "expected 2 arguments; see --help", id="one of two values"
    ),
    # ---- round 3: flags, every script
    pytest.param(
        "maml",
        bad.train_flags("--lr-init-range", "nan", "0.1"),
        "--lr-init-range must be two finite",
        id="lr init range nan",
    ),
    pytest.param(
        "maml",
        bad.train_flags("--lr-init-range", "0.1", "-0.1"),
        r"LOW <= HIGH \(got 0.1 -0.1\)",
        id="lr init range reversed",
    ),
    pytest.param(
        "maml", bad.train_flags("--meta-lr", "0"), "--meta-lr must be a positive finite number", id="meta lr 0"
    ),
    pytest.param("maml", bad.train_flags("--meta-lr=-0.001"), "--meta-lr must be a positive", id="negative meta lr"),
    pytest.param("maml", bad.train_flags("--meta-lr", "inf"), "--meta-lr must be a positive finite", id="meta lr inf"),
    pytest.param(
        "maml", bad.train_flags("--seeds", "0", "1", "--seed", "3"), "--seed 3 beside --seeds", id="seed beside seeds"
    ),
    pytest.param(
        "maml",
        bad.train_flags("--eval-queries", "0"),
        "--eval-queries must be at least 1",
        id="zero evaluation queries",
    ),
    pytest.param(
        "maml", bad.train_flags("--seed", "-1"), r"--seed must be in 0..4294967295 \(got -1\)", id="negative seed"
    ),
    pytest.param(
        "maml",
        bad.train_flags("--seed", "18446744073709551615"),
        "--seed must be in 0..",
        id="seed whose derived seeds overflow",
    ),
    pytest.param("maml", bad.train_flags("--seeds", "0", "99999999999"), "--seeds must be in 0..", id="seeds overflow"),
    pytest.param("maml", bad.train_flags("--clip-grad", "-1"), "--clip-grad must be a positive", id="negative clip"),
    pytest.param("maml", bad.train_flags("--val-tasks", "0"), "--val-tasks must be at least 1", id="zero val tasks"),
    pytest.param("maml", bad.train_flags("--log-every", "0"), "--log-every must be at least 1", id="zero log every"),
    pytest.param(
        "maml",
        bad.train_flags("--synthetic-per-class", "-3"),
        "--synthetic-per-class must be at least 1",
        id="negative synthetic per class",
    ),
    pytest.param(
        "maml",
        bad.train_flags("--image-size", "100000"),
        r"ask for about [\d,]+ GiB, more than this machine",
        id="image size no memory holds",
    ),
    pytest.param(
        "maml",
        bad.train_flags("--meta-batch", "1000000000"),
        "--meta-batch, --image-size and --hidden ask",
        id="meta-batch no memory holds",
    ),
    pytest.param(
        "maml",
        bad.train_flags("--hidden", "100000000"),
        "--meta-batch, --image-size and --hidden ask",
        id="width no memory holds",
    ),
    pytest.param("maml", bad.train_flags("--device", "mps"), "runs on cpu or cuda .*not on mps", id="maml device mps"),
    pytest.param("maml", bad.train_flags("--device", "xpu:0"), "not on xpu", id="maml device xpu"),
    pytest.param("maml", bad.train_flags("--device", "meta"), "not on meta", id="maml device meta"),
    pytest.param("probe", bad.probe_with("--device", "mps"), "not on mps", id="probe device mps"),
    pytest.param("bench", bad.flags("--device", "mps"), "not on mps", id="bench device mps"),
    pytest.param(
        "probe", bad.probe_with("--seed", "-1"), r"--seed must be in 0..4294967295 \(got -1\)", id="probe negative seed"
    ),
    pytest.param(
        "probe", bad.probe_with("--seed", "18446744073709551615"), "--seed must be in 0..", id="probe seed overflow"
    ),
    pytest.param("probe", bad.probe_with("--queries", "0"), "--queries must be at least 1", id="probe zero queries"),
    pytest.param("probe", bad.probe_with("--steps", "-2"), "--steps not negative", id="probe negative steps"),
    pytest.param(
        "probe", bad.probe_with("--batch", "-1"), "--batch and --steps not negative", id="probe negative batch"
    ),
    pytest.param(
        "probe",
        bad.probe_with("--inner-lr", "inf", "--rates", "fixed"),
        "--inner-lr must be a finite",
        id="probe infinite fixed rate",
    ),
    pytest.param("bench", bad.flags("--repeats", "0"), "--repeats must be at least 1", id="bench zero repeats"),
    pytest.param("bench", bad.flags("--repeats", "-5"), "--repeats must be at least 1", id="bench negative repeats"),
    pytest.param("bench", bad.flags("--seeds", "-2"), "--seeds not negative", id="bench negative seeds"),
    # ---- bench.py
    pytest.param("bench", bad.flags("--quik"), "unrecognized arguments: --quik; see --help", id="bench typo'd flag"),
    pytest.param(
        "bench", bad.flags("--repeats", "many"), "invalid int value: 'many'; see --help", id="bench repeats many"
    ),
    # ---- gpu_check.py
    pytest.param(
        "gpu_check", bad.gpu_check_flags("--stages", "bnech"), "invalid choice: 'bnech'", id="check stage typo"
    ),
    pytest.param(
        "gpu_check",
        bad.gpu_check_flags("--limit", "train=50"),
        "--limit train=50: expected STAGE=SECONDS with STAGE one of cuda-tests, bench",
        id="check limit of a stage that does not exist",
    ),  # fmt: skip
    pytest.param(
        "gpu_check", bad.gpu_check_flags("--limit", "bench"), "--limit bench: SECONDS must be", id="check limit bare"
    ),
    pytest.param(
        "gpu_check", bad.gpu_check_flags("--limit", "bench=5m"), "--limit bench=5m: SECONDS must", id="check limit 5m"
    ),
    pytest.param("gpu_check", bad.gpu_check_flags("--limit", "bench=-1"), "SECONDS must", id="check limit negative"),
    pytest.param("gpu_check", bad.gpu_check_out_that_is_a_file, "--out .*afile is a file", id="check out a file"),
    pytest.param(
        "gpu_check", bad.gpu_check_flags("--smoek"), "unrecognized arguments: --smoek; see --help", id="check typo"
    ),
    pytest.param(
        "gpu_check",
        bad.gpu_check_flags(env={"MAML_FAKE_CUDA_GRAPH": "0"}),
        "MAML_FAKE_CUDA_GRAPH=0 is not a rehearsal; set it to ok or fail",
        id="check rehearsal variable 0",
    ),  # fmt: skip
    pytest.param(
        "gpu_check",
        bad.gpu_check_without_a_gpu(data=True),
        r"no usable CUDA device \(torch .*, torch.version.cuda .*, torch.cuda.is_available\(\) False\)",
        id="check without a gpu, with data",
    ),  # fmt: skip
    pytest.param(
        "gpu_check", bad.gpu_check_without_a_gpu(data=False), "no usable CUDA device", id="check without gpu or data"
    ),
    pytest.param(
        "gpu_check",
        bad.gpu_check_out_with_other_files,
        "--out .*check holds other files \\(notes.txt\\)",
        id="check out with other files",
    ),  # fmt: skip
    pytest.param(
        "gpu_check",
        bad.gpu_check_on_a_gpu("{d}/ravi", env={"MAML_FAKE_CUDA_GRAPH": "ok"}),
        "MAML_FAKE_CUDA_GRAPH=ok would rehearse every capture instead of timing the graph",
        id="check rehearsal on a gpu",
    ),  # fmt: skip
    pytest.param(
        "gpu_check",
        bad.gpu_check_on_a_gpu("{d}/ravi/train.csv"),
        "DATA_DIR '.*train.csv' is not a folder",
        id="check data dir a file",
    ),  # fmt: skip
    pytest.param("gpu_check", bad.gpu_check_on_a_gpu(""), "DATA_DIR '' is not a folder", id="check data dir empty"),
]
