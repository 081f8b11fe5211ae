"""Voxelwise encoding models (Takagi & Nishimoto, CVPR 2023, "Encoding").

Features of the images (z, c, zc, U-Net activations; (n, d)) are PCA-reduced to at most
6,400 dimensions fitted on the training images, mapped to voxel responses (n, V) with
the project's one ridge (:mod:`brainrecon.regression`, CV alphas), and evaluated on the
test images by the Pearson r of predicted vs measured responses, a one-sided p-value
against the null of correlations of independent Gaussian vectors, and BH-FDR.

Public API (shapes in each docstring):

* :func:`fit_pca` -> :class:`PCAModel` (``.transform``); :func:`pca_scores` -> :class:`PCAScores`
  (training/test scores without the components)
* :func:`pearson_r_per_voxel`, :func:`pvalue_null_gaussian`, :func:`fdr_bh`
* :func:`encoding_analysis`
* :func:`to_volume`, :func:`save_map_nifti`
* :func:`roi_summary`
* :func:`slice_mosaic`, :func:`plot_r_by_roi`
"""

from brainrecon.encoding.analysis import encoding_analysis
from brainrecon.encoding.figures import plot_r_by_roi, slice_mosaic
from brainrecon.encoding.maps import save_map_nifti, to_volume
from brainrecon.encoding.pca import PCAModel, PCAScores, fit_pca, pca_scores
from brainrecon.encoding.rois import ROI_SUMMARY_COLUMNS, roi_summary
from brainrecon.encoding.stats import fdr_bh, pearson_r_per_voxel, pvalue_null_gaussian

__all__ = [
    "PCAModel",
    "fit_pca",
    "pca_scores",
    "PCAScores",
    "pearson_r_per_voxel",
    "pvalue_null_gaussian",
    "fdr_bh",
    "encoding_analysis",
    "to_volume",
    "save_map_nifti",
    "roi_summary",
    "ROI_SUMMARY_COLUMNS",
    "slice_mosaic",
    "plot_r_by_roi",
]
