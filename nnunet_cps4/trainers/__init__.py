"""nnU-Net trainers of the plugin. Each module holds one trainer family and its schedule variants."""
