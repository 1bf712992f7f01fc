"""Bad input gets one clear line (or a counted skip), outputs are checked before work starts,
and a run folder never mixes two runs (issue: reliability)."""

from __future__ import annotations

import contextlib
import inspect
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_pipeline import TINY_CONFIG, _make_tiny_dataset

import sniper.errors as errors_module
from sniper.cli import main
from sniper.config import load_config
from sniper.data.coco import load_coco
from sniper.engine.pipeline import run_pipeline
from sniper.errors import CocoFormatError, ConfigError, OutputError, SniperError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_rel")
    _make_tiny_dataset(out, n_images=4)
    return out


def _copy_data(tiny: Path, dst: Path) -> Path:
    shutil.copytree(tiny, dst)
    return dst


def _truncate(path: Path) -> None:
    """Keep the header (the size check passes) but cut the pixel data: fails only when decoded."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with Image.open(path) as im:  # the header still reads
        assert im.size == (192, 160)


def _cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# ---------------------------------------------------------------- exceptions


def _exception_classes() -> list[type[BaseException]]:
    return [
        c
        for _, c in inspect.getmembers(errors_module, inspect.isclass)
        if issubclass(c, SniperError) and c.__module__ == errors_module.__name__
    ]


@pytest.mark.parametrize("cls", _exception_classes(), ids=lambda c: c.__name__)
def test_every_project_exception_survives_pickle(cls):
    params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        args: tuple = ("some message",)
    else:
        args = tuple(f"arg{i}" for i in range(len(params)))
    e = cls(*args)
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is cls and str(back) == str(e) and back.args == e.args
    assert vars(back) == vars(e)


def test_bad_image_error_keeps_file_and_reason_through_pickle():
    e = pickle.loads(pickle.dumps(errors_module.BadImageError("a/b.jpg", "truncated")))
    assert (e.file, e.reason, str(e)) == ("a/b.jpg", "truncated", "a/b.jpg: truncated")


# ---------------------------------------------------------------- the CLI's last line of defence


def test_internal_error_is_one_line_with_exit_code_1(monkeypatch, capsys):
    import sniper.cli.make_dataset as cmd

    def boom(args):
        raise TypeError("unsupported operand\nsecond line")

    monkeypatch.setattr(cmd, "run", boom)
    rc, _, err = _cli(capsys, "make-dataset", "x")
    assert rc == 1
    assert err.strip().count("\n") == 0 and "internal error: TypeError: unsupported operand" in err
    assert "--debug" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "exc, expected",
    [
        (IsADirectoryError(21, "Is a directory", "out/x"), "error: out/x: Is a directory"),
        (OSError(28, "No space left on device", "run/ckpt.pt"), "error: run/ckpt.pt: No space left on device"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "error: 'utf-8' codec"),
        (MemoryError(), "error: out of memory"),
    ],
)
def test_library_exceptions_become_one_line_errors(exc, expected):
    from sniper.cli.main import describe_error

    message, code = describe_error(exc)
    assert code == 2 and message.startswith(expected) and "\n" not in message


# ---------------------------------------------------------------- configs


def test_invalid_yaml_config_is_one_line(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("train:\n  lr: [0.1\n  epochs: 3\n")
    rc, _, err = _cli(capsys, "chips", "--annotations", tmp_path / "a.json", "--out", tmp_path / "o", "--config", bad)
    assert rc == 2 and f"{bad}: not valid YAML" in err and "line" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(None, ["train.lr=[0.1"])


def test_config_with_byte_order_mark_loads(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes("\ufefftrain:\n  lr: 0.5\n".encode())
    assert load_config(p).train.lr == 0.5


def test_binary_config_is_refused(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(ConfigError, match="not a text file"):
        load_config(p)


# ---------------------------------------------------------------- COCO files


def _coco(image_id=1, ann_id=1, category_id=3):
    return {
        "images": [{"id": image_id, "file_name": "a.jpg", "width": 100, "height": 80}],
        "annotations": [{"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": [1, 2, 30, 40]}],
        "categories": [{"id": 3, "name": "c"}],
    }


def test_image_id_beyond_int64_is_a_format_error():
    with pytest.raises(CocoFormatError, match=r"images\[0\].*64 bits"):
        load_coco(_coco(image_id=2**63))


def test_annotation_id_beyond_int64_is_a_counted_skip():
    d = _coco()
    d["annotations"].append({"id": 2**64, "image_id": 1, "category_id": 3, "bbox": [5, 5, 10, 10]})
    ds = load_coco(d)
    assert ds.num_annotations == 1 and ds.report.counts["malformed"] == 1
    with pytest.raises(CocoFormatError, match="64-bit"):
        load_coco(d, strict=True)


def test_integral_float_ids_are_integers_other_floats_are_skipped():
    d = _coco(category_id=3.0)
    d["annotations"].append({"id": 2, "image_id": 1, "category_id": 3.5, "bbox": [5, 5, 10, 10]})
    ds = load_coco(d)
    assert ds.annotations(1).category_ids.tolist() == [3]
    assert ds.report.counts["malformed"] == 1


def test_json_with_byte_order_mark_loads(tmp_path):
    p = tmp_path / "a.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(_coco()).encode())
    assert load_coco(p).num_annotations == 1


def test_huge_ids_on_the_command_line_are_one_line(tmp_path, capsys):
    p = tmp_path / "a.json"
    p.write_text(json.dumps(_coco(image_id=2**70)))
    rc, _, err = _cli(capsys, "chips", "--annotations", p, "--out", tmp_path / "o")
    assert rc == 2 and "64 bits" in err and "Traceback" not in err and "Overflow" not in err


def test_corrupt_chip_table_names_the_file(tmp_path):
    from sniper.data.chip_table import ChipTable

    p = tmp_path / "chips.parquet"
    p.write_bytes(b"PAR1 not really")
    with pytest.raises(SniperError, match=r"chips.parquet: not a readable chip table"):
        ChipTable.read_parquet(p)


# ---------------------------------------------------------------- outputs, checked first


def _commands_with_out(tmp_path: Path, out: Path) -> dict[str, list]:
    missing = tmp_path / "missing.json"  # every other input is bad too: --out must be checked first
    return {
        "chips": ["chips", "--annotations", missing, "--out", out],
        "export": ["export", "--annotations", missing, "--images", tmp_path, "--out", out],
        "plan": ["plan", "--annotations", missing, "--out", out],
        "train": ["train", "--annotations", missing, "--images", tmp_path, "--out", out],
        "predict": ["predict", "--weights", tmp_path / "missing.pt", "--source", missing, "--out", out],
        "demo": ["demo", "--out", out],
        "make-dataset": ["make-dataset", out],
    }


@pytest.mark.parametrize("command", ["chips", "export", "plan", "train", "predict", "demo", "make-dataset"])
def test_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, command):
    out = tmp_path / "taken"
    out.write_text("a file")
    rc, _, err = _cli(capsys, *_commands_with_out(tmp_path, out)[command])
    assert rc == 2 and f"{out} exists and is not a folder" in err and "Traceback" not in err
    assert out.read_text() == "a file"


def test_output_below_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    rc, _, err = _cli(capsys, *_commands_with_out(tmp_path, f / "sub")["chips"])
    assert rc == 2 and f"{f} is a file, not a folder" in err


def test_evaluate_out_naming_a_folder_is_refused_before_evaluating(tmp_path, capsys):
    rc, _, err = _cli(
        capsys, "evaluate", "--annotations", tmp_path / "missing.json", "--detections", tmp_path / "d.json",
        "--out", tmp_path,
    )  # fmt: skip
    assert rc == 2 and f"--out {tmp_path} is a folder; give a file name" in err


def test_output_checks_unit(tmp_path):
    from sniper.outputs import check_output_dir, check_output_file

    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(OutputError, match="exists and is not a folder"):
        check_output_dir(tmp_path / "f", "--out")
    assert check_output_file(tmp_path / "f") == tmp_path / "f"  # a file may be replaced


# ---------------------------------------------------------------- predict: annotated size vs file


def test_predict_refuses_a_coco_image_whose_size_disagrees(tmp_path, capsys, monkeypatch):
    from test_predict import CATEGORIES, BrightModel, bright_image

    import sniper.engine.checkpoint as ckpt
    from sniper.config import Config
    from sniper.scales import Scale

    cfg = Config()
    cfg.model.pretrained = False
    cfg.infer.scales = [Scale(factor=1.0, valid_range=(None, None))]
    monkeypatch.setattr(ckpt, "load_model_for_inference", lambda path, map_location="cpu": (BrightModel(), cfg, CATEGORIES))
    weights = tmp_path / "m.pt"
    weights.write_bytes(b"x")
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(bright_image(160, 120, (10, 20, 60, 70))).save(images / "ok.png")
    # EXIF-rotated JPEG: stored 160x120, oriented 120x160; the annotation gives the stored frame
    rotated = Image.fromarray(bright_image(160, 120, (10, 20, 60, 70)))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(images / "rot.jpg", exif=exif.tobytes())
    src = tmp_path / "val.json"
    src.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "ok.png", "width": 160, "height": 120},
                   {"id": 2, "file_name": "rot.jpg", "width": 160, "height": 120}],
        "annotations": [], "categories": CATEGORIES,
    }))  # fmt: skip
    args = ["predict", "--no-progress", "--weights", weights, "--source", src, "--images", images]
    rc, _, err = _cli(capsys, *args, "--out", tmp_path / "o1")
    assert rc == 2 and "rot.jpg" in err and "after EXIF rotation" in err and "unrotated" in err
    assert not (tmp_path / "o1" / "detections.json").exists()
    rc, out, _ = _cli(capsys, *args, "--out", tmp_path / "o2", "--on-bad-image", "skip")
    assert rc == 0 and "skipped 1" in out
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert [s["image_id"] for s in summary["skipped"]] == [2] and summary["images"] == 1


# ---------------------------------------------------------------- training: run folders


def _cfg(*extra: str):
    return load_config(None, [*TINY_CONFIG, "train.negatives=false", "train.max_iters=2", *extra])


def test_fresh_run_into_a_used_folder_is_refused_or_overwritten(tiny, tmp_path):
    run = tmp_path / "run"
    first = _cfg("train.checkpoint_every=1", "train.keep_checkpoints=1", "train.max_iters=3")
    run_pipeline(first, tiny / "train.json", tiny / "images", run)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["detector_it00000003.pt"]
    (run / "my_notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match=r"holds a previous run .*--resume.*--overwrite"):
        run_pipeline(_cfg(), tiny / "train.json", tiny / "images", run)
    run_pipeline(_cfg(), tiny / "train.json", tiny / "images", run, overwrite=True)
    # only the new run's checkpoint (iteration 2; the old iteration-3 one would have won) and logs
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names[-1] == "detector_it00000002.pt" and "detector_it00000003.pt" not in names
    rows = [json.loads(x) for x in (run / "logs" / "detector.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2]  # not the old run's 1, 2, 3 followed by these
    assert (run / "my_notes.txt").read_text() == "keep me"
    with pytest.raises(OutputError, match="contradict"):
        run_pipeline(_cfg(), tiny / "train.json", tiny / "images", run, resume=True, overwrite=True)


def test_train_cli_refuses_a_used_folder_naming_both_flags(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "detector_it00000100.pt").write_bytes(b"old")
    rc, _, err = _cli(capsys, "train", "--annotations", tiny / "train.json", "--images", tiny / "images", "--out", run)
    assert rc == 2 and "--resume" in err and "--overwrite" in err
    assert not (run / "plan").exists()  # refused before planning


def test_zero_usable_images_says_so(tiny, tmp_path):
    data = _copy_data(tiny, tmp_path / "d")
    for p in (data / "images").iterdir():
        p.write_bytes(b"not an image")
    with pytest.raises(SniperError, match="0 usable images for training: all 4 images"):
        run_pipeline(_cfg("data.on_bad_image=skip"), data / "train.json", data / "images", tmp_path / "run")
    empty = tmp_path / "empty.json"
    d = json.loads((data / "train.json").read_text())
    empty.write_text(json.dumps({**d, "annotations": []}))
    with pytest.raises(SniperError, match="0 usable images for training: none of the 4 images"):
        run_pipeline(_cfg(), empty, data / "images", tmp_path / "run2")


# ---------------------------------------------------------------- training: a file that fails mid-run


@pytest.mark.parametrize("workers", [0, 1])
def test_truncated_image_under_error_stops_with_one_line_and_a_resumable_checkpoint(tiny, tmp_path, workers):
    data = _copy_data(tiny, tmp_path / "d")
    _truncate(data / "images" / "2.png")
    cfg = _cfg(f"data.num_workers={workers}", "train.max_iters=4", "train.batch_size=2")
    run = tmp_path / "run"
    with pytest.raises(SniperError) as info:
        run_pipeline(cfg, data / "train.json", data / "images", run)
    msg = str(info.value)
    assert "2.png" in msg and "--resume" in msg and "\n" not in msg and "DataLoader" not in msg
    ckpts = list((run / "checkpoints").glob("detector_it*.pt"))
    assert len(ckpts) == 1
    # the file is fixed: --resume continues from that checkpoint to the end
    shutil.copy(tiny / "images" / "2.png", data / "images" / "2.png")
    res = run_pipeline(cfg, data / "train.json", data / "images", run, resume=True)
    assert res.model_path.is_file()


@pytest.mark.parametrize("workers", [0, 1])
def test_truncated_image_under_skip_is_dropped_and_counted(tiny, tmp_path, workers):
    data = _copy_data(tiny, tmp_path / "d")
    _truncate(data / "images" / "1.png")
    cfg = _cfg(f"data.num_workers={workers}", "data.on_bad_image=skip", "train.max_iters=4", "train.batch_size=2")
    run = tmp_path / "run"
    # in this process the skip also warns; in a worker the warning stays there, the count comes back
    with pytest.warns(UserWarning, match="1.png") if workers == 0 else contextlib.nullcontext():
        res = run_pipeline(cfg, data / "train.json", data / "images", run)
    assert res.model_path.is_file()
    book = json.loads((run / "stages.json").read_text())
    bad = book["detector"]["bad_images_in_training"]
    assert list(bad) == [str(data / "images" / "1.png")]
    assert bad[str(data / "images" / "1.png")]  # the reason


def test_bad_image_flag_on_every_image_command():
    from sniper.cli.main import build_parser

    for command in ("predict", "export", "train", "chips"):
        parser = build_parser(command)
        sub = next(a for a in parser._actions if a.dest == "command").choices[command]
        assert any("--on-bad-image" in a.option_strings for a in sub._actions), command


def test_chips_visualize_honours_on_bad_image(tiny, tmp_path, capsys):
    data = _copy_data(tiny, tmp_path / "d")
    (data / "images" / "0.png").write_bytes(b"broken")
    args = ["chips", "--annotations", data / "train.json", "--images", data / "images", "--visualize", 2]
    rc, _, err = _cli(capsys, *args, "--out", tmp_path / "o1")
    assert rc == 2 and "0.png" in err
    rc, out, _ = _cli(capsys, *args, "--out", tmp_path / "o2", "--on-bad-image", "skip")
    assert rc == 0 and "1 bad image(s) drawn as a gray canvas" in out
    assert (tmp_path / "o2" / "viz" / "1_chips.png").is_file()


def test_truncated_png_fails_only_on_decode(tmp_path):
    from sniper.data.images import check_image_size, load_image

    p = tmp_path / "x.png"
    Image.fromarray(np.full((160, 192, 3), 99, np.uint8)).save(p)
    _truncate(p)
    assert check_image_size(p, 192, 160) is None
    with pytest.raises(errors_module.BadImageError):
        load_image(p, max_pixels=10**8)


def test_resume_after_a_kill_mid_log_line(tmp_path):
    from sniper.engine.train import MetricLog

    log = MetricLog(tmp_path, "detector", enabled=True, tensorboard=False)
    for it in (2, 4, 6):
        log.write({"iter": it, "loss": 1.0 / it})
    with open(log.jsonl, "a") as f:
        f.write('{"iter": 8, "lo')  # the process died here
    log.truncate_after(4)
    assert [json.loads(x)["iter"] for x in log.jsonl.read_text().splitlines()] == [2, 4]
    log.write({"iter": 6, "loss": 0.1, "lr": 0.01})  # a new column: the CSV is rewritten from the JSONL
    assert log.csv.read_text().splitlines()[0] == "iter,loss,lr"
