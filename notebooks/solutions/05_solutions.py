# Solutions to the exercises of notebook 05. Each `# %% exercise N` block replaces the answer cell
# tagged exercise-N; tests/test_exercises.py runs them all on the smoke profile and requires every
# check cell to pass.

# %% exercise 5.1
# Not equal: the split's mIoU pools the pixels of all images in one confusion matrix before dividing,
# so large images and frequent classes weigh more; the per-image mean weighs every image the same.
means_equal = False

# %% exercise 5.2
M = result.confusion.matrix.double()  # (K, K): rows ground truth, columns prediction
tp = M.diagonal()
union = M.sum(1) + M.sum(0) - tp
present = M.sum(1) > 0  # classes that occur in the ground truth
my_miou = float((tp[present] / union[present]).mean() * 100)

# %% exercise 5.3
ious = per_class[per_class["present"]].set_index("name")["iou"]
worst_class = ious.idxmin()
