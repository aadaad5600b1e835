"""Build the models a config names and hand them to the method: `CLIPer.from_config(cfg)`."""

from __future__ import annotations

from ..config import CLIPerConfig, resolve_device
from ..files import check_output_folder, default_cache_dir
from ..method.pipeline import CLIPer as _MethodCLIPer
from ..method.refinements import REFINEMENTS
from ..method.sd_attention import SDSelfAttention
from ..vocab import load_templates, read_class_file
from .clip import load_clip
from .hub import WeightsMissingError, hub_reachable
from .inventory import missing_weight_files, offline_report
from .sd import load_sd_extractor, sd_dtype_of
from .vfm import VFMLoader, vfms_used


def check_before_loading(cfg: CLIPerConfig) -> None:
    """What would otherwise fail only once the models are loaded, checked first: the device is on
    this machine, the class file and the templates can be read, the suite's cache folder is
    writable."""
    resolve_device(cfg.device)
    read_class_file(cfg.classes)
    load_templates(cfg.templates)
    check_output_folder(default_cache_dir(), "the cache folder (CLIPER_CACHE moves it)")


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
        check_before_loading(cfg)
        # offline, name every missing file at once (CLIP and SD), not the first
        if cfg.profile == "paper":
            missing = missing_weight_files(cfg)
            if missing and not (allow_download and hub_reachable()):
                raise WeightsMissingError(offline_report(missing), missing)
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
            loaded = next(self.sd.components.unet.parameters()).dtype
            if sd_dtype_of(cfg) != loaded:  # the SD networks are cast once, when loaded
                raise ValueError(
                    f"this CLIPer's SD runs in {loaded}, the config asks for {sd_dtype_of(cfg)}: "
                    "build another with CLIPer.from_config"
                )
            # an extractor of its own: it reads its config where a caller passes none
            sd = SDSelfAttention(self.sd.components, cfg)
        for name in vfms_used(cfg):
            self.vfm(name)
        return CLIPer(cfg, self.clip, sd, text_cache_dir=self.text_cache.folder, vfm=self.vfm)
