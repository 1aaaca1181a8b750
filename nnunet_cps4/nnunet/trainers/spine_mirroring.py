"""No superior–inferior mirroring: a spine setting for every trainer family.

nnU-Net mirrors every spatial axis in training augmentation and at test time. For a sagittal spine that swaps the
cranial and caudal ends, so a vertebra's neighbours above and below trade places: exactly the cue that tells L4
from L5. `SpineMirroringMixin` removes the superior–inferior (SI) axis from the training mirror axes and from
`inference_allowed_mirroring_axes` (stored in the checkpoint, so the stock predictor follows it); the other axes
keep nnU-Net's behaviour.

Switched by the class attribute `mirror_superior_inferior` (a variant sets it), else by dataset.json
`"cps4": {"mirror_superior_inferior": true|false}`, else by the trainer family's default for spine datasets
(datasets whose prompt file declares a spine order, `method/spine_order.LevelOrder`):
`mirror_superior_inferior_on_spines`, False for the semi-supervised trainers (measured on two phantoms, three
splits each, docs/BENCHMARKS.md), True for `nnUNetTrainerSupervised` (the stock baseline); any other dataset keeps
nnU-Net's mirroring. The SI axis is found from the
image orientation nnU-Net stored with the first preprocessed training case (SimpleITK's direction cosines: the
index axis most aligned with the patient's S-I direction), or given as dataset.json
`"cps4": {"superior_inferior_axis": k}` (k: axis of the image array as nnU-Net's reader returns it).
"""
from typing import Optional

import numpy as np

from nnunet_cps4.errors import CPS4Error

MIRROR_KEY = "mirror_superior_inferior"
AXIS_KEY = "superior_inferior_axis"


def superior_inferior_array_axis(direction) -> int:
    """Array axis (numpy order z, y, x, as SimpleITK-based readers return it) whose index direction is closest to
    the patient's superior–inferior axis; `direction` is SimpleITK's row-major 3x3 direction matrix (9 values)."""
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)  # rows: L, P, S components; columns: ITK axes x, y, z
    itk_axis = int(np.argmax(np.abs(matrix[2])))
    return 2 - itk_axis


class SpineMirroringMixin:
    mirror_superior_inferior: Optional[bool] = None  # None: dataset.json "cps4" setting, else the default below
    mirror_superior_inferior_on_spines: bool = True  # the family's default on a spine dataset (others: True)

    def _cps4_dataset_setting(self, key: str):
        settings = self.dataset_json.get("cps4") or {}
        return settings.get(key) if isinstance(settings, dict) else None

    def _explicit_spine_setting(self, class_value: Optional[bool], key: str) -> Optional[bool]:
        """A spine setting's class attribute, else dataset.json's "cps4" value under `key`, else None (the trainer
        family's default for spine datasets applies)."""
        if class_value is not None:
            return bool(class_value)
        value = self._cps4_dataset_setting(key)
        if value is not None and not isinstance(value, bool):
            raise CPS4Error(f"dataset.json 'cps4.{key}' must be true or false, got {value!r}. Fix: write true or "
                            f"false, or remove the key to get the trainer's default")
        return value

    def _explicit_mirror_setting(self) -> Optional[bool]:
        return self._explicit_spine_setting(self.mirror_superior_inferior, MIRROR_KEY)

    def mirrors_superior_inferior(self) -> bool:
        explicit = self._explicit_mirror_setting()
        if explicit is not None:
            return explicit
        return self.mirror_superior_inferior_on_spines or not self.is_spine_dataset()

    def is_spine_dataset(self) -> bool:
        """Whether the dataset's prompt file declares a spine order (asked once per trainer)."""
        if not hasattr(self, "_is_spine_dataset"):
            from nnunet_cps4.method.prompts import load_dataset_prompts  # the prompt stack only when asked
            from nnunet_cps4.method.spine_order import LevelOrder

            prompts = load_dataset_prompts(self.dataset_json, self.plans_manager.dataset_name)
            self._is_spine_dataset = LevelOrder.from_prompts(prompts) is not None
        return self._is_spine_dataset

    def superior_inferior_patch_axis(self) -> Optional[int]:
        """The SI axis among the patch axes (2d: the in-plane axes), None when it is not one of them; found once
        per trainer (both loaders' augmentation and the pseudo-label ordering ask for it)."""
        if not hasattr(self, "_si_patch_axis"):
            self._si_patch_axis = self._find_superior_inferior_patch_axis()
        return self._si_patch_axis

    def _find_superior_inferior_patch_axis(self) -> Optional[int]:
        axis = self._cps4_dataset_setting(AXIS_KEY)
        if axis is None:
            keys = self.dataset_class.get_identifiers(self.preprocessed_dataset_folder)
            properties = self.dataset_class(self.preprocessed_dataset_folder, keys[:1]).load_case(keys[0])[3]
            direction = (properties.get("sitk_stuff") or {}).get("direction")
            if direction is None or len(direction) != 9:
                raise CPS4Error(f"{self.plans_manager.dataset_name}: the image orientation is not known to nnU-Net's "
                                f"reader, so the superior-inferior axis cannot be found. Fix: set dataset.json "
                                f"\"cps4\": {{\"{AXIS_KEY}\": k}} (k: the image array axis running head to feet)")
            axis = superior_inferior_array_axis(direction)
        elif axis not in (0, 1, 2):
            raise CPS4Error(f"dataset.json 'cps4.{AXIS_KEY}' must be 0, 1 or 2, got {axis!r}")
        preprocessed_axis = list(self.plans_manager.transpose_forward).index(int(axis))
        patch_dims = len(self.configuration_manager.patch_size)
        patch_axis = preprocessed_axis - (3 - patch_dims)
        return patch_axis if patch_axis >= 0 else None

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if not self.mirrors_superior_inferior() and mirror_axes:
            si_axis = self.superior_inferior_patch_axis()
            mirror_axes = tuple(a for a in mirror_axes if a != si_axis)
            self.inference_allowed_mirroring_axes = mirror_axes
            why = "" if self._explicit_mirror_setting() is not None else \
                f" (default for spine datasets; dataset.json \"cps4\": {{\"{MIRROR_KEY}\": true}} restores it)"
            self.print_to_log_file(f"No superior-inferior mirroring (patch axis {si_axis}){why}: mirror axes "
                                   f"{mirror_axes}")
        return rotation, dummy_2d, initial_patch_size, mirror_axes
