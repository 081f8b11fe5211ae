# Model folders, one per role (docs/DATA_PRODUCTS.md, "models"): the real weights fetched once on a
# machine with internet (local rule: compute nodes may have none), or tiny random-weight stand-ins
# built from configs (demo, tests). Both have the real on-disk layout and load with
# brainrecon.models.load_model(role, folder, device, dtype). Roles: brainrecon.models.plan.

if config["models"]["source"] == "pretrained":

    rule fetch_models:
        output:
            directory(model_dir("{role}")),
        log:
            "logs/models/fetch_{role}.log",
        wildcard_constraints:
            role="|".join(models_plan.MODEL_ROLES),
        retries: 0  # the downloaders retry themselves
        localrule: True
        conda:
            "../../envs/base.yaml"
        params:
            role="{role}",
        script:
            "../scripts/models_fetch.py"

else:

    rule models_build_tiny:
        output:
            directory(model_dir("{role}")),
        log:
            "logs/models/tiny_{role}.log",
        wildcard_constraints:
            role="|".join(models_plan.MODEL_ROLES),
        localrule: True  # seconds of CPU; not worth a cluster job
        conda:
            "../../envs/base.yaml"
        params:
            role="{role}",
            seed=config["models"]["seed"],
        script:
            "../scripts/models_build_tiny.py"
