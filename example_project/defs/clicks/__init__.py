"""The example pipeline as a component: ``defs.yaml`` plus the user-written ``user_profiles`` asset."""
