"""Tiled labelling (a few classes upsampled at a time) against today's whole-image computation,
bit for bit: odd sizes, many classes, exact ties, both background modes."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from cliper_lib.method.labels import (
    class_chunks,
    class_scores,
    labels_from_maps,
    scaled_maps,
    tiled_labels,
)


# --- the reference: the whole-image code as it was before tiling (every class map at once) --------
def whole_scaled_maps(refined, scores, size):
    up = F.interpolate(refined[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    peak = up.flatten(1).amax(dim=1)[:, None, None]
    return up / (peak + 1e-5) * scores[:, None, None].float()


def whole_labels(maps, scores, score_threshold, bkg_thre, is_normalize):
    c, h, w = maps.shape
    present = (scores > score_threshold).to(maps.dtype)[:, None, None]
    values = maps.reshape(c, -1).clone()
    if is_normalize:
        values -= values.amin(dim=1, keepdim=True)
        values /= values.amax(dim=1, keepdim=True) + 1e-6
    values = values.reshape(c, h, w)
    if bkg_thre > 0:
        values = torch.where(values < bkg_thre, torch.zeros_like(values), values)
        best, index = (present * values).max(dim=0)
        labels = index + 1
        labels[best == 0] = 0
        return labels
    valid = present * values
    background = (1 - valid.amax(dim=0, keepdim=True)) ** 2
    return torch.cat([background, valid]).argmax(dim=0)


MODES = [(0.0, 0.0, False), (0.0, 0.0, True), (0.3, 0.2, False), (0.1, 0.4, True)]


def check_all_ways(refined, coarse, size, budgets=(1, 7, 1 << 24)):
    """Tiled labels at several chunk sizes, and labels_from_maps, equal the whole-image labels.

    A budget of 7 means 7 classes a chunk; 1, one class.
    """
    scores = class_scores(refined, coarse)
    maps = whole_scaled_maps(refined, scores, size)
    assert torch.equal(scaled_maps(refined, scores, size), maps)
    for score_threshold, bkg_thre, is_normalize in MODES:
        expected = whole_labels(maps, scores, score_threshold, bkg_thre, is_normalize)
        args = (score_threshold, bkg_thre, is_normalize)
        assert torch.equal(labels_from_maps(maps, scores, *args), expected)
        for budget in budgets:
            budget = budget * size[0] * size[1] if budget == 7 else budget
            ours = tiled_labels(refined, scores, size, *args, budget=budget)
            assert ours.dtype == torch.int64 and torch.equal(ours, expected), (size, args, budget)


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """PyTorch's CPU bilinear kernel depends on the thread count (3 classes on one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("classes", [1, 3, 4, 5, 7, 10])
@pytest.mark.parametrize(
    ("grid", "size"),
    [
        ((7, 9), (67, 73)),  # H + W > 128: chunked
        ((7, 9), (37, 53)),  # H + W <= 128: the channels-last kernel, one chunk
        ((1, 1), (75, 93)),
        ((21, 28), (151, 201)),
        ((16, 16), (9, 131)),  # downsampled rows
        ((3, 2), (1, 200)),
    ],
)
def test_tiled_labels_equal_whole_image_labels_at_odd_sizes(threads, classes, grid, size):
    g = torch.Generator().manual_seed(classes + sum(grid) + sum(size))
    refined = torch.rand(classes, *grid, generator=g)
    coarse = torch.rand(classes, 4, 4, generator=g)
    check_all_ways(refined, coarse, size, budgets=(1, 7, 3 * size[0] * size[1], 1 << 24))


def test_tiled_labels_with_many_classes(threads):
    g = torch.Generator().manual_seed(3)
    refined = torch.rand(300, 6, 5, generator=g) ** 4  # peaked: the classes compete for pixels
    coarse = torch.rand(300, 3, 3, generator=g)
    for size in [(23, 31), (63, 71)]:
        check_all_ways(refined, coarse, size, budgets=(1, 7, 43 * size[0] * size[1], 1 << 24))


