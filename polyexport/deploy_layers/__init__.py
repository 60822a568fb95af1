"""Deploy forms: one file per reference layer, each registering itself with `convert.register_layer`."""
