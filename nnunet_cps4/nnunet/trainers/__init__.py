"""nnU-Net trainers of the plugin: one module per trainer family; `registry` lists the public names."""
