"""Build the models a config names and hand them to the method: `CLIPer.from_config(cfg)`."""

from __future__ import annotations

from ..config import CLIPerConfig, resolve_device
from ..method.pipeline import CLIPer as _MethodCLIPer
from ..method.refinements import REFINEMENTS
from ..method.sd_attention import SDSelfAttention
from .clip import load_clip
from .hub import WeightsMissingError, hub_reachable
from .inventory import missing_weight_files, offline_report
from .sd import load_sd_extractor
from .vfm import VFMLoader, vfms_used


class CLIPer(_MethodCLIPer):
    """The CLIPer method (`cliper_lib.method.pipeline.CLIPer`) plus `from_config`, which builds its
    models."""

    @classmethod
    def from_config(
        cls,
        cfg: CLIPerConfig,
        allow_download: bool = True,
        text_cache_dir: str | None | bool = True,
    ) -> CLIPer:
        """Build the models `cfg` names (paper: real weights via the hub cache; smoke: tiny random
        models).

        The VFMs the config uses (proxy_model for last_layer_attention=proxy, a VFM refinement) are
        loaded now, so missing weights stop here; other VFMs load on first use (the explorer
        switching refinements).
        """
        # offline, name every missing file at once (CLIP and SD), not the first
        if cfg.profile == "paper":
            missing = missing_weight_files(cfg)
            if missing and not (allow_download and hub_reachable()):
                raise WeightsMissingError(offline_report(missing))
        device = resolve_device(cfg.device)
        clip = load_clip(cfg, device=device, allow_download=allow_download)
        sd = None
        if REFINEMENTS[cfg.refinement].part == "sd":
            sd = load_sd_extractor(cfg, device=device, allow_download=allow_download)
        vfm = VFMLoader(cfg, device, allow_download)
        for name in vfms_used(cfg):
            vfm(name)
        return cls(cfg, clip, sd, text_cache_dir=text_cache_dir, vfm=vfm)

    def reconfigured(self, cfg: CLIPerConfig) -> CLIPer:
        """This CLIPer's models under another config that names the same models: SD only for an SD
        refinement and the config's VFMs loaded, as `from_config` gives, without building again."""
        sd = None
        if REFINEMENTS[cfg.refinement].part == "sd":
            if self.sd is None:
                raise ValueError(f"refinement {cfg.refinement!r} needs SD, which this CLIPer lacks")
            # an extractor of its own: it reads its config where a caller passes none
            sd = SDSelfAttention(self.sd.components, cfg)
        for name in vfms_used(cfg):
            self.vfm(name)
        return CLIPer(cfg, self.clip, sd, text_cache_dir=self.text_cache.folder, vfm=self.vfm)