def test_tiled_labels_break_exact_ties_as_the_whole_image_does():
    # a few levels only: equal values between classes at every pixel, and equal scores
    g = torch.Generator().manual_seed(5)
    levels = torch.randint(0, 3, (6, 4, 4), generator=g).float() / 2
    refined = torch.cat([levels, levels[:3], torch.zeros(2, 4, 4), torch.ones(2, 4, 4)])
    coarse = torch.ones(len(refined), 2, 2)
    check_all_ways(refined, coarse, (4, 4))  # the grid's own size: the ties survive upsampling
    check_all_ways(refined, coarse, (8, 8))
    check_all_ways(refined, coarse, (64, 128))


def test_tiled_labels_keep_nan_where_max_and_argmax_do():
    refined = torch.rand(4, 3, 3, generator=torch.Generator().manual_seed(2))
    refined[2, 1, 1] = float("nan")
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    maps = whole_scaled_maps(refined, scores, (70, 65))
    for args in itertools.product((0.0, 0.5), (0.0, 0.2), (False,)):
        expected = whole_labels(maps, scores, *args)
        assert torch.equal(tiled_labels(refined, scores, (70, 65), *args, budget=1), expected)


def test_class_chunks_cover_every_class_once_within_the_budget():
    size = (100, 100)
    cases = [(1, 1, 1), (10, 40_000, 4), (7, 40_000, 4), (1000, 1 << 24, 1000)]
    for classes, budget, step in cases:
        chunks = class_chunks(classes, (5, 5), size, budget)
        assert [k for c in chunks for k in range(c.start, c.stop)] == list(range(classes))
        widths = [c.stop - c.start for c in chunks]
        assert widths[0] == step and max(widths) <= step and 3 not in widths, widths
    # where the kernel would compute classes together, the stack stays whole
    assert class_chunks(20, (5, 5), (64, 64), 1) == [slice(0, 20)]
    assert class_chunks(20, (1, 1), size, 1) == [slice(0, 20)]
    assert class_chunks(3, (5, 5), size, 1) == [slice(0, 3)]
    assert len(class_chunks(4, (5, 5), (64, 65), 1)) == 4


def test_score_maps_stream_to_disk_chunk_by_chunk(tmp_path):
    import numpy as np

    from cliper_lib.method.labels import LabelMap
    from cliper_lib.suite.toolkit.outputs import write_score_maps

    g = torch.Generator().manual_seed(4)
    refined, coarse = torch.rand(6, 5, 7, generator=g), torch.rand(6, 3, 3, generator=g)
    scores = class_scores(refined, coarse)
    size = (71, 90)
    labels = tiled_labels(refined, scores, size, 0.0, 0.0, False)
    label_map = LabelMap(scores, refined, labels)
    assert len(list(label_map.map_chunks(2 * 71 * 90))) == 3  # two classes a chunk
    path = write_score_maps(tmp_path / "maps.npy", label_map, budget=2 * 71 * 90)
    written = np.load(path, mmap_mode="r")
    assert written.shape == (6, 71, 90) and written.dtype == np.float32
    np.testing.assert_array_equal(written, whole_scaled_maps(refined, scores, size).numpy())
    assert [p.name for p in tmp_path.iterdir()] == ["maps.npy"]  # no partial file left


def test_score_maps_that_fail_part_way_leave_no_file(tmp_path):
    """A full disk (an OSError on a write) part way: neither the file nor a partial one remains."""
    import errno

    from cliper_lib.method.labels import LabelMap
    from cliper_lib.suite.toolkit.outputs import write_score_maps

    g = torch.Generator().manual_seed(5)
    refined = torch.rand(4, 5, 7, generator=g)
    scores = class_scores(refined, torch.rand(4, 3, 3, generator=g))
    label_map = LabelMap(scores, refined, tiled_labels(refined, scores, (20, 30), 0.0, 0.0, False))

    def chunks(budget):
        yield from list(LabelMap.map_chunks(label_map, budget))[:1]
        raise OSError(errno.ENOSPC, "No space left on device")

    label_map.map_chunks = chunks
    with pytest.raises(OSError, match="No space left"):
        write_score_maps(tmp_path / "maps.npy", label_map, budget=20 * 30)
    assert list(tmp_path.iterdir()) == []
