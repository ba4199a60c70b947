"""SynthMimic: a synthetic data set in the exact Hume-Vidmimic2 layout, with a known generative process.

::

    from emi_lib.data.synth import SynthConfig, generate, ensure_synthmimic, PROFILES
    cfg = SynthConfig.from_profile("smoke", seed=0, occlusion_rate=None, noise_rate=None)
    manifest = generate(out_dir, cfg, workers=None, progress=True)
    root = ensure_synthmimic(out_dir, profile="demo", seed=0)

Modules: ``config`` (all parameters, profiles), ``latent`` (subjects, z, annotator labels, clip
plans, noise ceiling), ``face`` (action units and renderer), ``voice`` (vocalization),
``transcript`` (phrase banks), ``corrupt`` (corruptions), ``render`` (one clip), ``writer``
(the whole root). CLI: ``python -m emi_lib.data.synth --out DIR --profile demo --seed 0``.
"""

from emi_lib.data.synth.config import GENERATOR_VERSION, PROFILES, SynthConfig
from emi_lib.data.synth.writer import ensure_synthmimic, generate, read_manifest

__all__ = ["GENERATOR_VERSION", "PROFILES", "SynthConfig", "ensure_synthmimic", "generate", "read_manifest"]
