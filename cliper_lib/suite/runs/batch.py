"""`cliper segment` and `cliper demo` on a batch of images, for people who never open Jupyter.

Everything that can be checked is checked before the model loads (the output folder, the class
names, each image's type, header and size). Then each image's three outputs (label PNG, overlay,
scores JSON) appear together or not at all; an image that cannot be read or segmented is named,
skipped and listed again at the end; a full disk stops the batch with a message saying what was
written. The output folder is created only for the first written image, so a failed run leaves no
empty folder.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ...config import CLIPerConfig
from ...files import atomic_group, check_output_folder
from ...images import IMAGE_READ_ERRORS, IMAGE_SUFFIXES, ImageReadError, is_image_file, read_image
from ...method.clip_backbone import resized_shape
from ...vocab import parse_class_names
from ...weights.clip import TINY_CLIP_CONFIG
from ...weights.models import check_before_loading
from ..toolkit.background import resolve_vocabulary
from ..toolkit.outputs import (
    OUTPUT_SUFFIXES,
    output_suffixes,
    score_maps_bytes,
    write_score_maps,
    write_segmentation_files,
)
from ..toolkit.samples import suggested_classes_by_image

#: OSError numbers that mean no later image can be written either: the batch stops instead of going
#: on.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


class BatchStopped(RuntimeError):
    """Writing failed in a way that stops the whole batch (a full disk); the message says what was
    written."""


@dataclass
class BatchResult:
    records: list[dict[str, Any]] = field(default_factory=list)  # one per image written
    failures: list[tuple[Path, str]] = field(default_factory=list)  # (image, why) per image skipped
    written: list[Path] = field(default_factory=list)  # every output file, in order
    kept: list[Path] = field(default_factory=list)  # images an earlier run did with these settings


def _inside(path: Path, folder: Path | None) -> bool:
    """Whether `path` lies in `folder` (the output folder), however either is spelled."""
    return folder is not None and path.resolve().parent == folder.resolve()


def _matches(pattern: str, out: Path | None) -> list[Path]:
    """The images one argument names: an existing path is that file or folder, whatever characters
    its name holds ([ ] are not a pattern there); a glob pattern expands only when no such path
    exists."""
    path = Path(pattern)
    if path.is_dir():
        if out is not None and path.resolve() == out.resolve():
            raise ValueError(
                f"{pattern} is the output folder (--out): its outputs would become the next "
                "run's inputs; give another --out"
            )
        return [p for p in sorted(path.iterdir()) if is_image_file(p)]
    if path.exists():
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(
                f"{pattern}: not an image type cliper reads ({' '.join(IMAGE_SUFFIXES)})"
            )
        if _inside(path, out):
            raise ValueError(f"{pattern} is in the output folder (--out); outputs are not inputs")
        return [path]
    if glob.has_magic(pattern):
        # the output folder's files (earlier results) never match
        found = [Path(p) for p in sorted(glob.glob(pattern)) if is_image_file(p)]
        return [p for p in found if not _inside(p, out)]
    raise FileNotFoundError(f"no image found for {pattern!r}: no such file or folder")


def expand_images(patterns: Sequence[str], out: Path | None = None) -> list[Path]:
    """Files, folders (their images) and glob patterns -> image paths, in the order given; a miss
    is an error. The same file named twice (another spelling, a link) runs once; nothing in the
    output folder `out` is an input.

    Folders, patterns and explicit paths accept the same image types (IMAGE_SUFFIXES).
    """
    found: dict[tuple[int, int], Path] = {}
    for pattern in patterns:
        matches = _matches(pattern, out)
        if not matches:
            raise FileNotFoundError(f"no image found for {pattern!r}")
        for path in matches:
            stat = path.stat()
            found.setdefault((stat.st_dev, stat.st_ino), path)
    return list(found.values())


#: the most bytes of an output stem: the temporary names beside the outputs (about twice the name
#: plus 46 bytes) stay under the 255 bytes most file systems allow for a name.
MAX_STEM_BYTES = 160


def _fitting(stem: str, path: Path) -> str:
    """`stem`, or where it is too long a name for the file system, its start and a hash."""
    if len(stem.encode()) <= MAX_STEM_BYTES:
        return stem
    digest = hashlib.sha1(str(path.absolute()).encode()).hexdigest()[:8]
    start = stem.encode()[: MAX_STEM_BYTES - 9].decode(errors="ignore")
    return f"{start}_{digest}"


def output_stems(images: Sequence[Path]) -> dict[Path, str]:
    """A unique, stable name stem per image: its file stem; where stems collide (ignoring case, as
    some file systems do) the suffix is added (photo_jpg, photo_png); where that still collides (the
    same name in several folders) 8 hex digits of the path's hash are added too. A stem too long
    for a file name is cut and given the hash. Depends only on the set of paths."""

    def clashing(stems: dict[Path, str]) -> set[Path]:
        counts: dict[str, int] = {}
        for stem in stems.values():
            counts[stem.casefold()] = counts.get(stem.casefold(), 0) + 1
        return {p for p, stem in stems.items() if counts[stem.casefold()] > 1}

    stems = {p: _fitting(p.stem, p) for p in images}
    for p in clashing(stems):
        stems[p] = _fitting(f"{p.stem}_{p.suffix.lstrip('.').lower()}", p)
    for p in clashing(stems):
        stems[p] = f"{stems[p]}_{hashlib.sha1(str(p.absolute()).encode()).hexdigest()[:8]}"
    return stems


def patch_size_of(cfg: CLIPerConfig) -> int | None:
    """The CLIP patch size a config will load (smoke: the tiny model's; paper: from the name, e.g.
    ViT-B-16)."""
    if cfg.profile == "smoke":
        return int(TINY_CLIP_CONFIG["vision_cfg"]["patch_size"])
    match = re.search(r"-(\d+)(?:-|$)", cfg.backbone)
    return int(match.group(1)) if match else None


def check_image_header(path: Path, cfg: CLIPerConfig, patch: int | None) -> None:
    """Read only the header: ImageReadError if it is not an image, is empty or is over the size
    limit."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except IMAGE_READ_ERRORS as error:
        raise ImageReadError(f"cannot read image {path}: {error}") from None
    if width < 1 or height < 1:
        raise ImageReadError(f"cannot read image {path}: it is empty ({width}x{height} pixels)")
    if patch is not None:
        try:
            resized_shape(width, height, cfg.size, patch)
        except ValueError as error:
            raise ImageReadError(f"{path}: {error}") from None


