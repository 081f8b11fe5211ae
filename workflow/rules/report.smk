# Tables (CSV + Markdown + HTML), figures (PNG) and the captions of `snakemake --report results/report.html`
# (brainrecon.report). Every table exists for all test images and, when evaluate.exclude is set, also
# without the listed images (suffix _excl-<tag>). What exists for a config: brainrecon.report.targets.
# Its input functions live in common.smk.


rule report_table:
    input:
        table_inputs,
    output:
        csv="results/tables/{table}.csv",
        md="results/tables/{table}.md",
        html=report(
            "results/tables/{table}.html",
            caption="../report/table.rst",
            category="Tables",
            subcategory="All test images",
            labels={"table": "{table}"},
        ),
    log:
        "logs/report/table_{table}.log",
    wildcard_constraints:
        table=TABLE_NAMES_RE,
    localrule: True
    conda:
        "../../envs/base.yaml"
    params:
        table="{table}",
        method_order=REPORT_METHOD_ORDER,
        variant_order=REPORT_VARIANT_ORDER,
        title=table_caption,
    script:
        "../scripts/report_table.py"


if EVAL_EXCL_TAG:

    rule report_table_excluded:
        input:
            table_inputs,
        output:
            csv=f"results/tables/{{table}}_{{tag}}.csv",
            md=f"results/tables/{{table}}_{{tag}}.md",
            html=report(
                "results/tables/{table}_{tag}.html",
                caption="../report/table.rst",
                category="Tables",
                subcategory="Without the excluded images ({tag})",
                labels={"table": "{table}", "images": "{tag}"},
            ),
        log:
            "logs/report/table_{table}_{tag}.log",
        wildcard_constraints:
            table=TABLE_NAMES_RE,
            tag=re.escape(EVAL_EXCL_TAG),
        localrule: True
        conda:
            "../../envs/base.yaml"
        params:
            table="{table}",
            method_order=REPORT_METHOD_ORDER,
            variant_order=REPORT_VARIANT_ORDER,
            title=table_caption,
        script:
            "../scripts/report_table.py"


# Reconstruction grids: Brain-Diffuser Fig. 3 (subjects), Fig. 6 (variants of one subject), Takagi-style
# samples. Inputs: the images.h5 files each figure shows and the stimulus brick (ground truth).
rule report_figure:
    input:
        recon=lambda wildcards: figure_spec(wildcards)["inputs"],
        brick=nsd_path(layout.stimuli_key()),
    output:
        report(
            "results/figures/{figure}.png",
            caption="../report/figure.rst",
            category="Figures",
            subcategory="Reconstructions",
            labels={"figure": "{figure}"},
        ),
    log:
        "logs/report/figure_{figure}.log",
    wildcard_constraints:
        figure="|".join(
            re.escape(f[len("results/figures/") : -4])
            for f, s in REPORT_FIGURES.items()
            if s["kind"] != "bars"
        )
        or "no_figure",
    conda:
        "../../envs/base.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
    params:
        kind=lambda wildcards: figure_spec(wildcards)["kind"],
        method=lambda wildcards: figure_spec(wildcards)["method"],
        variant=lambda wildcards: figure_spec(wildcards).get("variant", ""),
        rows=lambda wildcards: figure_spec(wildcards)["rows"],
        n_images=REPORT["n_images"],
        images=REPORT["images"],
        max_samples=REPORT["max_samples"],
        dpi=REPORT["dpi"],
    script:
        "../scripts/report_figure.py"


rule report_metric_bars:
    input:
        evaluation_files(config),
    output:
        report(
            "results/figures/metrics_bars.png",
            caption="../report/bars.rst",
            category="Figures",
            subcategory="Metrics",
        ),
    log:
        "logs/report/metrics_bars.log",
    localrule: True
    conda:
        "../../envs/base.yaml"
    params:
        method_order=REPORT_METHOD_ORDER,
        variant_order=REPORT_VARIANT_ORDER,
        dpi=REPORT["dpi"],
    script:
        "../scripts/report_bars.py"
