"""Synthetic sagittal T2 lumbar-spine MR phantom, written as a semi-supervised nnU-Net raw dataset.

`nnUNetv2_cps4_make_phantom -d ID [-n N] [--labeled-fraction F] [--test T] [--seed S] [--size ZxYxX]
[--field spine|lumbar] [--name NAME] [--overwrite] [--png FILE]` writes `$nnUNet_raw/DatasetID_NAME/` in the
layout of `nnunet_cps4.data.layout` with MRSpineSeg's 19 classes (1 S, 2 L5 ... 10 T9, 11 L5/S ... 19 T9/T10;
`--field lumbar`: the 11 lumbar ones, below):

```
imagesTr/spine_XXX_0000.nii.gz  labelsTr/spine_XXX.nii.gz     labeled training cases
imagesUnlabeled/spine_XXX_0000.nii.gz                          unlabeled training cases
labelsUnlabeledReference/spine_XXX.nii.gz                      true labels of the unlabeled cases
imagesTs/ labelsTs/                                            test cases
dataset.json  cps4_split.json
```

`labelsUnlabeledReference/` is for analysis only (measuring pseudo-label quality). Trainers, the unlabeled
preprocessing and nnU-Net never read it; a real semi-supervised dataset does not have it.

Geometry. Arrays (SimpleITK `GetArrayFromImage` order) are (LR, SI, AP): axis 0 = sagittal slice index
(left-right, thick slices), axis 1 = rows from superior (row 0) to inferior, axis 2 = columns from anterior
(column 0) to posterior. The physical field of view is fixed at 28 x 400 x 160 mm (LR x SI x AP), so `--size`
only changes the resolution (spacing = field of view / size) and the anatomy keeps its place in the image.
Default size 7 x 160 x 64 -> spacing 4.0 x 2.5 x 2.5 mm. The direction cosines are set to a true sagittal
orientation (columns -> posterior, rows -> inferior, slices -> patient right), so viewers show the image upright.

Anatomy (per subject, all randomised): sacrum (S1-S5 fused, wedge-shaped, tilted by the sacral slope, thin
rudimentary discs), L5-L1 and T12-T8 vertebral bodies (dark cortical rim, textured marrow, occasional
haemangioma), intervertebral discs (bright nucleus, darker annulus, intranuclear cleft; some degenerated: dark,
flat and bulging), pedicles, laminae and spinous processes, the spinal canal with epidural fat, CSF, the cord
down to a conus at T12-L2, the aorta beside the spine, paraspinal muscle, subcutaneous fat, skin, air, abdominal
and thoracic contents. Lateral slices show narrower bodies, less or no CSF and the pedicles.
Variation: vertebra and disc sizes (neighbours overlap), lordosis, kyphosis, sacral slope, in-plane rotation,
AP position, body size, fat thickness, field of view (the top of the image cuts between the middle of T12 and
the top of T9, so the top visible level is T9..T12 and a level can only be identified by counting from the
sacrum), contrast (gamma), Rician noise and a smooth multiplicative bias field (surface-coil fall-off).
Labels are only the vertebral bodies (sacrum included) and the discs; everything else is background 0, as in
MRSpineSeg. No level has an intensity of its own.

Case `i` of a dataset is drawn from `numpy.random.default_rng([seed, i])`, so the same arguments give the same
arrays byte for byte, and a case does not depend on how many cases are generated.

Field of view: `--field lumbar` crops every rendered case to a 240 mm window from the upper sacrum to just above
L1 (same spacing; rows = 240 mm / row spacing, e.g. 58 for --size 5x96x40) and labels only S, L5-L1 and the discs
L5/S-L1/L2 (`LUMBAR_LABELS`, ids 1-11, prompt file `mrspineseg_lumbar`), like a lumbar MR protocol: fewer levels
and rows, a problem nnU-Net learns within minutes on a CPU.

Modules: `anatomy` (level tables, labels, geometry, the random subject), `canvas` (drawing primitives),
`render` (painting a subject into image and label), `field` (the whole-spine or lumbar field of view), `dataset`
(cases, NIfTI files, the dataset, the overview picture). The console script lives in
`nnunet_cps4.commands.make_phantom`.
"""
from nnunet_cps4.data.phantom.anatomy import FOV_MM, VERTEBRAE, disc_label, spacing_for, vertebra_label
from nnunet_cps4.data.phantom.dataset import (CHANNEL_NAMES, DEFAULT_LABELED_FRACTION, DEFAULT_N, DEFAULT_NAME,
                                              DEFAULT_SEED, DEFAULT_SIZE, DEFAULT_TEST, FILE_ENDING, GENERATOR,
                                              MAX_SIZE, MAX_VOXELS, MIN_SIZE, PHANTOM_VERSION, REFERENCE_FOLDER,
                                              generate_phantom_dataset, make_case, parse_size, save_overview_png,
                                              write_case)
from nnunet_cps4.data.phantom.field import DEFAULT_FIELD, FIELDS, LUMBAR_SI_MM, field_size
from nnunet_cps4.data.phantom.render import render_subject

__all__ = ["make_case", "generate_phantom_dataset", "save_overview_png", "write_case", "render_subject",
           "parse_size", "spacing_for", "vertebra_label", "disc_label", "VERTEBRAE", "GENERATOR",
           "REFERENCE_FOLDER", "PHANTOM_VERSION", "CHANNEL_NAMES", "FILE_ENDING", "FOV_MM", "DEFAULT_NAME",
           "DEFAULT_N", "DEFAULT_LABELED_FRACTION", "DEFAULT_TEST", "DEFAULT_SEED", "DEFAULT_SIZE", "MIN_SIZE",
           "MAX_SIZE", "MAX_VOXELS", "FIELDS", "DEFAULT_FIELD", "LUMBAR_SI_MM", "field_size"]
