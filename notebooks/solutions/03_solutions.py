# Solutions to the exercises of notebook 03. Each `# %% exercise N` block replaces the answer cell
# tagged exercise-N; tests/test_exercises.py runs them all on the smoke profile and requires every
# check cell to pass.

# %% exercise 3.1
# after set_timesteps the timesteps run from large t (noisy) to small t: the smallest index is the
# largest t, the smallest ᾱ_t and the noisiest latent
noisiest_index = min(timestep_indices)

# %% exercise 3.2
G0 = maps_ref[cfg.sd_layers[0]][0].float()  # head 0: (T, T), rows sum to 1
plogp = torch.where(G0 > 0, G0 * G0.clamp_min(1e-30).log(), torch.zeros_like(G0))  # 0 · log 0 = 0
my_entropy = float(-plogp.sum(-1).mean()) / math.log(G0.shape[-1])

# %% exercise 3.3
with torch.no_grad():
    posterior = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
my_latents = posterior.mean * vae.config.scaling_factor
# A sample would add the encoder's own noise, different on every run; the mean makes z_0 (and, with
# the seeded ε, z_t and the attention) a deterministic function of the image.
