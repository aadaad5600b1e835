"""evaluate(): exact matrices, resume after a crash, sharding over ranks (2-process torchrun),
results and CLI."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cliper_lib.config import CLIPerConfig
from cliper_lib.eval.datasets import DatasetError, Sample, num_classes_of
from cliper_lib.eval.loop import CheckpointError, evaluate, load_checkpoint, shard_checkpoint_path
from cliper_lib.eval.metrics import ConfusionMatrix
from cliper_lib.eval.records import markdown_row
from cliper_lib.eval.runner import run_eval
from cliper_lib.eval.synthetic import SyntheticDataset
from cliper_lib.provenance import REPO_ROOT
from cliper_lib.suite.cli.arguments import add_eval_arguments

REPO = Path(__file__).resolve().parent.parent


def colour_rule(image: np.ndarray, num_classes: int) -> np.ndarray:
    """A deterministic, image-dependent stand-in for a segmenter: dull pixels background,
    bright ones by colour."""
    label = (
        image[..., 0].astype(np.int64) // 32 + image[..., 1].astype(np.int64) // 64
    ) % num_classes
    return np.where(
        image.max(axis=-1) > 150, label, 0
    )  # synthetic backgrounds are dull, shapes mostly bright


class StubModel:
    """The CLIPer interface (encode_text once, segment(image, given={"text": ...}).labels)
    without any network."""

    def __init__(self, cfg: CLIPerConfig) -> None:
        self.cfg = cfg
        self.segment_calls = 0
        self.weights_ids = {"clip": "stub", "sd": None}

    def encode_text(self, classes, background=None):
        return {"num_labels": len(classes) + 1, "background": list(background or [])}

    def segment(self, image, given):
        self.segment_calls += 1
        text = given["text"]
        return SimpleNamespace(
            labels=torch.from_numpy(colour_rule(np.asarray(image), text["num_labels"]))
        )


def synthetic(n: int = 10, seed: int = 0) -> SyntheticDataset:
    return SyntheticDataset(n, classes="voc21", size=(40, 48), seed=seed)


def reference_matrix(dataset, segmenter, num_classes, ignore) -> ConfusionMatrix:
    cm = ConfusionMatrix(num_classes, ignore)
    for sample in dataset:
        cm.update(sample.mask, segmenter(sample.image))
    return cm


def stub_segmenter(image: np.ndarray) -> np.ndarray:
    return colour_rule(image, 21)


# --------------------------------------------------------------------------------------------------
# evaluate()


def test_oracle_scores_100_and_result_fields():
    ds = synthetic(6)
    truth = {s.image.tobytes(): s.mask for s in ds}
    result = evaluate(
        lambda im: torch.from_numpy(truth[im.tobytes()]), ds, 21, (255,), progress=False
    )
    assert result.miou == pytest.approx(100.0) and result.metrics["pAcc"] == pytest.approx(1.0)
    assert result.num_images == 6 and result.resumed_images == 0 and result.names == ds.names
    off_diagonal = result.confusion.matrix - torch.diag(torch.diagonal(result.confusion.matrix))
    assert int(off_diagonal.abs().sum()) == 0
    assert result.seconds_per_image > 0 and result.seconds_total > 0


def test_matrix_equals_direct_accumulation_and_limit():
    ds = synthetic(8)
    result = evaluate(
        stub_segmenter, ds, 21, (255,), limit=5, progress=True
    )  # with a (disabled-in-CI) bar
    expected = reference_matrix([ds[i] for i in range(5)], stub_segmenter, 21, (255,))
    assert result.confusion == expected and result.num_images == 5
    assert 0 < result.miou < 100


def test_resume_after_crash_equals_uninterrupted(tmp_path):
    ds = synthetic(10)
    full = evaluate(stub_segmenter, ds, 21, (255,), progress=False).confusion
    ckpt, snapshot = tmp_path / "run.ckpt.json", tmp_path / "killed.ckpt.json"
    calls = []

    def crashing(image):
        calls.append(1)
        if len(calls) == 8:
            # What a SIGKILL here would leave on disk: the last periodic checkpoint (after image 6).
            shutil.copy(ckpt, snapshot)
            raise RuntimeError("simulated crash in the model")
        return stub_segmenter(image)

    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate(
            crashing,
            ds,
            21,
            (255,),
            checkpoint_path=ckpt,
            checkpoint_every=3,
            progress=False,
            run_key="k",
        )
    assert len(load_checkpoint(snapshot)["done"]) == 6
    assert (
        load_checkpoint(ckpt)["done"] == ds.names[:7]
    )  # the error path kept the 7 finished images
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporary files

    for path, remaining in ((ckpt, 3), (snapshot, 4)):
        counted = []
        resumed = evaluate(
            lambda im, counted=counted: counted.append(1) or stub_segmenter(im),
            ds,
            21,
            (255,),
            checkpoint_path=path,
            checkpoint_every=3,
            progress=False,
            run_key="k",
        )
        assert len(counted) == remaining  # finished images are not segmented again
        assert resumed.confusion == full  # exactly the uninterrupted matrix
        assert resumed.num_images == 10 and resumed.resumed_images == 10 - remaining


def test_resume_false_starts_over_and_mismatches_are_refused(tmp_path):
    ds = synthetic(4)
    ckpt = tmp_path / "c.json"
    evaluate(
        stub_segmenter,
        ds,
        21,
        (255,),
        checkpoint_path=ckpt,
        checkpoint_every=1,
        progress=False,
        run_key="a",
    )
    assert load_checkpoint(ckpt)["done"] == ds.names
    counted = []
    evaluate(
        lambda im: counted.append(1) or stub_segmenter(im),
        ds,
        21,
        (255,),
        checkpoint_path=ckpt,
        progress=False,
        resume=False,
        run_key="a",
    )
    assert len(counted) == 4
    with pytest.raises(CheckpointError, match="run_key"):
        evaluate(stub_segmenter, ds, 21, (255,), checkpoint_path=ckpt, progress=False, run_key="b")
    with pytest.raises(CheckpointError, match="classes"):
        evaluate(
            stub_segmenter, ds, 21, (0, 255), checkpoint_path=ckpt, progress=False, run_key="a"
        )
    renamed = ListDataset(Sample(f"other_{i}", s.image, s.mask) for i, s in enumerate(ds))
    with pytest.raises(CheckpointError, match="not in this run"):
        evaluate(
            stub_segmenter, renamed, 21, (255,), checkpoint_path=ckpt, progress=False, run_key="a"
        )
    sharded = shard_checkpoint_path(ckpt, 0, 2)
    shutil.copy(ckpt, sharded)
    with pytest.raises(CheckpointError, match="world_size"):
        evaluate(
            stub_segmenter,
            ds,
            21,
            (255,),
            checkpoint_path=ckpt,
            progress=False,
            run_key="a",
            world_size=2,
        )
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        evaluate(
            stub_segmenter, ds, 21, (255,), checkpoint_path=tmp_path / "junk.json", progress=False
        )


class ListDataset(list):
    """A plain list of samples with names (what evaluate needs from a data set)."""

    @property
    def names(self) -> list[str]:
        return [s.name for s in self]


def test_shards_partition_the_samples_and_sum_to_the_single_matrix():
    ds = synthetic(9)
    single = evaluate(stub_segmenter, ds, 21, (255,), progress=False)
    parts = [
        evaluate(stub_segmenter, ds, 21, (255,), rank=r, world_size=3, progress=False)
        for r in range(3)
    ]
    assert [p.names for p in parts] == [ds.names[r::3] for r in range(3)]
    merged = ConfusionMatrix(21, (255,))
    for p in parts:
        merged.merge(p.confusion)
    assert merged == single.confusion


def test_unreadable_sample_stops_with_its_name_and_keeps_progress(tmp_path):
    ds = synthetic(8)

    class Broken(ListDataset):
        def __getitem__(self, i):
            if i == 5:
                raise DatasetError("cannot read image /data/broken.jpg: truncated")
            return super().__getitem__(i)

    ckpt = tmp_path / "c.json"
    with pytest.raises(DatasetError, match="broken.jpg"):
        evaluate(
            stub_segmenter,
            Broken(list(ds)),
            21,
            (255,),
            checkpoint_path=ckpt,
            checkpoint_every=100,
            progress=False,
        )
    assert load_checkpoint(ckpt)["done"] == ds.names[:5]


def test_prediction_at_the_wrong_size_is_an_error():
    ds = synthetic(2)
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate(lambda im: np.zeros((3, 3), np.int64), ds, 21, (255,), progress=False)


def test_voc20_protocol_falls_out_of_the_preset_ignore_labels():
    """VOC20 = the 21-class prediction scored with ground-truth background (label 0) ignored."""
    voc21, voc20 = (
        CLIPerConfig.from_preset("vit-b-16/voc21"),
        CLIPerConfig.from_preset("vit-b-16/voc20"),
    )
    num = num_classes_of(voc20.classes)
    assert num == 21 and voc20.classes == voc21.classes and list(voc20.ignore_labels) == [0, 255]
    ds = synthetic(6)
    truth = {s.image.tobytes(): s.mask for s in ds}

    def objects_right_background_wrong(image):  # every gt-background pixel predicted as class 1
        mask = truth[image.tobytes()]
        return np.where(mask == 0, 1, mask)

    r21 = evaluate(objects_right_background_wrong, ds, num, voc21.ignore_labels, progress=False)
    r20 = evaluate(objects_right_background_wrong, ds, num, voc20.ignore_labels, progress=False)
    assert r20.miou == pytest.approx(100.0)  # background pixels do not count at all
    assert r21.miou < 90 and not r20.metrics["present"][0] and r21.metrics["present"][0]

    def background_everywhere(
        image,
    ):  # predicting background on an object is still a miss for VOC20
        return np.zeros(image.shape[:2], np.int64)

    assert evaluate(background_everywhere, ds, num, voc20.ignore_labels, progress=False).miou == 0.0


# --------------------------------------------------------------------------------------------------
# the command line (with the stub model; the real pipeline has its own test at the end)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    return parser.parse_args(list(argv))


def test_run_eval_writes_results_and_markdown(tmp_path, capsys):
    out, table = tmp_path / "r.json", tmp_path / "table.md"
    models = []

    def factory(cfg):
        models.append(StubModel(cfg))
        return models[-1]

    args = parse(
        "--preset",
        "vit-b-16/voc21",
        "--profile",
        "smoke",
        "--dataset",
        "synthetic",
        "--limit",
        "5",
        "--out",
        str(out),
        "--table",
        str(table),
        "--set",
        "seed=3",
        "--no-progress",
    )
    assert run_eval(args, model_factory=factory) == 0
    record = json.loads(out.read_text())
    assert (
        record["config"]["seed"] == 3
        and record["seed"] == 3
        and record["config"]["profile"] == "smoke"
    )
    assert record["num_images"] == 5 and models[0].segment_calls == 5
    assert {"torch", "open_clip_torch", "diffusers"} <= set(record["versions"]) and record[
        "weights"
    ]["clip"] == "stub"
    assert record["per_class"][1]["name"] == "aeroplane" and len(record["per_class"]) == 21
    assert record["paper_miou"] == 66.5 and record["timings"]["seconds_per_image"] > 0
    # the commit of this checkout and whether its tree (untracked files included) has changes;
    # None outside git
    head = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode == 0:
        status = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=normal"],
            capture_output=True,
            text=True,
        )
        assert isinstance(record["git"], dict) and record["git"]["commit"] == head.stdout.strip()
        assert record["git"]["dirty"] is bool(status.stdout.strip())
    else:
        assert record["git"] is None
    # The recorded metric is the one of an independent accumulation over the same samples.
    ds = SyntheticDataset(5, classes="voc21", size=96, seed=3)
    expected = reference_matrix(ds, stub_segmenter, 21, (255,)).compute()
    assert record["metrics"]["mIoU"] == pytest.approx(expected["mIoU_pct"])
    row = markdown_row("vit-b-16/voc21", expected["mIoU_pct"], 66.5)
    assert table.read_text().splitlines() == [
        "| preset | our mIoU | paper mIoU |",
        "|---|---|---|",
        row,
    ]
    assert row in capsys.readouterr().out
    run_eval(args, model_factory=factory)  # a second run appends, the header stays single
    assert table.read_text().count("| preset |") == 1 and table.read_text().count(row) == 2


def test_run_eval_all_renders_the_table_for_a_backbone(tmp_path, capsys):
    args = parse(
        "--all",
        "--backbone",
        "vit-b-16",
        "--profile",
        "smoke",
        "--dataset",
        "synthetic",
        "--limit",
        "2",
        "--synthetic-size",
        "32",
        "--out",
        str(tmp_path / "all"),
        "--no-progress",
    )
    assert run_eval(args, model_factory=StubModel) == 0
    files = sorted(p.name for p in (tmp_path / "all").glob("*.json"))
    assert len(files) == 8 and "vit-b-16__cityscapes__synthetic.json" in files
    table = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("| vit-b-16/")
    ]
    assert [line.split("|")[1].strip() for line in table] == [
        "vit-b-16/voc21",
        "vit-b-16/context60",
        "vit-b-16/coco_object",
        "vit-b-16/voc20",
        "vit-b-16/context59",
        "vit-b-16/coco_stuff",
        "vit-b-16/ade20k",
        "vit-b-16/cityscapes",
    ]
    assert [line.split("|")[3].strip() for line in table] == [
        "66.5",
        "38.3",
        "40.0",
        "85.5",
        "42.4",
        "27.6",
        "21.5",
        "37.0",
    ]


def test_missing_data_is_reported_before_any_model_is_built(tmp_path, capsys):
    built = []
    args = parse(
        "--all", "--backbone", "vit-b-16", "--data-root", str(tmp_path / "data"), "--no-progress"
    )
    assert run_eval(args, model_factory=lambda cfg: built.append(cfg)) == 2
    assert built == []
    err = capsys.readouterr().err
    assert str(tmp_path / "data") in err and "VOCdevkit/VOC2012/" in err and "cityscapes/" in err
    assert "Traceback" not in err


def test_weights_missing_prints_the_message_and_fails(capsys):
    from cliper_lib.weights.hub import WeightsMissingError

    def offline(cfg):
        raise WeightsMissingError(
            "CLIP ViT-B-16 (openai) weights are not available offline.\n  fix: cliper download"
        )

    args = parse("--dataset", "synthetic", "--limit", "1", "--no-progress")
    assert run_eval(args, model_factory=offline) != 0
    err = capsys.readouterr().err
    assert (
        "weights are not available offline" in err
        and "cliper download" in err
        and "Traceback" not in err
    )


def test_bad_options_fail_cleanly(tmp_path, capsys):
    assert (
        run_eval(
            parse("--dataset", "synthetic", "--set", "attention_thr=7"), model_factory=StubModel
        )
        == 2
    )
    assert (
        run_eval(parse("--dataset", "synthetic", "--set", "nonsense=1"), model_factory=StubModel)
        == 2
    )
    assert (
        run_eval(
            parse("--preset", "vit-b-16/ade20k", "--dataset", "voc21"), model_factory=StubModel
        )
        == 2
    )
    assert run_eval(parse("--dataset", "folder"), model_factory=StubModel) == 2
    err = capsys.readouterr().err
    assert "attention_thr" in err and "nonsense" in err and "ade150" in err and "--data-root" in err


def test_cli_checkpoint_needs_resume_and_is_removed_after_success(tmp_path):
    out, ckpt = tmp_path / "r.json", tmp_path / "r.ckpt.json"
    common = (
        "--profile",
        "smoke",
        "--dataset",
        "synthetic",
        "--limit",
        "4",
        "--out",
        str(out),
        "--no-progress",
        "--checkpoint-every",
        "1",
        "--synthetic-size",
        "32",
    )
    args = parse(*common, "--checkpoint", str(ckpt))
    cfg = CLIPerConfig.from_preset("vit-b-16/voc21", profile="smoke")

    class CrashAfterTwo(StubModel):
        def segment(self, image, given):
            if self.segment_calls == 2:
                raise KeyboardInterrupt  # what Ctrl-C does mid-run
            return super().segment(image, given)

    with pytest.raises(KeyboardInterrupt):
        run_eval(args, model_factory=CrashAfterTwo)
    assert len(load_checkpoint(ckpt)["done"]) == 2 and not out.exists()
    assert run_eval(args, model_factory=StubModel) == 2  # exists, no --resume: refuse to overwrite
    models = []
    assert (
        run_eval(
            parse(*common, "--resume"),
            model_factory=lambda c: models.append(StubModel(c)) or models[-1],
        )
        == 0
    )
    assert (
        models[0].segment_calls == 2 and not ckpt.exists()
    )  # default path: next to --out; removed at the end
    ds = SyntheticDataset(4, classes="voc21", size=32, seed=cfg.seed)
    record = json.loads(out.read_text())
    assert (
        record["confusion_matrix"]
        == reference_matrix(ds, stub_segmenter, 21, (255,)).matrix.tolist()
    )
    assert record["timings"]["resumed_images"] == 2


# --------------------------------------------------------------------------------------------------
# two processes


TORCHRUN_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import torch.distributed as dist
from test_evaluate import StubModel, parse
from cliper_lib.eval.runner import run_eval
code = run_eval(parse(*sys.argv[1:]), model_factory=StubModel)
assert not dist.is_initialized()  # run_eval leaves the group it joined
sys.exit(code)
"""


