# Tables (CSV + Markdown + HTML), figures (PNG) and the captions of `snakemake --report results/report.html`
# (brainrecon.report). Every table exists for all test images and, when evaluate.exclude is set, also
# without the listed images (suffix _excl-<tag>). What exists for a config: brainrecon.report.plan.
from brainrecon.report import plan as report_plan

REPORT = config["report"]
REPORT_FIGURES = report_plan.figure_plan(config)
REPORT_METHOD_ORDER = [p.method for p in reconstruct_plan.method_plans(config)]
REPORT_VARIANT_ORDER = {
    p.method: list(p.variants) for p in reconstruct_plan.method_plans(config)
}
TABLE_NAMES_RE = "|".join(map(re.escape, report_plan.table_names(config))) or "no_table"
FIGURE = lambda wildcards: REPORT_FIGURES[
    f"results/figures/{wildcards.figure}.png"
]  # noqa: E731
EVAL_EXCL_TAG = (
    evaluate_plan.exclusion_tag(EVAL["exclude"]) if EVAL["exclude"] else None
)


rule report_table:
    input:
        lambda wildcards: report_plan.table_inputs(config, wildcards.table),
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
        title=lambda wildcards, output: report_plan.TABLE_TITLES[wildcards.table],
    script:
        "../scripts/report_table.py"


if EVAL_EXCL_TAG:

    rule report_table_excluded:
        input:
            lambda wildcards: report_plan.table_inputs(
                config, wildcards.table, excluded=True
            ),
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
            title=lambda wildcards, output: report_plan.TABLE_TITLES[wildcards.table],
        script:
            "../scripts/report_table.py"


# Reconstruction grids: Brain-Diffuser Fig. 3 (subjects), Fig. 6 (variants of one subject), Takagi-style
# samples. Inputs: the images.h5 files each figure shows and the stimulus brick (ground truth).
rule report_figure:
    input:
        recon=lambda wildcards: FIGURE(wildcards)["inputs"],
        brick=nsd_plan.brick(config),
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
        kind=lambda wildcards: FIGURE(wildcards)["kind"],
        method=lambda wildcards: FIGURE(wildcards)["method"],
        variant=lambda wildcards: FIGURE(wildcards).get("variant", ""),
        rows=lambda wildcards: FIGURE(wildcards)["rows"],
        n_images=REPORT["n_images"],
        images=REPORT["images"],
        max_samples=REPORT["max_samples"],
        dpi=REPORT["dpi"],
    script:
        "../scripts/report_figure.py"


rule report_metric_bars:
    input:
        evaluate_plan.evaluation_files(config),
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
