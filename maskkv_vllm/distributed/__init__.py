"""Ray deployments (the only subpackage that imports ray, and only lazily)."""
