"""The nnU-Net layer: trainers, unlabeled-image preprocessing and loading, the stage-(i) checkpoint format,
VLM prediction on whole images, and how nnU-Net finds the trainers."""
