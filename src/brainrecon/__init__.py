"""brainrecon: reconstruct seen images from fMRI (NSD) with latent diffusion models.

One subpackage per pipeline stage: nsd (layout, readers, download, prepare), synth
(synthetic NSD), models, features, regression, reconstruct, evaluate, encoding, report.
"""

__version__ = "0.1.0"
