"""brainrecon.models"""

from .registry import (  # noqa: E402  (cheap: torch only; diffusers/transformers load lazily)
    ROLES,
    Components,
    build_tiny,
    fetch_model,
    load_model,
    load_role,
    prepare_role,
    register_role,
)