def plan_batch(
    cfg: CLIPerConfig,
    images: Sequence[Path],
    classes: str | None,
    out: Path,
    say: Callable[[str], None],
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Everything checked before a model loads: `out`, the class names, each image's header.

    Raises for a problem with the whole command; returns (images to run, (image, why) for those
    skipped).
    """
    check_output_folder(out, "--out")
    # a device this machine lacks, a class file that is not UTF-8: said now, not after the load
    check_before_loading(cfg)
    if classes is not None:
        parse_class_names(classes)
    else:
        suggestions = suggested_classes_by_image()
        missing = [p.name for p in images if p.name not in suggestions]
        if missing:
            raise ValueError(
                f"no --classes given and {', '.join(missing)} "
                f"{'is not a bundled sample' if len(missing) == 1 else 'are not bundled samples'} "
                f"with suggested classes"
            )
    patch = patch_size_of(cfg)
    good, failures = [], []
    for path in images:
        try:
            check_image_header(path, cfg, patch)
            good.append(path)
        except ImageReadError as error:
            say(f"cliper: skipping {path}: {error}")
            failures.append((path, str(error)))
    return good, failures


def run_key(cfg: CLIPerConfig, path: Path, names_text: str | None, background: str | None) -> str:
    """What decides an image's outputs: its bytes, the classes, the background words and every
    config field but the device; a rerun keeps the outputs whose key is the same."""
    values = {k: v for k, v in cfg.to_dict().items() if k != "device"}
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    text = json.dumps([values, digest, names_text, background], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def finished_record(finals: Sequence[Path], key: str) -> dict[str, Any] | None:
    """The scores record of an earlier run that wrote all of `finals` with the same run key, else
    None."""
    if not all(p.is_file() for p in finals):
        return None
    try:
        record = json.loads(finals[-1].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("run_key") == key else None


def segment_images(
    model,
    images: Sequence[Path],
    classes: str | None,
    background: str | None,
    out: Path,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
    result: BatchResult | None = None,
    score_maps: bool = False,
) -> BatchResult:
    """Segment each image and write <stem>_labels.png, <stem>_overlay.png and <stem>_scores.json to
    `out` (stems from `output_stems`), with `score_maps` also <stem>_score_maps.npy (C, H0, W0)
    float32, each image's files together or not at all. An image that
    cannot be read or segmented is reported through `say` and skipped; a full disk raises
    BatchStopped. Outputs an earlier run wrote with the same settings are kept, not redone; a stop
    (Ctrl-C, SIGTERM) keeps every finished image and says so."""
    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    result = result if result is not None else BatchResult()
    suggestions = suggested_classes_by_image()
    text_cache: dict[str, Any] = {}
    stems = output_stems(images)
    # the folders the first write makes
    missing = [folder for folder in (out, *out.parents) if not folder.exists()]
    try:
        for path in tqdm(images, desc="segment", unit="image", disable=not progress):
            names_text = classes or suggestions.get(path.name)
            finals = [out / f"{stems[path]}{suffix}" for suffix in output_suffixes(score_maps)]
            key = run_key(model.cfg, path, names_text, background)
            earlier = finished_record(finals, key)
            if earlier is not None:
                result.kept.append(path)
                result.records.append(earlier)
                continue
            try:
                image, text, segmented = segment_one(
                    model, path, names_text, background, text_cache, say
                )
            except (ValueError, RuntimeError, MemoryError) as error:  # this image only: go on
                say(f"cliper: skipping {path}: {error}")
                result.failures.append((path, str(error)))
                continue
            record = {**image_record(model, path, text, segmented), "run_key": key}
            write_image_files(model, path, out, finals, image, text, segmented, record, result)
            result.written.extend(finals)
            result.records.append(record)
    except KeyboardInterrupt:
        done = len(result.records)
        say(
            f"cliper: stopped after {done} of {len(images)} image(s); "
            + (f"their outputs are complete in {out}; " if done else "")
            + "run the same command again to do the rest (finished images are kept)"
        )
        raise
    finally:
        for folder in missing:  # a run that wrote nothing leaves no empty folders behind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    return result


def segment_one(
    model,
    path: Path,
    names_text: str | None,
    background: str | None,
    text_cache: dict[str, Any],
    say: Callable[[str], None],
) -> tuple[np.ndarray, Any, Any]:
    """Read and segment one image: (pixels, the text set, the segmentation). Each class text is
    encoded once per batch (its background notices said once); ValueError when there are no class
    names."""
    if names_text is None:
        raise ValueError(f"no --classes given and {path.name} is not a bundled sample")
    image = read_image(path)
    if names_text not in text_cache:
        vocab = resolve_vocabulary(model, names_text, background)  # README "Background words"
        for notice in vocab.notices:
            say(f"cliper: {notice}")
        text_cache[names_text] = model.encode_text(vocab.classes, vocab.background)
    text = text_cache[names_text]
    return image, text, model.segment(image, given={"text": text})


def image_record(model, path: Path, text: Any, segmented: Any) -> dict[str, Any]:
    """The scores JSON of one segmented image."""
    scores = zip(text.names, segmented.scores, strict=True)
    return {
        "image": str(path),
        "classes": text.names,
        "background": text.background,
        "scores": {name: round(float(s), 6) for name, s in scores},
        "present": segmented.present_classes(),
        "profile": model.cfg.profile,
        "preset": model.cfg.preset,
        "refinement": model.cfg.refinement,
        "timings_s": {k: round(v, 4) for k, v in segmented.timings.items()},
    }


def write_image_files(
    model,
    path: Path,
    out: Path,
    finals: Sequence[Path],
    image: np.ndarray,
    text: Any,
    segmented: Any,
    record: dict[str, Any],
    result: BatchResult,
) -> None:
    """Write one image's files to `finals` (`output_suffixes`), all or none; BatchStopped (saying
    what the batch wrote so far) when writing fails, or, for score maps, when the disk is too small
    for them before any is written."""
    done = (
        f"{len(result.records)} image(s) complete in {out}" if result.records else "nothing written"
    )
    with_maps = len(finals) > len(OUTPUT_SUFFIXES)  # output_suffixes(score_maps=True)
    if with_maps:
        existing = next(folder for folder in (out, *out.parents) if folder.exists())
        needed, free = score_maps_bytes(segmented["labels"]), shutil.disk_usage(existing).free
        if needed > free:
            raise BatchStopped(
                f"stopped at {path}: its score maps need {needed / 1e9:.1f} GB and {out} has "
                f"{free / 1e9:.1f} GB free; drop --score-maps or free space; {done}"
            )
    try:
        with atomic_group(finals) as temporaries:
            if with_maps:
                write_score_maps(temporaries.pop(-2), segmented["labels"])
            write_segmentation_files(
                temporaries,
                image,
                segmented.labels.numpy(),
                text.names,
                record,
                title=f"{path.name}: CLIPer ({model.cfg.profile})",
                num_labels=len(text.names) + 1,
            )
    except OSError as error:
        if error.errno in DISK_ERRNOS:
            raise BatchStopped(
                f"stopped at {path}: {error.strerror or error} while writing its outputs; "
                f"none of its files were kept; {done}"
            ) from error
        raise BatchStopped(f"cannot write the outputs of {path}: {error}; {done}") from error


def run_batch(
    cfg: CLIPerConfig,
    images: Sequence[Path],
    classes: str | None,
    background: str | None,
    out: Path,
    build_model: Callable[[CLIPerConfig], Any],
    progress: bool = True,
    score_maps: bool = False,
) -> BatchResult:
    """Check, then build the model, then segment; returns what was written and what failed
    (`score_maps`: also each image's full-resolution score maps)."""

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    result = BatchResult()
    runnable, result.failures = plan_batch(cfg, images, classes, out, say)
    if runnable:
        model = build_model(cfg)
        segment_images(model, runnable, classes, background, out, progress, say, result, score_maps)
    return result


def report_failures(result: BatchResult, total: int) -> int:
    """The summary of skipped images on stderr; the exit status (1 if any image failed)."""
    if not result.failures:
        return 0
    print(f"cliper: {len(result.failures)} of {total} image(s) failed:", file=sys.stderr)
    for path, why in result.failures:
        print(f"  {path}: {why}", file=sys.stderr)
    return 1