def test_two_process_torchrun_equals_single_process(tmp_path):
    """torchrun --nproc_per_node=2 (gloo on CPU): each rank takes every other sample;
    the sum is exact."""
    script = tmp_path / "eval_stub.py"
    script.write_text(TORCHRUN_SCRIPT.format(tests=str(Path(__file__).parent)))
    common = [
        "--profile",
        "smoke",
        "--dataset",
        "synthetic",
        "--limit",
        "7",
        "--synthetic-size",
        "40",
        "--device",
        "cpu",
        "--no-progress",
        "--checkpoint-every",
        "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [
            *torchrun,
            str(script),
            *common,
            "--out",
            str(tmp_path / "two.json"),
            "--checkpoint",
            str(tmp_path / "two.ckpt.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        run_eval(parse(*common, "--out", str(tmp_path / "one.json")), model_factory=StubModel) == 0
    )
    two, one = (json.loads((tmp_path / f).read_text()) for f in ("two.json", "one.json"))
    assert two["timings"]["world_size"] == 2 and one["timings"]["world_size"] == 1
    assert two["confusion_matrix"] == one["confusion_matrix"]  # exact, int64
    assert two["num_images"] == one["num_images"] == 7 and two["metrics"] == one["metrics"]
    assert proc.stdout.count("| vit-b-16/voc21 |") == 1  # only rank 0 reports
    assert not list(tmp_path.glob("two.ckpt*"))  # each rank removed its checkpoint after success


# --------------------------------------------------------------------------------------------------
# through the real pipeline


@pytest.mark.slow
def test_cliper_eval_smoke_end_to_end(tmp_path, capsys):
    from cliper_lib.suite.cli.commands import main

    out = tmp_path / "r.json"
    code = main(
        [
            "eval",
            "--preset",
            "vit-b-16/voc21",
            "--profile",
            "smoke",
            "--dataset",
            "synthetic",
            "--limit",
            "4",
            "--out",
            str(out),
            "--no-progress",
            "--synthetic-size",
            "64",
        ]
    )
    assert code == 0, capsys.readouterr().err
    record = json.loads(out.read_text())
    assert record["num_images"] == 4 and record["profile"] == "smoke" and record["weights"]["clip"]
    assert (
        0.0 <= record["metrics"]["mIoU"] <= 100.0 and record["metrics"]["num_pixels"] == 4 * 64 * 64
    )
    assert "| vit-b-16/voc21 |" in capsys.readouterr().out
