# Solutions to the exercises of notebook 02. Each `# %% exercise N` block replaces the answer cell
# tagged exercise-N; tests/test_exercises.py runs them all on the smoke profile and requires every
# check cell to pass.

# %% exercise 2.1
# Step 5 subtracts each column's mean (a different number per column) and step 7 divides each row by
# its own sum: both act on rows and columns differently, so the symmetry of step 4 is lost.
is_symmetric = False

# %% exercise 2.2
A = steps["1 raw sum"]
A = A / A.sum(-2, keepdim=True)  # columns sum to 1
A = A / A.sum(-1, keepdim=True)  # rows sum to 1: one Sinkhorn round
A = (A + A.transpose(-2, -1)) / 2  # symmetrise
A = (A - A.mean(-2, keepdim=True)).clamp(min=0)  # centre the columns, clamp at 0
my_fused = A / A.sum(-1, keepdim=True)  # row-stochastic

# %% exercise 2.3
layers_without_R = result.layer_maps.clone()
layers_without_R[cfg.select_layer % L] = result.select_map  # the thresholded S_sel, as in S_c
mean_only = layers_without_R.mean(0)  # (C, h, w): S_c without R
agreement_without_R = float((mean_only.argmax(0) == result.coarse.argmax(0)).float().mean())
# On paper, R carries the select layer's map along the fused attention: where agreement is low, R
# decides the coarse labels. On smoke the maps are random and the number only shows the mechanics.
