# Solutions to the exercises of notebook 01. Each `# %% exercise N` block replaces the answer cell
# tagged exercise-N; tests/test_exercises.py runs them all on the smoke profile and requires every
# check cell to pass.

# %% exercise 1.1
# read off the curve: the block whose head-mean distance is smallest
most_local_block = int(per_block["mean_attention_distance"].idxmin())

# %% exercise 1.2
A = walk.attentions[0][0, 0, 1:, 1:].float()  # block 0, head 0, patch tokens only: (hw, hw)
A = A / A.sum(-1, keepdim=True)  # each query row renormalised to sum to 1
rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
centres = torch.stack([rows.flatten(), cols.flatten()], 1).float() * p  # patch centres in pixels
my_distance = float((A * torch.cdist(centres, centres)).sum(-1).mean())

# %% exercise 1.3
patches = x.unfold(1, p, p).unfold(2, p, p)  # (3, h, w, p, p)
order = torch.randperm(h * w, generator=torch.Generator().manual_seed(0))
shuffled = patches.reshape(3, h * w, p, p)[:, order].reshape(3, h, w, p, p)
shuffled = shuffled.permute(0, 1, 3, 2, 4).reshape(3, h * p, w * p)  # back to an image
shuffled_walk = walk_layers(clip.visual, shuffled[None].to(x.device), 1)  # block 0 is enough
X0 = shuffled_walk.normalized_inputs[0][0]  # (N, D)
shuffled_gap = analysis.neighbour_similarity(X0, walk.grid) - analysis.token_similarity(X0, walk.grid)
# Why: in a photo, neighbouring patches have similar pixels, and even a random patch embedding keeps
# that; shuffled, neighbours are random patches and the gap shrinks to what the position embedding
# alone gives. On the paper profile the same test separates the photo's smoothness from what CLIP's
# trained blocks add.
