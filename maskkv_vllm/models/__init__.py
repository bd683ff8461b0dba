"""Model definitions (pure torch) and their strict checkpoint loaders."""
