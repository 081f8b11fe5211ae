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

import importlib

#: public name -> submodule (imported on first use: the Snakefile reads the torch-free plan only)
_LAZY = {
    "encoding_analysis": "analysis",
    "plot_r_by_roi": "figures",
    "slice_mosaic": "figures",
    "save_map_nifti": "maps",
    "to_volume": "maps",
    "PCAModel": "pca",
    "PCAScores": "pca",
    "fit_pca": "pca",
    "pca_scores": "pca",
    "ROI_SUMMARY_COLUMNS": "rois",
    "roi_summary": "rois",
    "fdr_bh": "stats",
    "pearson_r_per_voxel": "stats",
    "pvalue_null_gaussian": "stats",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
